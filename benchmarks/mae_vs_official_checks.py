"""What benchmarks/official_mae_mnist5k.py and our configs/mnist5k/mae_pretrain.py start from, side
by side: the training data after augmentation and every initial parameter's statistics.

    PYTHONPATH=/work/tv python benchmarks/mae_vs_official_checks.py --mae_repo /tmp/mae_official

Prints one JSON line for the augmented digits of each pipeline (1,000 train digits: mean, std,
share of pixels above the background, median / 90% / 99% quantiles) and one per parameter of each
model (shape, std, mean), our names and the official ones as each framework writes them.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
from PIL import Image

import official_mae_mnist5k as official_run
from official_dino_mnist5k import _import_torchvision_python_only
from vit_jax import objectives, trees
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
    a = p.parse_args(argv)
    _import_torchvision_python_only()
    spec = importlib.util.spec_from_file_location("mae_cfg", os.path.join(ROOT, "configs/mnist5k/mae_pretrain.py"))
    cfg_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg_module)
    config = cfg_module.get_config("")
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
    for name, v in official_run.build_model(official).state_dict().items():
        v = v.float()
        print(json.dumps({"official": name, "shape": list(v.shape), "std": round(float(v.std()), 4)
                          if v.numel() > 1 else 0.0, "mean": round(float(v.mean()), 4)}))
    obj = objectives.build(config, DataInfo(num_classes=10, image_shape=(28, 28, 1), num_train=4000))
    example = {"image": jnp.zeros((1, 28, 28, 1)), "label": jnp.zeros((1,), jnp.int32)}
    params, _ = obj.init(jax.random.PRNGKey(0), example)
    for path, v in jax.tree_util.tree_leaves_with_path(params):
        v = np.asarray(v)
        print(json.dumps({"ours": trees.path_str(path), "shape": list(v.shape),
                          "std": round(float(v.std()), 4), "mean": round(float(v.mean()), 4)}))


if __name__ == "__main__":
    main()
