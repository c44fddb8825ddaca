"""Ours and the official facebookresearch/mae trained in lockstep: one initial state, one batch
stream, one mask noise, one lr schedule; the two losses and parameter sets compared as they go.

Why
    Over seeds 0-2 the official code's mean patch token k-NN (93.5, 93.0, 93.8) is above each of
    ours (90.0, 91.9, 91.6) on the same recipe (README's small-data table). Separate runs differ in
    three random streams (initial parameters, augmented batches, masks) and in the code. Here the
    streams are shared, so whatever still differs between the two runs is the code: the model, the
    loss, AdamW with its decay groups.

How
    * Ours: configs/mnist5k/mae_pretrain.py through vit_jax's own validate / MAEObjective.init /
      optim.make_optimizer (the run's optimizer: AdamW b2 0.95, the "dino" decay groups, the
      warm-up cosine schedule); a step is value_and_grad of MAE.apply(images, noise) then
      tx.update, as train.make_train_step does with its own mask rng.
    * Official: models_mae.MaskedAutoencoderViT from a checkout (official_mae_mnist5k.build_model:
      the same shims and sizes), its parameters set to ours (convert/mae_official.official_rows
      applied backwards; the fixed sin-cos tables are the official ones), timm's decay groups
      and torch.optim.AdamW(betas=(0.9, 0.95)) as main_pretrain builds them; a step is
      train_one_epoch's: forward, backward, optimizer.step (no clipping, fp32 on CPU). The mask
      noise torch.rand would draw inside random_masking is the shared noise; the lr of each step
      is our schedule's value (the official lr_sched differs from it by at most 7.9e-6, measured
      separately).
    * Batches: our training transform (rrc(28, (0.5, 1)) | normalize('mnist')) on each epoch's
      permutation of the 4,000 digits, one numpy generator for crops, order and noise.
    * Every --report_every steps one JSON line: both losses, the largest relative parameter
      difference over the tensors (||ours - official|| / ||ours||; the key bias left out, see
      without_key_bias) and the tensor it is in.
      At the end (with --knn) the weighted k-NN (k = 10, 20) of both final encoders, class token
      and mean patch token, through the official encoder's modules for both (our forward equals
      it: the step-0 losses).

    PYTHONPATH=/work/tv python benchmarks/mae_lockstep_official.py --mae_repo /tmp/mae_official \
        --steps 1875 --knn --out workdirs/official/mae_lockstep.jsonl
    ... --init official   (the official initialize_weights as the shared start)
    ... --init official --ours_prefixes decoder,mask_token   (a hybrid start: those from ours)
    ... --data official   (the official script's torchvision crops as the shared batches)
    ... --codes ours      (only vit_jax on the chosen streams: which stream moves the k-NN)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import official_mae_mnist5k as official_run
from official_dino_data import Mnist5kPIL, eval_transform
from vit_jax import optim
from vit_jax.config_base import load_config_file
from vit_jax import validate as validate_lib
from vit_jax.convert.mae_official import official_rows
from vit_jax.convert.tables import export_rows, import_rows
from vit_jax.convert.weights import Params, StateDict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXED = {"pos_embed", "decoder_pos_embed"}   # sin-cos tables: buffers of ours, frozen params there


def mae_config():
    """configs/mnist5k/mae_pretrain.py's config, as `--config` loads it."""
    return load_config_file(os.path.join(ROOT, "configs/mnist5k/mae_pretrain.py"), "")


def official_state(module, params) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in export_rows(official_rows(module),
                                                           {"params": params}).items()}


@contextlib.contextmanager
def torch_rand_returns(noise: torch.Tensor):
    """torch.rand(N, L, ...) inside models_mae.random_masking gives `noise`."""
    rand = torch.rand

    def fixed(*shape, **kwargs):
        if tuple(shape) != tuple(noise.shape):
            raise AssertionError(f"torch.rand{shape}: expected the mask noise {tuple(noise.shape)}")
        return noise.clone()

    torch.rand = fixed
    try:
        yield
    finally:
        torch.rand = rand


def official_init(obj, model, ours: dict | None = None, ours_prefixes: tuple[str, ...] = ()) -> dict:
    """The official model's initial parameters (initialize_weights) as our MAE's params tree;
    the tensors whose official names start with one of `ours_prefixes` taken from our params
    tree `ours` instead (a hybrid start)."""
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items() if k not in FIXED}
    if ours_prefixes:
        mine = export_rows(official_rows(obj.model), {"params": ours})
        taken = [k for k in tensors if k.startswith(ours_prefixes)]
        if not taken:
            raise ValueError(f"no official tensor name starts with {ours_prefixes}")
        tensors.update({k: mine[k] for k in taken})
    sd = StateDict(tensors, "official init")
    p = Params(sd)
    import_rows(official_rows(obj.model), p)
    sd.finish()
    return p.tree()


def batches(plan, batch: int, steps: int, rng: np.random.Generator, data: str, crop_scale):
    """(images (B, 28, 28, 1) float32, noise (B, 49) float32) for each step. data "ours": our
    transform drawing from `rng`; "official": official_mae_mnist5k's torchvision pipeline
    (RandomResizedCrop on PIL, ToTensor, Normalize) drawing from torch's global generator."""
    src = plan.train_source
    theirs = Mnist5kPIL("train", official_run.train_transform(crop_scale))
    n = len(src)
    order = np.concatenate([rng.permutation(n) for _ in range(-(-steps * batch // n))])
    for s in range(steps):
        idx = order[s * batch:(s + 1) * batch]
        if data == "ours":
            images = np.stack([plan.train_transform({"image": src.images[i], "label": src.labels[i]},
                                                    rng=rng)["image"] for i in idx])
        else:
            images = np.stack([theirs[int(i)][0].numpy().transpose(1, 2, 0) for i in idx])
        yield images.astype(np.float32), rng.random((batch, 49), dtype=np.float32)


def without_key_bias(name: str, v: np.ndarray) -> np.ndarray:
    """The key's third of a fused qkv bias left out: it adds q . b_k to every logit of a row, which
    the softmax cancels, so its true gradient is 0 and Adam turns float noise into steps of size lr
    (a random walk in both codes, different in each, with no effect on any output)."""
    if name.endswith("attn.qkv.bias"):
        d = v.shape[0] // 3
        return np.concatenate([v[:d], v[2 * d:]])
    return v


def compare(ours: dict[str, np.ndarray], theirs: dict[str, torch.Tensor]) -> tuple[float, str]:
    """The largest ||ours - official|| / ||ours|| over the tensors, and its name."""
    worst, where = 0.0, ""
    for k, v in ours.items():
        v, t = without_key_bias(k, v), without_key_bias(k, theirs[k].detach().numpy())
        d = float(np.linalg.norm(v - t) / max(np.linalg.norm(v), 1e-12))
        if d > worst:
            worst, where = d, k
    return worst, where


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mae_repo", required=True, help="checkout of facebookresearch/mae")
    p.add_argument("--steps", type=int, default=200, help="1875 = the full 60-epoch run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report_every", type=int, default=25)
    p.add_argument("--knn", action="store_true", help="k-NN of both encoders at the end")
    p.add_argument("--init", choices=("ours", "official"), default="ours",
                   help="the shared initial state: MAEObjective.init or models_mae's initialize_weights")
    p.add_argument("--ours_prefixes", default="",
                   help="with --init official: comma-separated official name prefixes whose "
                        "initial tensors come from ours (e.g. 'decoder,mask_token')")
    p.add_argument("--data", choices=("ours", "official"), default="ours",
                   help="the shared batches: our transform or the official script's torchvision one")
    p.add_argument("--codes", choices=("both", "ours"), default="both",
                   help="ours: train only vit_jax on the chosen streams (half the time)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out", default="", help="JSON-lines file the final line is appended to")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    config = mae_config()
    config.seed = a.seed
    plan = validate_lib.validate(config)
    obj = plan.objective
    example = {k: jnp.zeros((1,) + v.shape, v.dtype) for k, v in plan.example.items()}
    params, _ = obj.init(jax.random.PRNGKey(a.seed), example)
    tx, schedule = optim.make_optimizer(config, params, plan.total_steps, plan.lr_factors,
                                        plan.steps["warmup"], obj.weight_decay_rule, obj.held,
                                        plan.steps["cooldown"])
    opt_state = tx.init(params)

    @jax.jit
    def our_step(params, opt_state, images, noise):
        def loss_fn(q):
            return obj.model.apply({"params": q}, images, noise=noise, train=True,
                                   rngs={"dropout": jax.random.PRNGKey(0)})["loss"]
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    official = official_run.import_official(a.mae_repo)
    torch.manual_seed(a.seed)
    model = official_run.build_model(official)
    if a.init == "official":
        prefixes = tuple(x for x in a.ours_prefixes.split(",") if x)
        params = jax.tree.map(jnp.asarray, official_init(obj, model, params, prefixes))
        opt_state = tx.init(params)
    missing, unexpected = model.load_state_dict(official_state(obj.model, params), strict=False)
    if set(missing) != FIXED or unexpected:
        raise AssertionError(f"state dict: missing {missing}, unexpected {unexpected}")
    model.train()
    groups = official.timm_optim.param_groups_weight_decay(model, config.optim.weight_decay)
    opt = torch.optim.AdamW(groups, lr=config.optim.lr, betas=(config.optim.b1, config.optim.b2),
                            eps=config.optim.eps)
    print(f"{plan.total_steps} steps in the run's schedule; lockstep for {a.steps}", flush=True)

    start, rec = time.time(), {}
    stream = batches(plan, config.batch_size, a.steps, np.random.default_rng(a.seed), a.data,
                     tuple(official_run.parse_args(["--mae_repo", a.mae_repo]).crop_scale))
    for s, (images, noise) in enumerate(stream):
        params, opt_state, loss = our_step(params, opt_state, jnp.asarray(images), jnp.asarray(noise))
        lr = float(schedule(s))
        if a.codes == "ours":
            if (s + 1) % a.report_every == 0 or s + 1 == a.steps:
                rec = {"step": s + 1, "lr": lr, "loss_ours": round(float(loss), 6),
                       "wall_s": round(time.time() - start, 1)}
                print(json.dumps(rec), flush=True)
            continue
        for g in opt.param_groups:
            g["lr"] = lr
        with torch_rand_returns(torch.from_numpy(noise)):
            loss_t, _, _ = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                                 mask_ratio=config.mae.mask_ratio)
        loss_t.backward()
        opt.step()
        opt.zero_grad()
        if (s + 1) % a.report_every == 0 or s == 0 or s + 1 == a.steps:
            worst, where = compare(export_rows(official_rows(obj.model), {"params": params}),
                                   dict(model.named_parameters()))
            rec = {"step": s + 1, "lr": lr, "loss_ours": round(float(loss), 6),
                   "loss_official": round(loss_t.item(), 6),
                   "loss_rel_diff": abs(float(loss) - loss_t.item()) / loss_t.item(),
                   "param_rel_diff_max": worst, "in": where, "wall_s": round(time.time() - start, 1)}
            print(json.dumps(rec), flush=True)
    final = {"run": "mae_lockstep", "seed": a.seed, "steps": a.steps,
             "init": a.init + (f" with ours for {a.ours_prefixes}" if a.ours_prefixes else ""),
             "data": a.data, "codes": a.codes, **rec}
    if a.knn:
        memory = torch.utils.data.DataLoader(Mnist5kPIL("train", eval_transform()), batch_size=500)
        queries = torch.utils.data.DataLoader(Mnist5kPIL("test", eval_transform()), batch_size=500)
        if a.codes == "both":
            final["knn_official"] = official_run.knn_eval(model, memory, queries)
        model.load_state_dict(official_state(obj.model, params), strict=False)
        final["knn_ours"] = official_run.knn_eval(model, memory, queries)
    official_run.write_final(final, a.out)
    return final


if __name__ == "__main__":
    main()
