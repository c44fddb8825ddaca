"""Images/s of decode + transform for an image folder, data.decode="full" against "draft".

    python benchmarks/jpeg_draft_decode.py --out workdirs/jpeg_draft.jsonl

Generates (once, into --dir) folders of --num textured JPEGs at 500x375 (ImageNet's median size)
and 1600x1200 (a camera's), then for each size and transform reads every file through
ImageFolderSource and applies the transform, one thread, --repeats rounds; prints images/s of
both decodes (median of the rounds), their ratio, and how far the draft's pixels are from the
full decode's (mean and max absolute difference in 0-255 levels, with normalize('none')).
Transforms: ImageNet training's rrc(224), DINO's local crop rrc(96, scale=(0.05, 0.4)) and the
eval resize_center_crop(224).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
from PIL import Image

from vit_jax.data import sources, transforms

SIZES = {"500x375": (375, 500), "1600x1200": (1200, 1600)}
SPECS = {"rrc224": "rrc(224)|flip|normalize('none')",
         "rrc96_local": "rrc(96, scale=(0.05, 0.4))|flip|normalize('none')",
         "eval224": "resize_center_crop(224)|normalize('none')"}


def _make_folder(root: str, hw: tuple[int, int], num: int) -> str:
    if os.path.isdir(root):
        return root
    os.makedirs(os.path.join(root, "x"))
    rng = np.random.default_rng(0)
    for i in range(num):
        # a smooth field plus fine noise: about a photo's JPEG size at quality 90
        field = Image.fromarray(rng.integers(0, 256, (hw[0] // 16, hw[1] // 16, 3), np.uint8)).resize(
            (hw[1], hw[0]), Image.BILINEAR)
        arr = np.clip(np.asarray(field, np.int16) + rng.integers(-12, 13, hw + (3,)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(os.path.join(root, "x", f"{i:04d}.jpg"), quality=90)
    return root


def _pass(src, tf, seed: int) -> tuple[float, list[np.ndarray]]:
    start, out = time.perf_counter(), []
    for i in range(len(src)):
        out.append(tf(dict(src[i]), np.random.default_rng([seed, i]))["image"])
    return len(src) / (time.perf_counter() - start), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="workdirs/jpeg_draft_folders")
    p.add_argument("--num", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="")
    a = p.parse_args()
    for size_name, hw in SIZES.items():
        root = _make_folder(os.path.join(a.dir, f"{size_name}_{a.num}"), hw, a.num)
        full, draft = sources.image_folder(root), sources.image_folder(root, decode="draft")
        for spec_name, spec in SPECS.items():
            tf = transforms.build(spec)
            rates = {"full": [], "draft": []}
            for r in range(a.repeats):
                for name, src in (("full", full), ("draft", draft)):
                    rate, out = _pass(src, tf, r)
                    rates[name].append(rate)
                    if name == "full":
                        want = out
                diff = np.concatenate([np.abs(x - y).ravel() for x, y in zip(out, want)]) * 255
            med = {k: statistics.median(v) for k, v in rates.items()}
            row = dict(size=size_name, transform=spec_name, full_per_s=round(med["full"], 1),
                       draft_per_s=round(med["draft"], 1), ratio=round(med["draft"] / med["full"], 2),
                       mean_abs_diff=round(float(diff.mean()), 3), max_abs_diff=round(float(diff.max()), 1))
            print(json.dumps(row), flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
