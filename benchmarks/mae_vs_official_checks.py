"""What benchmarks/official_mae_mnist5k.py and our configs/mnist5k/mae_pretrain.py start from, side
by side: the training data after augmentation and every initial parameter's statistics.

    PYTHONPATH=/work/tv python benchmarks/mae_vs_official_checks.py --mae_repo /tmp/mae_official
    PYTHONPATH=/work/tv python benchmarks/mae_vs_official_checks.py --mae_repo /tmp/mae_official \
        --workdir workdirs/mae_faithful_init

Prints one JSON line for the augmented digits of each pipeline (1,000 train digits: mean, std,
share of pixels above the background, median / 90% / 99% quantiles) and one per parameter of each
model (shape, mean, std, max / std, kurtosis), our names and the official ones as each framework
writes them, then the largest correlation between two same-shaped tensors of each init.
With --workdir, instead: the k-NN of that run's final encoder by both evaluation paths, ours
(benchmarks/knn_over_checkpoints.features) and the official script's (its weights put into the
official encoder, official_mae_mnist5k.knn_eval), so the two k-NN protocols are checked on one
set of weights.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
from PIL import Image

import knn_over_checkpoints
import official_mae_mnist5k as official_run
from mae_lockstep_official import official_state
from official_dino_data import Mnist5kPIL, eval_transform
from official_dino_mnist5k import _import_torchvision_python_only
from vit_jax import objectives, runs, trees
from vit_jax.config_base import load_config_file
from vit_jax.data import mnist5k, transforms
from vit_jax.data.info import DataInfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stats(x: np.ndarray) -> dict:
    return {"mean": round(float(x.mean()), 4), "std": round(float(x.std()), 4),
            "ink": round(float((x > 0).mean()), 4),
            "quantiles": [round(float(q), 4) for q in np.percentile(x, [50, 90, 99])]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mae_repo", required=True, help="checkout of facebookresearch/mae")
    p.add_argument("--workdir", default="", help="an MAE run: compare the two k-NN paths on it")
    a = p.parse_args(argv)
    _import_torchvision_python_only()
    if a.workdir:
        return knn_both_ways(a.mae_repo, a.workdir)
    config = load_config_file(os.path.join(ROOT, "configs/mnist5k/mae_pretrain.py"), "")
    src = mnist5k("train")
    ours = transforms.build(config.data.train_transform)
    rng = np.random.default_rng(0)
    x = np.stack([ours({"image": src.images[i], "label": src.labels[i]}, rng=rng)["image"]
                  for i in range(0, 4000, 4)])
    theirs = official_run.train_transform(tuple(official_run.parse_args(["--mae_repo", a.mae_repo]).crop_scale))
    torch.manual_seed(0)
    y = np.stack([theirs(Image.fromarray(src.images[i][..., 0])).numpy() for i in range(0, 4000, 4)])
    print(json.dumps({"data": "ours", **_stats(x)}))
    print(json.dumps({"data": "official", **_stats(y)}))

    official = official_run.import_official(a.mae_repo)
    torch.manual_seed(0)
    theirs_init = {name: v.float().numpy() for name, v in official_run.build_model(official).state_dict().items()}
    for name, v in theirs_init.items():
        print(json.dumps({"official": name, "shape": list(v.shape), **_law(v)}))
    obj = objectives.build(config, DataInfo(num_classes=10, image_shape=(28, 28, 1), num_train=4000))
    example = {"image": jnp.zeros((1, 28, 28, 1)), "label": jnp.zeros((1,), jnp.int32)}
    params, _ = obj.init(jax.random.PRNGKey(0), example)
    ours_init = {trees.path_str(path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(params)}
    for name, v in ours_init.items():
        print(json.dumps({"ours": name, "shape": list(v.shape), **_law(v)}))
    for who, tensors in (("official", theirs_init), ("ours", ours_init)):
        print(json.dumps({"largest_correlation_between_tensors": who, **_largest_correlation(tensors)}))


def _law(v: np.ndarray) -> dict:
    """mean, std, max |x - mean| / std and kurtosis (uniform 1.8, normal 3) of one tensor."""
    if v.size < 2 or float(v.std()) == 0.0:
        return {"std": 0.0, "mean": round(float(v.mean()), 4)}
    z = (v - v.mean()) / v.std()
    return {"std": round(float(v.std()), 4), "mean": round(float(v.mean()), 4),
            "max_over_std": round(float(np.abs(z).max()), 2), "kurtosis": round(float((z ** 4).mean()), 2)}


def _largest_correlation(tensors: dict[str, np.ndarray]) -> dict:
    """The largest |Pearson correlation| between two random tensors of one shape (independent draws:
    about 1 / sqrt(size))."""
    drawn = {k: v.ravel() for k, v in tensors.items() if v.size > 100 and float(v.std()) > 0}
    best = {"r": 0.0, "a": "", "b": ""}
    for a, b in itertools.combinations(drawn, 2):
        if tensors[a].shape == tensors[b].shape:
            r = abs(float(np.corrcoef(drawn[a], drawn[b])[0, 1]))
            if r > best["r"]:
                best = {"r": round(r, 4), "a": a, "b": b}
    return best


def knn_both_ways(mae_repo: str, workdir: str) -> None:
    run = runs.load_run(workdir)
    ours = knn_over_checkpoints.knn_row(run, mnist5k("train"), mnist5k("test"), prefix="knn_")
    model = official_run.build_model(official_run.import_official(mae_repo))
    state = official_state(run.model, run.backbone_variables["params"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(("decoder", "mask_token", "pos_embed")) for k in missing):
        raise AssertionError(f"missing {missing}, unexpected {unexpected}")
    loaders = [torch.utils.data.DataLoader(Mnist5kPIL(s, eval_transform()), batch_size=500)
               for s in ("train", "test")]
    print(json.dumps({"workdir": workdir, "ours": ours,
                      "official_path": official_run.knn_eval(model, *loaders)}))


if __name__ == "__main__":
    main()
