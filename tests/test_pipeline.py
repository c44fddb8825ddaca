"""The input pipeline: deterministic, process-sharded, resumable, eval padding."""
import os
import pickle

import numpy as np
import pytest

from vit_jax import validate
from vit_jax.config_base import load_config_file
from vit_jax.data import bench as data_bench, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Toy:
    """A source of 10 examples whose image encodes its index."""
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"image": np.full((2, 2, 1), i, np.uint8), "label": i}


def noisy(example, rng):
    return {"image": example["image"].astype(np.float32) + rng.uniform(size=(2, 2, 1)).astype(np.float32),
            "label": np.int32(example["label"])}


def take(p, n):
    return [next(p) for _ in range(n)]


def test_same_seed_same_stream_and_epochs_are_permutations():
    a = take(pipeline.TrainPipeline(Toy(), noisy, 5, seed=3), 6)
    b = take(pipeline.TrainPipeline(Toy(), noisy, 5, seed=3), 6)
    c = take(pipeline.TrainPipeline(Toy(), noisy, 5, seed=4), 6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert not all(np.array_equal(x["label"], y["label"]) for x, y in zip(a, c))
    labels = np.concatenate([x["label"] for x in a])
    for epoch in range(3):  # every epoch visits each example once, in a new order
        assert sorted(labels[epoch * 10:(epoch + 1) * 10]) == list(range(10))
    assert not np.array_equal(labels[:10], labels[10:20])


def test_processes_together_equal_one_process():
    one = take(pipeline.TrainPipeline(Toy(), noisy, 4, seed=1), 5)
    parts = [take(pipeline.TrainPipeline(Toy(), noisy, 4, seed=1, process_index=p, process_count=2), 5)
             for p in range(2)]
    for s in range(5):
        joined = np.concatenate([parts[0][s]["image"], parts[1][s]["image"]])
        np.testing.assert_array_equal(joined, one[s]["image"])


def test_resume_from_state_continues_exactly():
    full = take(pipeline.TrainPipeline(Toy(), noisy, 3, seed=7), 8)
    p = pipeline.TrainPipeline(Toy(), noisy, 3, seed=7)
    take(p, 5)
    state = p.state()
    assert state == {"step": 5}
    q = pipeline.TrainPipeline(Toy(), noisy, 3, seed=7)
    q.set_state(state)
    for x, y in zip(take(q, 3), full[5:]):
        np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(p.batch_at(2)["image"], full[2]["image"])


def test_eval_batches_cover_every_example_once_with_mask():
    tf = lambda ex: {"image": ex["image"].astype(np.float32), "label": np.int32(ex["label"])}
    batches = list(pipeline.eval_batches(Toy(), tf, 4))
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert mask.sum() == 10 and list(labels[mask > 0]) == list(range(10))
    two = [list(pipeline.eval_batches(Toy(), tf, 4, process_index=p, process_count=2)) for p in range(2)]
    for s in range(3):
        np.testing.assert_array_equal(np.concatenate([two[0][s]["label"], two[1][s]["label"]]),
                                      batches[s]["label"])


def test_bad_batch_for_processes():
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.TrainPipeline(Toy(), noisy, 5, seed=0, process_count=2)


def test_data_bench_prints_the_rate_last(capsys, tmp_path):
    """python -m vit_jax.data.bench: the pipeline train.py would build, its rate printed last."""
    cfg_file = os.path.join(os.path.dirname(__file__), "tiny_config.py")
    data_bench.main(["--config", cfg_file, "--workers", "1", "--steps", "2", "--warmup", "1",
                     "--repeats", "2", "--set", "batch_size=8", "--set", "data.prefetch=1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "batch 8, workers 1, prefetch 1" in lines[0]
    assert [l.startswith("window ") for l in lines[1:3]] == [True, True]
    key, value = lines[-1].split(": ")
    assert key == "images_per_sec" and float(value) > 0
    with pytest.raises(SystemExit, match="use KEY=VALUE"):
        data_bench.main(["--config", cfg_file, "--set", "batch_size"])
    with pytest.raises(SystemExit, match="the config has no key 'batch_sise'"):
        data_bench.main(["--config", cfg_file, "--set", "batch_sise=8"])


@pytest.mark.parametrize("config,arg", [("quickstart.py", None), ("mnist5k/esvit.py", "v,vit")])
def test_training_transform_pickles_for_worker_processes(config, arg):
    """A worker process receives the plan's transform (spec ops + the method's host step, here
    EsViT's multi-crop) by pickle; the copy makes the same example from the same rng."""
    cfg = load_config_file(os.path.join(ROOT, "configs", config), arg)
    plan = validate.validate(cfg)
    copy = pickle.loads(pickle.dumps(plan.train_transform))
    a = plan.train_transform(dict(plan.train_source[7]), np.random.default_rng([0, 7]))
    b = copy(dict(plan.train_source[7]), np.random.default_rng([0, 7]))
    assert a.keys() == b.keys() and len(a) >= 2
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
