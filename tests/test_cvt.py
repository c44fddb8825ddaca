"""CvT: parameter counts, parity with randomly initialised Hugging Face CvT models
(eval and train mode, BatchNorm running statistics included), registry and errors."""
from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.hf_parity import copy_with_config, images, save
from vit_jax import convert, models
from vit_jax.convert import ConversionError
from vit_jax.convert.hf_cvt import save_cvt_hf
from vit_jax.models.cvt import CvT

import torch
import transformers

ATOL = 1e-4


# ----------------------------------------------------------------------------- helpers

def _hf_config(**kw):
    # Non-default small sizes.  HF's CvtStage indexes its per-layer drop-path list by the
    # stage index, so it needs depth[i] > i: depths 1/2/3, not 1/1/2.
    base = dict(embed_dim=[16, 32, 48], depth=[1, 2, 3], num_heads=[1, 2, 3],
                mlp_ratio=[4.0, 2.0, 3.0], qkv_bias=[True, False, True],
                drop_path_rate=[0.0, 0.0, 0.0], num_labels=5)
    base.update(kw)
    return transformers.CvtConfig(**base)


def _perturb(model, seed: int) -> None:
    """Random non-trivial norms, biases and BatchNorm running stats: a swapped or
    mis-mapped tensor then changes the outputs.  (Not tests.hf_parity.perturb: this one sets
    buffers as well as parameters, draws per kind of tensor and leaves the weights at init.)"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif "normalization.weight" in name or "layernorm" in name:
                t.copy_(1.0 + torch.randn(t.shape, generator=g) * 0.2)


def _hf(model, xt: torch.Tensor, **kw):
    with torch.no_grad():
        return model(xt, output_hidden_states=True, **kw)


def _apply(module, variables, x):
    # jitted: eager op-by-op flax is slow on a busy CPU.
    return jax.jit(functools.partial(module.apply, train=False))(variables, x)


def _nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _maxdiff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def hf_cls(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.CvtForImageClassification(_hf_config()).eval()
    _perturb(model, 1)
    folder = save(model, tmp_path_factory.mktemp("cvt_cls"))
    return model, folder, convert.load_hf(folder)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    torch.manual_seed(1)
    model = transformers.CvtModel(_hf_config(embed_dim=[8, 24, 36], num_heads=[2, 3, 4])).eval()
    _perturb(model, 2)
    folder = save(model, tmp_path_factory.mktemp("cvt_model"))
    return model, folder, convert.load_hf(folder)


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name,count", [("cvt_13_224", 19_997_480), ("cvt_21_224", 31_622_696)])
def test_param_counts(name, count):
    # "params" only: the BatchNorm running statistics live in "batch_stats".
    assert models.param_count(models.create(name), (224, 224, 3)) == count


def test_registry():
    assert {"cvt_13_224", "cvt_21_224", "cvt_w24_384"} <= set(models.list_models("cvt_*"))
    m = models.create("cvt_w24_384", num_classes=7)
    assert isinstance(m, CvT) and m.image_size == 384 and m.widths == (192, 768, 1024)
    assert m.num_classes == 7


@pytest.mark.parametrize("size", [64, 72])
def test_classification_parity(hf_cls, size):
    model, _, (module, variables) = hf_cls
    assert set(variables) == {"params", "batch_stats"}
    x, xt = images(size, size)
    ref = _hf(model, xt)
    out, aux = _apply(module, variables, x)
    assert out.shape == (2, 5)
    assert _maxdiff(out, ref.logits) <= ATOL
    assert len(aux["stages"]) == 3
    for ours, theirs in zip(aux["stages"], ref.hidden_states):
        assert ours.shape == _nhwc(theirs).shape
        assert _maxdiff(ours, _nhwc(theirs)) <= ATOL
    h, w = aux["stages"][-1].shape[1:3]
    assert aux["encoded"].shape == (2, 1 + h * w, 48)
    np.testing.assert_allclose(aux["pre_logits"], aux["encoded"][:, 0])


@pytest.mark.parametrize("size", [64, 72])
def test_cvt_model_parity(hf_model, size):
    model, _, (module, variables) = hf_model
    assert module.num_classes == 0 and not module.final_norm
    x, xt = images(10 + size, size)
    ref = _hf(model, xt)
    out, aux = _apply(module, variables, x)
    b, c, h, w = ref.last_hidden_state.shape
    want = np.concatenate([ref.cls_token_value.numpy(),
                           _nhwc(ref.last_hidden_state).reshape(b, h * w, c)], axis=1)
    assert aux["encoded"].shape == want.shape
    assert _maxdiff(aux["encoded"], want) <= ATOL
    assert _maxdiff(out, ref.cls_token_value[:, 0].numpy()) <= ATOL
    for ours, theirs in zip(aux["stages"], ref.hidden_states):
        assert _maxdiff(ours, _nhwc(theirs)) <= ATOL


def test_no_class_token_mean_pools(tmp_path):
    torch.manual_seed(2)
    model = transformers.CvtForImageClassification(
        _hf_config(cls_token=[False, False, False], num_labels=3)).eval()
    _perturb(model, 3)
    module, variables = convert.load_hf(save(model, tmp_path))
    x, xt = images(5, 72, batch=1)
    out, aux = _apply(module, variables, x)
    assert aux["encoded"].shape == (1, 5 * 5, 48)          # no class token
    assert _maxdiff(out, _hf(model, xt).logits) <= ATOL


def test_train_mode_updates_batch_stats_like_torch(hf_cls):
    model, _, (module, variables) = hf_cls
    x, xt = images(3, 64)
    hf_train = copy.deepcopy(model).train()                 # all dropout / drop-path rates are 0
    with torch.no_grad():
        ref = hf_train(xt)
    (out, _), updates = jax.jit(functools.partial(module.apply, train=True,
                                                  mutable=["batch_stats"]))(variables, x)
    assert _maxdiff(out, ref.logits) <= ATOL                # batch statistics, not running ones
    new = updates["batch_stats"]
    key = "cvt.encoder.stages.1.layers.1.attention.attention.convolution_projection_key." \
          "convolution_projection.normalization."
    sd = hf_train.state_dict()
    ours = new["stage_1_blocks_1"]["attn"]["conv_k"]["bn"]
    old = variables["batch_stats"]["stage_1_blocks_1"]["attn"]["conv_k"]["bn"]
    assert _maxdiff(ours["mean"], old["mean"]) > 1e-3      # they moved
    assert _maxdiff(ours["mean"], sd[key + "running_mean"].numpy()) <= ATOL
    assert _maxdiff(ours["var"], sd[key + "running_var"].numpy()) <= ATOL
    # eval mode does not touch them
    _, state = jax.jit(functools.partial(module.apply, train=False,
                                         mutable=["batch_stats"]))(variables, x)
    assert _maxdiff(state["batch_stats"]["stage_1_blocks_1"]["attn"]["conv_k"]["bn"]["mean"],
                    old["mean"]) == 0.0


def test_overrides_and_init():
    m = models.create("cvt_13_224", widths=(16, 32, 48), depths=(1, 1, 1), num_heads=(1, 2, 3),
                      num_classes=0, drop_path_rate=0.1, dropout=0.1, attn_dropout=0.1)
    x = jnp.zeros((2, 40, 56, 3))
    # Random values in the init's shapes: compiling the truncated-normal init is slow on CPU.
    shapes = jax.eval_shape(m.init, jax.random.key(0), x)
    assert set(shapes) == {"params", "batch_stats"}
    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.1 + 1.0, s.dtype), shapes)
    (out, aux), _ = jax.jit(functools.partial(m.apply, train=True, mutable=["batch_stats"]))(
        v, x, rngs={"dropout": jax.random.key(1)})
    assert out.shape == (2, 48)
    assert [s.shape[1:3] for s in aux["stages"]] == [(10, 14), (5, 7), (3, 4)]


def test_too_small_input_raises():
    m = models.create("cvt_13_224", widths=(8, 16, 24), depths=(1, 1, 1), num_heads=(1, 1, 1))
    with pytest.raises(ValueError, match="too small"):
        jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 2, 2, 3))))
    with pytest.raises(ValueError, match="channels"):
        jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1))))


def test_conversion_errors(hf_cls, tmp_path):
    _, folder, _ = hf_cls
    # unsupported projection method
    bad = copy_with_config(folder, tmp_path / "avg", qkv_projection_method=["avg"] * 3)
    with pytest.raises(ConversionError, match="dw_bn"):
        convert.load_hf(bad)
    # a missing running statistic is named
    from safetensors.numpy import load_file, save_file
    miss = copy_with_config(folder, tmp_path / "miss")
    tensors = load_file(str(miss / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("running_var"))
    del tensors[key]
    save_file(tensors, str(miss / "model.safetensors"))
    with pytest.raises(ConversionError, match="running_var"):
        convert.load_hf(miss)
    # config disagreeing with the weights (depth) names the key
    deep = copy_with_config(folder, tmp_path / "depth", depth=[1, 2, 2])
    with pytest.raises(ConversionError, match="unused"):
        convert.load_hf(deep)


# ----------------------------------------------------------------------------- export

def test_save_round_trip_classification(hf_cls, tmp_path):
    model, _, (module, variables) = hf_cls
    folder = convert.save_hf(module, variables, tmp_path / "out")
    back = transformers.CvtForImageClassification.from_pretrained(str(folder)).eval()
    sd, ref_sd = back.state_dict(), model.state_dict()
    assert set(sd) == set(ref_sd)
    assert max(_maxdiff(sd[k].float().numpy(), ref_sd[k].float().numpy()) for k in sd) == 0.0
    module2, variables2 = convert.load_hf(folder)
    assert module2 == module
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), variables, variables2))


@pytest.mark.parametrize("final_norm", [False, True], ids=["model", "features"])
def test_save_backbone(hf_model, tmp_path, final_norm):
    model, _, (module, variables) = hf_model
    if final_norm:  # num_classes=0 with the final norm: HF classification with num_labels=0
        module = module.clone(final_norm=True)
        d = module.widths[-1]
        rng = np.random.default_rng(0)
        variables = {**variables, "params": {**variables["params"], "norm": {
            "scale": jnp.asarray(1 + 0.2 * rng.normal(size=d), jnp.float32),
            "bias": jnp.asarray(0.2 * rng.normal(size=d), jnp.float32)}}}
    folder = save_cvt_hf(module, variables, tmp_path / "out")
    cls = transformers.CvtForImageClassification if final_norm else transformers.CvtModel
    back = cls.from_pretrained(str(folder)).eval()
    x, xt = images(7, 64)
    ref = _hf(back, xt)
    out, aux = _apply(module, variables, x)
    want = ref.logits if final_norm else ref.cls_token_value[:, 0]
    assert _maxdiff(out, want) <= ATOL


def test_save_rejects_what_hf_cannot_express(hf_cls, tmp_path):
    _, _, (module, variables) = hf_cls
    with pytest.raises(ConversionError, match="GELU"):
        save_cvt_hf(module.clone(act="quick_gelu"), variables, tmp_path)
    with pytest.raises(ConversionError, match="batch_stats"):
        save_cvt_hf(module, {"params": variables["params"]}, tmp_path)
