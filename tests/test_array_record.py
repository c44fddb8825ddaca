"""tfds array_record read in batches: a real array_record dataset (built offline here by a tiny
tfds builder; uint8 tensors, so no TensorFlow is needed to write it) read through TfdsSource,
one `__getitems__` per batch in both loaders, the same batches as row-by-row reads."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vit_jax.data import grain_pipeline, pipeline, sources
from vit_jax.errors import DataError

N = 40


class TinyArrayRecordDigits(tfds.core.GeneratorBasedBuilder):
    """40 random 8x8x1 uint8 images, labels i % 3."""
    VERSION = tfds.core.Version("1.0.0")

    # no code folder: tfds's lookup of it for a builder inside a package imports
    # importlib_resources, which tfds does not install
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for i in range(N):
            yield i, {"image": rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyArrayRecordDigits(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return sources.get_source("tfds:tiny_array_record_digits", "train", data_dir=data_dir)


@pytest.fixture
def reads(source, monkeypatch):
    """The batch sizes the array_record reader is asked for."""
    reader = type(source._ds.data_source)
    sizes, original = [], reader.__getitems__

    def counted(self, keys):
        sizes.append(len(keys))
        return original(self, keys)
    monkeypatch.setattr(reader, "__getitems__", counted)
    return sizes


def _flip(ex, rng):
    return {"image": ex["image"][:, ::-1] if rng.random() < 0.5 else ex["image"], "label": ex["label"]}


def test_batched_read_equals_single_reads(source, reads):
    assert len(source) == N and source.num_classes == 3 and source.image_shape == (8, 8, 1)
    got = source.__getitems__([7, 0, 39, 7])
    assert reads == [4]
    for row, i in zip(got, [7, 0, 39, 7]):   # tfds shuffles the records as it writes them
        assert row["label"] == source[i]["label"] and row["image"].dtype == np.uint8
        np.testing.assert_array_equal(row["image"], source[i]["image"])
    assert np.bincount([source[i]["label"] for i in range(N)]).tolist() == [14, 13, 13]


@pytest.mark.parametrize("loader", ["threads", "grain"])
def test_each_batch_is_one_read_and_equals_row_by_row(source, reads, loader):
    def make(src):
        if loader == "grain":
            return grain_pipeline.GrainTrainPipeline(src, _flip, 16, seed=3, workers=0)
        return pipeline.TrainPipeline(src, _flip, 16, seed=3, workers=2)
    batched, single = make(source), make(pipeline.RowByRow(source))
    for _ in range(4):   # 4 steps of 16 rows: across the first epoch's end (40 rows)
        a, b = next(batched), next(single)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    batched.close(), single.close()
    assert reads and set(reads) == {16}


@pytest.mark.parametrize("loader", ["threads", "grain"])
def test_eval_batches_read_in_batches(source, reads, loader):
    pad = {"threads": pipeline.eval_batches, "grain": grain_pipeline.eval_batches}[loader]
    kw = {"workers": 0} if loader == "grain" else {}
    got = list(pad(source, lambda ex: ex, 16, **kw))
    assert set(reads) == {16} and len(reads) == 3        # 40 rows: 2 full batches, 8 rows + 8 of padding
    want = list(pad(pipeline.RowByRow(source), lambda ex: ex, 16, **kw))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
    assert got[-1]["mask"].sum() == 8


class _BrokenReader:
    def __getitems__(self, keys):
        raise OSError("bad block")


class _Records:
    def __init__(self):
        self.data_source = _BrokenReader()

    def __len__(self):
        return 3

    def __getitems__(self, keys):
        return self.data_source.__getitems__(keys)

    def __getitem__(self, i):
        if i == 1:
            raise OSError("bad block")
        return {"image": np.zeros((2, 2, 1), np.uint8), "label": 0}


def test_a_failed_batched_read_names_its_record():
    src = object.__new__(sources.TfdsSource)   # only the read path: no tfds files
    src.name, src.split, src.image_key, src.label_key, src._ds = "cifar10", "train", "image", "label", _Records()
    with pytest.raises(DataError, match=r"tfds:cifar10 split 'train' index 1: cannot be read \(OSError: bad block\)"):
        src.__getitems__([0, 1, 2])
