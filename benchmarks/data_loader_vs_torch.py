"""Our training input pipeline against PyTorch's DataLoader on the same transforms and files.

    python benchmarks/data_loader_vs_torch.py --cases quickstart esvit jpeg dino --workers 1 2

For each case and worker count, in one run: vit_jax.data.bench's measurement of the pipeline
train.py builds (data.workers = N) with data.loader "threads" (a thread pool) and "grain" (N
worker processes), then torch.utils.data.DataLoader(num_workers=N) over the same source calling
the same per-example transform (so all three differ only in how the work is spread). Cases: "quickstart" (configs/quickstart.py on
mnist5k), "esvit" (configs/mnist5k/esvit.py:v,vit: 2 x 28 + 6 x 12 crops), "jpeg" (a folder of
generated 500x375 JPEGs with the ImageNet train transform rrc(224)|flip|normalize), "dino" (the
same JPEGs through DINO's multi-crop, 2 x 224 + 10 x 96: configs/imagenet/esvit.py:tiny,v);
"esvit_device" and "dino_device" the same with esvit.photometric_on_device (uint8 crops and their
photometric rows leave the host; jitter, blur and the rest run in the train step); "jpeg_uint8"
the jpeg case with data.wire="uint8" (the pixels leave the host, normalize runs on the device),
"jpeg_uint8_draft" that with data.decode="draft" too (vit_jax/data/image_decode.py).
Prints one row per case and N and writes them as JSON lines to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import numpy as np
import torch
from PIL import Image

from vit_jax import validate
from vit_jax.config_base import load_config_file
from vit_jax.data import bench as data_bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jpegs(root: str, n: int, seed: int = 0) -> str:
    """n smooth random 500x375 RGB JPEGs (quality 90) in root/train/{a,b}/ and root/test/{a,b}/."""
    rs = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", 8)):
        for i in range(count):
            folder = os.path.join(root, split, "ab"[i % 2])
            os.makedirs(folder, exist_ok=True)
            small = rs.integers(0, 256, (24, 32, 3), dtype=np.uint8)   # smooth: a photo-like file size
            Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(
                os.path.join(folder, f"{i:05d}.jpg"), quality=90)
    return root


def case_config(name: str, jpegs: str | None, batch: int | None):
    if name in ("esvit_device", "dino_device"):   # the photometric chain left to the device
        c = case_config(name[:-len("_device")], jpegs, batch)
        c.esvit.photometric_on_device = True
        return c
    if name in ("jpeg_uint8", "jpeg_uint8_draft"):   # uint8 leaves the host; [+ JPEG draft decoding]
        c = case_config("jpeg", jpegs, batch)
        c.data.wire = "uint8"
        c.data.decode = "draft" if name.endswith("_draft") else "full"
        return c
    if name == "quickstart":
        c = load_config_file(os.path.join(ROOT, "configs/quickstart.py"))
    elif name == "esvit":
        c = load_config_file(os.path.join(ROOT, "configs/mnist5k/esvit.py"), "v,vit")
    elif name == "jpeg":
        c = load_config_file(os.path.join(ROOT, "configs/imagenet/cvt.py"), "13")
        c.data.train_transform = "rrc(224)|flip|normalize('imagenet')"
    elif name == "dino":
        c = load_config_file(os.path.join(ROOT, "configs/imagenet/esvit.py"), "tiny,v")
        c.esvit.num_local = 10
    else:
        raise SystemExit(f"unknown case {name!r}: quickstart | esvit | jpeg | dino | esvit_device | dino_device")
    if name in ("jpeg", "dino"):
        c.data.name, c.data.data_dir = f"folder:{jpegs}", ""
        c.data.eval_split, c.data.eval_transform = "test", "resize_center_crop(224)|normalize('imagenet')"
        c.evals = {"metrics": {"type": "metrics"}}
        c.batch_size = 64
    if batch:
        c.batch_size = batch
    return c


class _Examples(torch.utils.data.Dataset):
    """The source and the per-example transform of a plan, with the pipeline's per-example rng."""

    def __init__(self, source, transform, seed: int):
        self.source, self.transform, self.seed = source, transform, seed

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return self.transform(dict(self.source[i]), np.random.default_rng([self.seed, i]))


def torch_rate(config, workers: int, steps: int, warmup: int, repeats: int) -> list[float]:
    plan = validate.validate(config)
    loader = torch.utils.data.DataLoader(
        _Examples(plan.train_source, plan.train_transform, config.seed), batch_size=config.batch_size,
        shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0))

    def endless():
        while True:
            yield from loader
    it = endless()
    return data_bench.time_windows(lambda: next(it), config.batch_size, steps, warmup, repeats,
                                   log=lambda _: None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=["quickstart", "esvit", "jpeg", "dino"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--num_jpegs", type=int, default=512)
    p.add_argument("--loaders", nargs="+", default=["threads", "grain", "torch"],
                   help="vit_jax's data.loader values and/or torch (the DataLoader)")
    p.add_argument("--out", default="")
    a = p.parse_args()
    torch.set_num_threads(1)
    jpegs = None
    if {"jpeg", "jpeg_uint8", "jpeg_uint8_draft", "dino", "dino_device"} & set(a.cases):
        jpegs = write_jpegs(tempfile.mkdtemp(prefix="bench_jpegs_"), a.num_jpegs)
    rows = []
    for name in a.cases:
        for n in a.workers:
            row = dict(case=name, workers=n)
            for loader in a.loaders:
                c = case_config(name, jpegs, a.batch)
                c.data.workers = n
                if loader == "torch":
                    windows = torch_rate(c, n, a.steps, a.warmup, a.repeats)
                else:
                    c.data.loader = loader
                    windows = data_bench.measure(c, a.steps, a.warmup, a.repeats, log=lambda _: None)["windows"]
                row.update({"batch": c.batch_size, loader: statistics.median(windows),
                            f"{loader}_windows": windows})
            rows.append(row)
            rates = "   ".join(f"{k} {row[k]:8.1f}" for k in a.loaders)
            ratios = "   ".join(f"{k}/torch {row[k] / row['torch']:.2f}" for k in a.loaders
                               if k != "torch" and "torch" in row)
            print(f"{name:10s} workers {n}: images/s {rates}   {ratios}", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
