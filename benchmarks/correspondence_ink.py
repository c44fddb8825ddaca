"""The share of an EsViT / DINO run's top-10 teacher-token matches that fall on ink in both views,
for a finished run (the number the "correspondences" evaluator logs as eval/<name>/ink_top10):

    python benchmarks/correspondence_ink.py WORKDIR [WORKDIR ...] [--images 100] [--top 10]

Two global views of each of `images` test digits (evenly spaced over the 1,000; view seeds 0, 1, ...),
each token of view 1 matched to its most similar token of view 2 by the EMA teacher's final tokens,
the `top` most similar pairs kept; a token's region is "on ink" when it holds a pixel >= 0.5
(viz.ink_match_fraction). Strokes matched to strokes score high; background to background low.
README: the small-data table's EsViT rows.
"""
import argparse

import numpy as np

from vit_jax.runs import load_run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workdirs", nargs="+")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    for workdir in args.workdirs:
        run = load_run(workdir)
        source = run.source("test")
        picks = np.unique(np.linspace(0, len(source) - 1, args.images).astype(int))
        ink = run.objective.correspondence_ink(run.backbone_variables, [dict(source[int(i)]) for i in picks],
                                               top=args.top)
        print(f"{workdir}: ink_top{args.top} = {ink:.3f} over {len(picks)} test digits")


if __name__ == "__main__":
    main()
