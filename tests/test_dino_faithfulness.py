"""DINO's training details against the official code's semantics (facebookresearch/dino): the ViT's
initialisation (weight_init="dino"), the frozen last layer as torch's AdamW skips it, the local crops' position embedding (bicubic with the +0.1
scale-factor offset), epochs that drop the last partial batch; and the collapse remedies of DINOv2
(Sinkhorn-Knopp targets, KoLeo) against closed forms."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from vit_jax import durations, models, optim
from vit_jax.config_base import base_config
from vit_jax.data import pipeline
from vit_jax.models.posemb import resize_pos_embed
from vit_jax.objectives import dino_losses as L

HELD = 3      # steps the last layer is frozen
TOTAL = 9


def _adamw_config():
    cfg = base_config()
    cfg.optim.update(dict(name="adamw", lr=1e-2, schedule="cosine", warmup_steps=2, end_lr=1e-4,
                          b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.04, weight_decay_end=0.4,
                          clip_norm=0.0))
    return cfg


def _params_and_grads():
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))},
              "last_layer": {"v": rng.normal(size=(4, 5))}}
    grads = [jax.tree.map(lambda x: rng.normal(size=x.shape), params) for _ in range(TOTAL)]
    f32 = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float32), t)  # noqa: E731
    return f32(params), [f32(g) for g in grads]


def _ours(held: bool):
    params, grads = _params_and_grads()
    tx, _ = optim.make_optimizer(_adamw_config(), params, TOTAL, decay_rule="dino",
                                 held=("last_layer/", HELD) if held else None)
    p = jax.tree.map(jnp.asarray, params)
    state, out = tx.init(p), []
    for g in grads:
        if not held:  # the old way: a zero gradient through the one global Adam count
            g = dict(g, last_layer={"v": np.zeros_like(g["last_layer"]["v"]) if len(out) < HELD
                                    else g["last_layer"]["v"]})
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
        out.append(jax.tree.map(np.asarray, p))
    return out


def _torch_dino():
    """DINO's loop: AdamW over two groups (decayed, not), lr and wd set per iteration from the
    schedules, the last layer's .grad set to None while frozen (cancel_gradients_last_layer)."""
    params, grads = _params_and_grads()
    cfg = _adamw_config()
    lr = optim.make_schedule(cfg, TOTAL, 2)
    wd = optim.make_weight_decay(cfg, TOTAL)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in
         [("kernel", params["dense"]["kernel"]), ("bias", params["dense"]["bias"]),
          ("v", params["last_layer"]["v"])]}
    opt = torch.optim.AdamW([{"params": [t["kernel"], t["v"]]}, {"params": [t["bias"]], "weight_decay": 0.0}],
                            betas=(0.9, 0.999), eps=1e-8)
    out = []
    for step, g in enumerate(grads):
        opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = float(lr(step))
        opt.param_groups[0]["weight_decay"] = float(wd(step))
        t["kernel"].grad = torch.tensor(g["dense"]["kernel"])
        t["bias"].grad = torch.tensor(g["dense"]["bias"])
        t["v"].grad = None if step < HELD else torch.tensor(g["last_layer"]["v"])
        opt.step()
        out.append({"dense": {"kernel": t["kernel"].detach().numpy().copy(),
                              "bias": t["bias"].detach().numpy().copy()},
                    "last_layer": {"v": t["v"].detach().numpy().copy()}})
    return out


def test_held_last_layer_matches_torch_adamw_step_by_step_through_the_unfreeze():
    want, got = _torch_dino(), _ours(held=True)
    init = _params_and_grads()[0]["last_layer"]["v"]
    for step, (w, g) in enumerate(zip(want, got)):
        for path in (("dense", "kernel"), ("dense", "bias"), ("last_layer", "v")):
            np.testing.assert_allclose(g[path[0]][path[1]], w[path[0]][path[1]], rtol=2e-5, atol=2e-6,
                                       err_msg=f"step {step} {path}")
        if step < HELD:  # untouched: no weight decay, no update
            np.testing.assert_array_equal(g["last_layer"]["v"], init)


def test_zero_gradients_through_one_global_count_differ_from_torch():
    """The semantics this replaced: after the unfreeze the bias correction of the global count
    mis-scales the first updates and weight decay has shrunk the frozen layer."""
    want, old = _torch_dino(), _ours(held=False)
    first = HELD
    step_want = want[first]["last_layer"]["v"] - want[first - 1]["last_layer"]["v"]
    step_old = old[first]["last_layer"]["v"] - old[first - 1]["last_layer"]["v"]
    assert np.abs(step_old).mean() / np.abs(step_want).mean() < 0.9   # the update is mis-scaled
    assert not np.allclose(old[first - 1]["last_layer"]["v"], _params_and_grads()[0]["last_layer"]["v"])


def test_held_group_keeps_its_state_and_the_rest_of_the_tree_its_optimizer():
    params, grads = _params_and_grads()
    tx, _ = optim.make_optimizer(_adamw_config(), params, TOTAL, decay_rule="dino",
                                 held=("last_layer/", HELD))
    plain, _ = optim.make_optimizer(_adamw_config(), params, TOTAL, decay_rule="dino")
    s, s_plain = tx.init(params), plain.init(params)
    p = p_plain = params
    for g in grads[:HELD + 2]:
        u, s = tx.update(g, s, p)
        u_plain, s_plain = plain.update(g, s_plain, p_plain)
        p, p_plain = optax.apply_updates(p, u), optax.apply_updates(p_plain, u_plain)
        # the other leaves train exactly as without a held group
        np.testing.assert_allclose(p["dense"]["kernel"], p_plain["dense"]["kernel"], rtol=1e-6)
    with pytest.raises(ValueError, match="matches no parameter"):
        optim.make_optimizer(_adamw_config(), params, TOTAL, held=("nothing/", HELD))


# ---------------------------------------------------------------------------- position embedding

def _dino_interpolate(grid: np.ndarray, n_out: int) -> np.ndarray:
    """(n, n, D) -> (n_out, n_out, D) as facebookresearch/dino's interpolate_pos_encoding: torch's
    bicubic F.interpolate with scale_factor (n_out + 0.1) / n."""
    n = grid.shape[0]
    x = torch.tensor(grid).permute(2, 0, 1)[None]
    y = torch.nn.functional.interpolate(x, scale_factor=((n_out + 0.1) / n, (n_out + 0.1) / n),
                                        mode="bicubic", align_corners=False)
    assert y.shape[-2:] == (n_out, n_out)
    return y[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("n_in,n_out", [(7, 3), (7, 4), (14, 6), (4, 7)])
def test_bicubic_dino_pos_embed_resize_equals_the_official_formula(n_in, n_out):
    rng = np.random.default_rng(n_in * 10 + n_out)
    posemb = rng.normal(size=(1, 1 + n_in * n_in, 8)).astype(np.float32)
    got = np.asarray(resize_pos_embed(jnp.asarray(posemb), (n_out, n_out), 1, method="bicubic_dino"))
    want = _dino_interpolate(posemb[0, 1:].reshape(n_in, n_in, 8), n_out)
    np.testing.assert_array_equal(got[0, 0], posemb[0, 0])   # the class token's row is kept
    np.testing.assert_allclose(got[0, 1:].reshape(n_out, n_out, 8), want, rtol=1e-5, atol=1e-5)
    plain = np.asarray(resize_pos_embed(jnp.asarray(posemb), (n_out, n_out), 1, method="bicubic"))
    assert np.abs(plain - got).max() > 1e-3      # the offset matters: the test can tell


def test_vit_local_crop_uses_dinos_resize():
    model = models.create("vit_tiny_patch4_28", num_classes=0, width=16, depth=1, num_heads=2,
                          mlp_dim=32, posemb_interp="bicubic_dino", in_channels=1)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    pos = np.asarray(variables["params"]["pos_embed"])
    got = np.asarray(model.apply(variables, (3, 3), method=model.pos_embed_for))
    want = _dino_interpolate(pos[0, 1:].reshape(7, 7, 16), 3)
    np.testing.assert_allclose(got[0, 1:].reshape(3, 3, 16), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- epochs

class _Toy:
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"image": np.full((1, 1, 1), i, np.float32)}


def test_drop_remainder_epochs_are_floor_n_over_b_steps_on_fresh_permutations():
    pipe = pipeline.TrainPipeline(_Toy(), lambda ex, rng: ex, 4, seed=3, workers=1, drop_remainder=True)
    seen = [pipe.batch_at(s)["image"].ravel().astype(int).tolist() for s in range(4)]
    pipe.close()
    perm0, perm1 = pipeline._permutation(3, 0, 10), pipeline._permutation(3, 1, 10)
    assert seen[0] + seen[1] == perm0[:8].tolist()          # epoch 0: 2 steps, 2 examples dropped
    assert seen[2] + seen[3] == perm1[:8].tolist()          # epoch 1 starts at step 2
    assert pipe.epoch(2) == 1.0
    keep = pipeline.TrainPipeline(_Toy(), lambda ex, rng: ex, 4, seed=3, workers=1)
    assert keep.batch_at(2)["image"].ravel().astype(int).tolist() == perm0[8:].tolist() + perm1[:2].tolist()
    keep.close()


def test_durations_in_epochs_count_dropped_epochs():
    c = base_config()
    c.batch_size, c.num_epochs = 4, 3.0
    c.optim.warmup_epochs = 1.0
    assert durations.all_steps(c, 10, note=lambda _: None)["total"] == round(3 * 2.5)
    c.data.drop_remainder = True
    steps = durations.all_steps(c, 10, note=lambda _: None)
    assert steps["total"] == 6 and steps["warmup"] == 2
    assert durations.steps_per_epoch(4000, 128, True) == 31.0


# ---------------------------------------------------------------------------- DINOv2 remedies

def _sinkhorn_numpy(scores: np.ndarray, iters: int) -> np.ndarray:
    """SwAV / DINOv2: Q = exp(scores)^T (K x B), Q /= sum Q; repeat: rows /= row sums / K,
    columns /= column sums / B; return (Q * B)^T."""
    q = np.exp(scores.astype(np.float64)).T
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def test_sinkhorn_knopp_against_its_definition_and_equipartition():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 6, 5)) * 3.0
    got = np.asarray(L.sinkhorn_knopp(jnp.asarray(scores, jnp.float32), 3))
    want = _sinkhorn_numpy(scores.reshape(12, 5), 3).reshape(2, 6, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)                 # each sample a distribution
    many = np.asarray(L.sinkhorn_knopp(jnp.asarray(scores, jnp.float32), 50)).reshape(12, 5)
    np.testing.assert_allclose(many.mean(0), 1 / 5, rtol=1e-3)             # prototypes used equally
    # constant teacher outputs (collapse): the targets are uniform, never one prototype
    flat = np.asarray(L.sinkhorn_knopp(jnp.zeros((4, 5)), 3))
    np.testing.assert_allclose(flat, 1 / 5, rtol=1e-6)


def test_sinkhorn_knopp_sharp_teacher_stays_finite():
    # cosine logits in [-1, 1] at tau_t = 0.01 span 200: a prototype every sample scores far below
    # the batch maximum must not underflow to 0 / 0 (float64 reference holds exp(200))
    rng = np.random.default_rng(2)
    logits = np.tanh(rng.normal(size=(16, 8)))
    logits[:, 3] = -0.9                                    # a prototype nobody is near
    got = np.asarray(L.sinkhorn_knopp(jnp.asarray(logits / 0.01, jnp.float32), 3))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _sinkhorn_numpy(logits / 0.01, 3), rtol=1e-3, atol=1e-6)


def test_teacher_probs_sinkhorn_ignores_the_center():
    t = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 6)), jnp.float32)
    c = jnp.ones((1, 6)) * 5.0
    a = L.teacher_probs(t, c, 0.1, sinkhorn_iters=3)
    np.testing.assert_allclose(a, L.sinkhorn_knopp(t / 0.1, 3), rtol=1e-6)
    np.testing.assert_allclose(L.teacher_probs(t, c, 0.1), jax.nn.softmax((t - c) / 0.1, -1), rtol=1e-6)


def test_koleo_closed_form():
    # three unit vectors: e1, e2 and (e1 + e2)/sqrt 2; nearest distances 2 sin(pi/8) twice for the
    # first two and for the third
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = 2 * math.sin(math.pi / 8)
    want = -math.log(d + 1e-8)
    assert float(L.koleo_loss(jnp.asarray(x * 3.0, jnp.float32))) == pytest.approx(want, rel=1e-5)
    # spreading the batch lowers it
    near = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1]])
    assert float(L.koleo_loss(jnp.asarray(near))) > want


def test_weight_init_dino_draws_what_torch_draws():
    """weight_init="dino": Linear kernels as torch's trunc_normal_(std=0.02), zero biases; the patch
    conv (kernel and bias) as torch.nn.Conv2d's own default. Compared with the torch draws by range
    and standard deviation; "mae" (xavier) is different, so the test can tell them apart."""
    kw = dict(num_classes=0, in_channels=1, width=128, depth=1, num_heads=4, mlp_dim=256, image_size=28)
    x = jnp.zeros((1, 28, 28, 1))
    dino = models.create("vit_tiny_patch4_28", weight_init="dino", **kw).init(jax.random.key(0), x)["params"]
    mae = models.create("vit_tiny_patch4_28", **kw).init(jax.random.key(0), x)["params"]
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 128, 4, 4)
    lin = torch.nn.init.trunc_normal_(torch.empty(256, 128), std=0.02)
    ours_conv = np.asarray(dino["embedding"]["kernel"]), np.asarray(dino["embedding"]["bias"])
    for ours, ref in zip(ours_conv, (conv.weight.detach().numpy(), conv.bias.detach().numpy())):
        assert np.abs(ours).max() <= 0.25 and np.abs(ref).max() <= 0.25  # 1 / sqrt(fan_in 16)
        assert ours.std() == pytest.approx(ref.std(), rel=0.2 if ours.size < 1000 else 0.05)
    fc1 = np.asarray(dino["blocks_0"]["mlp"]["fc1"]["kernel"])
    assert fc1.std() == pytest.approx(lin.std().item(), rel=0.03)
    assert np.asarray(mae["blocks_0"]["mlp"]["fc1"]["kernel"]).std() > 3 * fc1.std()  # xavier: 0.072
    assert not np.any(np.asarray(dino["blocks_0"]["mlp"]["fc1"]["bias"]))
    assert np.asarray(dino["pos_embed"]).std() == pytest.approx(0.02, rel=0.1)
    with pytest.raises(ValueError, match="weight_init"):
        models.create("vit_tiny_patch4_28", weight_init="xavier", **kw)
