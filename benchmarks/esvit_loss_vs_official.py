"""vit_jax's EsViT loss against the OFFICIAL microsoft/esvit DDINOLoss on the same tensors.

One random batch of view logits, region logits and region features (2 global crops of 7x7 tokens,
4 local crops of 4x4, as the shipped configs/mnist5k/esvit.py:vr,vit), fed to
vit_jax.objectives.dino_losses.esvit_loss and to main_esvit.DDINOLoss (unmodified, from a checkout;
with --sinkhorn_iters > 0 through benchmarks/official_dino_remedies.make_loss, the path of
benchmarks/official_esvit_mnist5k.py). Prints both losses and their relative difference, for
centering (sinkhorn 0, random centres) and Sinkhorn-Knopp targets, three draws each:

    PYTHONPATH=/work/tv:/work/esvit_deps python benchmarks/esvit_loss_vs_official.py \\
        --esvit_repo /tmp/esvit_official

Exits non-zero if a relative difference exceeds --rtol.
"""
from __future__ import annotations

import argparse
import sys

import jax.numpy as jnp
import numpy as np
import torch

import official_dino_remedies as remedies
from official_dino_mnist5k import _SingleProcessDist
from official_esvit_mnist5k import import_official
from vit_jax.objectives.dino_losses import esvit_loss


def one_case(official, sinkhorn_iters: int, seed: int, b=8, k=64, p=32, tt=49, ts_local=16,
             n_local=4, tau_s=0.1, tau_t=0.02):
    rng = np.random.default_rng(seed)
    v = 2 + n_local
    t_sizes = [tt, tt] + [ts_local] * n_local
    # logits are cosines, as the heads make them (a weight-normalised last layer with g = 1 on an
    # L2-normalised input)
    cos = lambda *shape: rng.uniform(-1, 1, size=shape).astype(np.float32)  # noqa: E731
    s_view, t_view = cos(v, b, k), cos(2, b, k)
    s_region = [cos(b, t, k) for t in t_sizes]
    s_feat = [rng.normal(size=(b, t, p)).astype(np.float32) for t in t_sizes]
    t_region = cos(2, b, tt, k)
    t_feat = rng.normal(size=(2, b, tt, p)).astype(np.float32)
    center = (0.3 * rng.normal(size=(1, k))).astype(np.float32)
    center_grid = (0.3 * rng.normal(size=(1, k))).astype(np.float32)

    ours, _ = esvit_loss(jnp.asarray(s_view), jnp.asarray(t_view), jnp.asarray(center), tau_s,
                         jnp.asarray(tau_t), [jnp.asarray(x) for x in s_region],
                         [jnp.asarray(x) for x in s_feat], jnp.asarray(t_region),
                         jnp.asarray(t_feat), jnp.asarray(center_grid), sinkhorn_iters)

    # the official layout: crops concatenated along the batch, tokens flattened crop by crop
    args = (k, v, tau_t, tau_t, 0, 1)
    loss_fn = (remedies.make_loss(official.main_esvit.DDINOLoss, *args,
                                  sinkhorn_iters=sinkhorn_iters, koleo_weight=0.0,
                                  student_wrapper=None)
               if sinkhorn_iters else official.main_esvit.DDINOLoss(*args))
    loss_fn.center = torch.from_numpy(center)
    loss_fn.center_grid = torch.from_numpy(center_grid)
    student = (torch.from_numpy(s_view.reshape(v * b, k)),
               torch.from_numpy(np.concatenate([x.reshape(-1, k) for x in s_region])),
               torch.from_numpy(np.concatenate([x.reshape(-1, p) for x in s_feat])),
               [tt, ts_local])
    teacher = (torch.from_numpy(t_view.reshape(2 * b, k)),
               torch.from_numpy(t_region.reshape(-1, k)),
               torch.from_numpy(t_feat.reshape(-1, p)), [tt])
    theirs = float(loss_fn(student, teacher, 0, None))
    return float(ours), theirs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--esvit_repo", required=True)
    p.add_argument("--rtol", type=float, default=1e-5)
    args = p.parse_args(argv)
    official = import_official(args.esvit_repo)
    official.main_esvit.dist = _SingleProcessDist(official.main_esvit.dist)   # update_center
    worst = 0.0
    for sk in (0, 3):
        for seed in range(3):
            ours, theirs = one_case(official, sk, seed)
            rel = abs(ours - theirs) / abs(theirs)
            worst = max(worst, rel)
            print(f"sinkhorn_iters={sk} seed={seed}: vit_jax {ours:.7f}  official {theirs:.7f}  "
                  f"relative difference {rel:.2e}")
    print(f"max relative difference: {worst:.2e}")
    return 0 if worst <= args.rtol else 1


if __name__ == "__main__":
    sys.exit(main())
