"""Reads per second from a tfds array_record dataset: row by row against one batched read.

    python benchmarks/array_record_reads.py --kind raw --records 20000
    python benchmarks/array_record_reads.py --kind jpeg --records 2000

Builds (once, offline, into --data_dir) a tfds array_record dataset of --records examples:
`raw` holds CIFAR-sized 32x32x3 uint8 arrays, `jpeg` 500x375 JPEG bytes (ImageNet's median
size; decoded by TfdsSource with PIL, as an ImageNet record is). Then for --repeats rounds it
reads the same random batches of --batch indices through vit_jax's TfdsSource two ways:
`source[i]` for each row (the pipeline before batched reads) and `source.__getitems__(indices)`
(one array_record read per batch, what the pipeline does now), and the training pipeline
(threads loader, identity transform) on each. Prints each round and the medians. The files sit
in the page cache after the first round, so this measures the reader's own cost, not a disk's.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vit_jax.data import pipeline, sources


class _Bench(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    code_path = None     # a builder outside a registered package (tfds's lookup needs importlib_resources)
    records = 0

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for i in range(self.records):
            yield i, {"image": self._image(rng), "label": i % 10}


class ArrayRecordBenchRaw(_Bench):
    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10)}))

    def _image(self, rng):
        return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)


class ArrayRecordBenchJpeg(_Bench):
    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "label": tfds.features.ClassLabel(num_classes=10)}))

    def _image(self, rng):
        # smooth content (a JPEG of noise is 5x larger than a photo's)
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((500, 375), Image.BILINEAR).save(buf, format="JPEG", quality=90)
        return buf.getvalue()


def _rate(fn, rows: int) -> float:
    start = time.perf_counter()
    fn()
    return rows / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=["raw", "jpeg"], default="raw")
    p.add_argument("--records", type=int, default=20000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--batches", type=int, default=20, help="batches a round")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="the pipeline's threads")
    p.add_argument("--data_dir", default="workdirs/array_record_bench")
    p.add_argument("--out", default="")
    a = p.parse_args()
    builder_cls = {"raw": ArrayRecordBenchRaw, "jpeg": ArrayRecordBenchJpeg}[a.kind]
    builder_cls.records = a.records
    data_dir = os.path.join(a.data_dir, f"{a.kind}_{a.records}")
    builder_cls(data_dir=data_dir, file_format="array_record").download_and_prepare()
    src = sources.get_source(f"tfds:{builder_cls.name}", "train", data_dir=data_dir)
    rows = a.batch * a.batches
    results: dict[str, list[float]] = {"row_by_row": [], "batched": [], "pipeline_row_by_row": [],
                                       "pipeline_batched": []}
    identity = lambda ex, rng: ex   # noqa: E731
    for r in range(a.repeats):
        batches = np.random.default_rng(r).integers(0, len(src), (a.batches, a.batch)).tolist()
        results["row_by_row"].append(_rate(lambda: [[src[i] for i in b] for b in batches], rows))
        results["batched"].append(_rate(lambda: [src.__getitems__(b) for b in batches], rows))
        for name, s in (("pipeline_row_by_row", pipeline.RowByRow(src)), ("pipeline_batched", src)):
            pipe = pipeline.TrainPipeline(s, identity, a.batch, seed=r, workers=a.workers,
                                          start_step=r * a.batches)
            results[name].append(_rate(lambda: [next(pipe) for _ in range(a.batches)], rows))
            pipe.close()
        print(f"round {r}: " + "  ".join(f"{k} {v[-1]:.0f}" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    summary = dict(kind=a.kind, records=a.records, batch=a.batch, workers=a.workers,
                   **{f"{k}_per_s": round(v) for k, v in med.items()},
                   read_ratio=round(med["batched"] / med["row_by_row"], 2),
                   pipeline_ratio=round(med["pipeline_batched"] / med["pipeline_row_by_row"], 2))
    print(json.dumps(summary))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
