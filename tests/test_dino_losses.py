"""DINO / EsViT losses and schedules against an independent NumPy implementation written from the
papers' formulas (loops over crop pairs, tokens and batch rows, no vectorised tricks)."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.objectives import dino_losses as L


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _log_softmax(x):
    m = x.max()
    return x - m - math.log(np.exp(x - m).sum())


def numpy_esvit(s_view, t_view, center, tau_s, tau_t, s_region=None, s_feat=None, t_region=None,
                t_feat=None, center_grid=None, s_valid=None, t_valid=None):
    """Paper / official-code semantics, one scalar at a time."""
    n_crops, batch = s_view.shape[0], s_view.shape[1]
    total, pairs = 0.0, 0
    for iq in range(2):
        for v in range(n_crops):
            if v == iq:
                continue
            view = 0.0
            for b in range(batch):
                p = _softmax((t_view[iq, b] - center[0]) / tau_t)
                view += -(p * _log_softmax(s_view[v, b] / tau_s)).sum()
            view /= batch
            if s_region is None:
                total += view
            else:
                region = 0.0
                for b in range(batch):
                    ts = s_feat[v][b].shape[0]
                    students = [i for i in range(ts) if s_valid is None or s_valid[v][b, i]]
                    teachers = [j for j in range(t_feat.shape[2]) if t_valid is None or t_valid[iq, b, j]]
                    acc = 0.0
                    for i in students if teachers else []:
                        zs = s_feat[v][b, i] / np.linalg.norm(s_feat[v][b, i])
                        sims = [zs @ (t_feat[iq, b, j] / np.linalg.norm(t_feat[iq, b, j])) for j in teachers]
                        j = teachers[int(np.argmax(sims))]
                        p = _softmax((t_region[iq, b, j] - center_grid[0]) / tau_t)
                        acc += -(p * _log_softmax(s_region[v][b, i] / tau_s)).sum()
                    region += acc / max(len(students) if teachers else 0, 1)
                region /= batch
                total += 0.5 * view + 0.5 * region
            pairs += 1
    return total / pairs


@pytest.fixture(scope="module")
def crops():
    rng = np.random.default_rng(0)
    b, k, p = 3, 11, 5
    n_local, t_global, t_local = 3, 9, 4
    s_view = rng.normal(size=(2 + n_local, b, k)) * 2
    t_view = rng.normal(size=(2, b, k)) * 2
    center = rng.normal(size=(1, k)) * 0.3
    tokens = [t_global] * 2 + [t_local] * n_local
    s_region = [rng.normal(size=(b, t, k)) * 2 for t in tokens]
    s_feat = [rng.normal(size=(b, t, p)) for t in tokens]
    t_region = rng.normal(size=(2, b, t_global, k)) * 2
    t_feat = rng.normal(size=(2, b, t_global, p))
    center_grid = rng.normal(size=(1, k)) * 0.3
    return s_view, t_view, center, s_region, s_feat, t_region, t_feat, center_grid


def test_view_loss_equals_numpy(crops):
    s_view, t_view, center = crops[:3]
    want = numpy_esvit(s_view, t_view, center, 0.1, 0.04)
    got, parts = L.esvit_loss(jnp.asarray(s_view, jnp.float32), jnp.asarray(t_view, jnp.float32),
                              jnp.asarray(center, jnp.float32), 0.1, 0.04)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(parts["view"]) == pytest.approx(want, rel=1e-5)


def test_view_plus_region_loss_equals_numpy(crops):
    s_view, t_view, center, s_region, s_feat, t_region, t_feat, center_grid = crops
    want = numpy_esvit(s_view, t_view, center, 0.1, 0.07, s_region, s_feat, t_region, t_feat, center_grid)
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    got, parts = L.esvit_loss(f(s_view), f(t_view), f(center), 0.1, 0.07, [f(x) for x in s_region],
                              [f(x) for x in s_feat], f(t_region), f(t_feat), f(center_grid))
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(got) == pytest.approx(0.5 * float(parts["view"]) + 0.5 * float(parts["region"]), rel=1e-5)
    # the region term matters: shuffling teacher tokens changes the matches and the loss
    shuffled = f(t_region[:, :, ::-1])
    other, _ = L.esvit_loss(f(s_view), f(t_view), f(center), 0.1, 0.07, [f(x) for x in s_region],
                            [f(x) for x in s_feat], shuffled, f(t_feat), f(center_grid))
    assert abs(float(other) - float(got)) > 1e-3


def test_region_on_content_tokens_equals_numpy(crops):
    """esvit.region_min_std: only valid student tokens count, matched only to valid teacher tokens;
    a row without valid teacher tokens adds 0."""
    s_view, t_view, center, s_region, s_feat, t_region, t_feat, center_grid = crops
    rng = np.random.default_rng(1)
    s_valid = [rng.random(x.shape[:2]) < 0.6 for x in s_feat]
    t_valid = rng.random(t_feat.shape[:3]) < 0.5
    t_valid[0, 1] = False   # no content in one teacher crop
    t_valid[1, 0] = [True] + [False] * (t_valid.shape[2] - 1)
    want = numpy_esvit(s_view, t_view, center, 0.1, 0.07, s_region, s_feat, t_region, t_feat, center_grid,
                       s_valid, t_valid)
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    args = (f(s_view), f(t_view), f(center), 0.1, 0.07, [f(x) for x in s_region], [f(x) for x in s_feat],
            f(t_region), f(t_feat), f(center_grid))
    got, _ = L.esvit_loss(*args, student_valid=[jnp.asarray(v) for v in s_valid], teacher_valid=jnp.asarray(t_valid))
    assert float(got) == pytest.approx(want, rel=1e-5)
    everything = L.esvit_loss(*args, student_valid=[jnp.ones(v.shape, bool) for v in s_valid],
                              teacher_valid=jnp.ones(t_valid.shape, bool))[0]
    assert float(everything) == pytest.approx(float(L.esvit_loss(*args)[0]), rel=1e-6)
    assert abs(float(everything) - float(got)) > 1e-3


def test_content_tokens_closed_form():
    """A 4x4 crop in 2x2 cells: flat cells are background, a cell with one bright pixel is content."""
    crops = np.zeros((2, 4, 4, 1), np.float32)
    crops[0, 0, 3] = 1.0          # cell (0, 1): std sqrt(3) / 4 = 0.433
    crops[1] = 0.7                # flat everywhere
    crops[1, 3, 0] = 0.75         # cell (1, 0): std 0.0217
    got = np.asarray(L.content_tokens(jnp.asarray(crops), 4, 0.01))
    np.testing.assert_array_equal(got, [[False, True, False, False], [False, False, True, False]])
    assert not np.asarray(L.content_tokens(jnp.asarray(crops), 4, 0.05))[1].any()
    with pytest.raises(ValueError, match="do not tile"):
        L.content_tokens(jnp.asarray(crops), 3, 0.1)


def test_uniform_predictions_give_log_k():
    k = 512
    zeros = jnp.zeros((4, 2, k))
    loss, _ = L.esvit_loss(zeros, jnp.zeros((2, 2, k)), jnp.zeros((1, k)), 0.1, 0.04)
    assert float(loss) == pytest.approx(math.log(k), rel=1e-6)


def test_schedules_closed_forms():
    spe = 10.0   # steps per epoch
    # teacher temperature: numpy.linspace over the warm-up epochs, then constant
    want = np.concatenate([np.linspace(0.04, 0.07, 30), np.full(70, 0.07)])
    for epoch in (0, 1, 15, 29, 30, 99):
        for offset in (0, 9):
            got = float(L.teacher_temperature(epoch * spe + offset, spe, 0.04, 0.07, 30))
            assert got == pytest.approx(want[epoch], rel=1e-6)
    assert float(L.teacher_temperature(5, spe, 0.04, 0.07, 0)) == pytest.approx(0.07)
    # EMA momentum: 1 - (1 - m0) (cos(pi t / T) + 1) / 2
    total = 1000
    for t in (0, 1, 250, 500, 999, 1000):
        want_m = 1 - (1 - 0.996) * (math.cos(math.pi * t / total) + 1) / 2
        assert float(L.ema_momentum(t, total, 0.996)) == pytest.approx(want_m, abs=1e-7)
    teacher = {"w": jnp.ones(3), "b": jnp.zeros(2)}
    student = {"w": jnp.full(3, 3.0), "b": jnp.ones(2)}
    out = L.ema(teacher, student, jnp.float32(0.9))
    np.testing.assert_allclose(out["w"], 0.9 + 0.1 * 3.0, rtol=1e-6)
    np.testing.assert_allclose(out["b"], 0.1, rtol=1e-6)


def test_center_update_is_the_batch_mean_ema():
    rng = np.random.default_rng(1)
    c = rng.normal(size=(1, 6)).astype(np.float32)
    t = rng.normal(size=(2, 5, 6)).astype(np.float32)
    want = 0.9 * c + 0.1 * t.reshape(-1, 6).mean(0, keepdims=True)
    np.testing.assert_allclose(L.update_center(jnp.asarray(c), jnp.asarray(t), 0.9), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ diagnostics

def _np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_collapse_diagnostics_closed_forms():
    rs = np.random.default_rng(0)
    k, b = 16, 5
    s = rs.standard_normal((4, b, k)).astype(np.float32)
    t = rs.standard_normal((2, b, k)).astype(np.float32)
    c = rs.standard_normal((1, k)).astype(np.float32) * 0.1
    d = L.collapse_diagnostics(jnp.asarray(s), jnp.asarray(t), jnp.asarray(c), 0.1, 0.04)
    q, p = _np_softmax((t - c).astype(np.float64) / 0.04), _np_softmax(s.astype(np.float64) / 0.1)
    h = lambda x: -(x * np.log(x)).sum(-1)  # noqa: E731
    np.testing.assert_allclose(d["teacher_entropy"], h(q).mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d["teacher_batch_entropy"], h(q.reshape(-1, k).mean(0)), rtol=1e-5)
    np.testing.assert_allclose(d["student_entropy"], h(p).mean(), rtol=1e-5)
    np.testing.assert_allclose(d["center_norm"], np.linalg.norm(c), rtol=1e-6)
    # KL(q || p) = CE(q, p) - H(q): the view loss minus the teacher entropy, pair for pair
    view = L.esvit_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(c), 0.1, 0.04)[1]["view"]
    np.testing.assert_allclose(d["kl"], float(view) - h(q).mean(), rtol=1e-4, atol=1e-5)


def test_collapse_diagnostics_uniform_and_one_prototype():
    k = 64
    flat = jnp.zeros((2, 8, k))
    d = L.collapse_diagnostics(jnp.zeros((3, 8, k)), flat, jnp.zeros((1, k)), 0.1, 0.04)
    np.testing.assert_allclose([d["teacher_entropy"], d["teacher_batch_entropy"]], [np.log(k)] * 2, rtol=1e-6)
    np.testing.assert_allclose(d["kl"], 0.0, atol=1e-6)
    one = flat.at[..., 3].set(10.0)  # every sample picks prototype 3
    d = L.collapse_diagnostics(jnp.zeros((3, 8, k)), one, jnp.zeros((1, k)), 0.1, 0.04,
                                    kl=False)
    assert float(d["teacher_entropy"]) < 1e-3 and float(d["teacher_batch_entropy"]) < 1e-3
    assert "kl" not in d
