"""DINO / EsViT losses and schedules as pure functions (facebookresearch/dino, microsoft/esvit).

Crops: 2 global crops (seen by student and teacher) and N local crops (student only). For each
teacher crop iq in {0, 1} and each student crop v != iq:
    view term    CE(p_t[iq], s[v]) = -sum_k softmax((t[iq] - c) / tau_t)_k log_softmax(s[v] / tau_s)_k
    region term  for each student token i of crop v: j* = argmax_j cos(z_s[v]_i, z_t[iq]_j) over the
                 teacher tokens (backbone features); -sum_k p_t[iq]_{j*, k} log_softmax(r_s[v]_i / tau_s)_k
                 with p_t = softmax((r_t - c_grid) / tau_t) from the region head; mean over i.
Each term is averaged over the batch; plain DINO adds the view terms, EsViT 0.5 view + 0.5 region
(as the official code does); the total is divided by the number of (iq, v) pairs, 2 (2 + N - 1).
Centers: c <- m c + (1 - m) mean(teacher outputs of both global crops over the global batch),
after the loss; c_grid the same over all teacher tokens. Under jax.jit a mean over the batch axis
of a batch-sharded array is the global mean, so the centers agree on every device.

Remedies for collapse that are not in the DINO / EsViT papers (options, off in the faithful
recipe): Sinkhorn-Knopp teacher targets instead of centering (DINOv2, `sinkhorn_iters > 0`) and
the KoLeo regulariser on the student's pooled features (DINOv2, `koleo_loss`), and iBOT's masked
patch target (`masked_patch_loss`: the student sees its global crops with masked patches and
predicts the teacher's patch distributions there).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


# ------------------------------------------------------------------------------ schedules

def teacher_temperature(step: Array, steps_per_epoch: float, warmup_temp: float, temp: float,
                        warmup_epochs: int) -> Array:
    """DINO's per-epoch schedule: linspace(warmup_temp, temp, warmup_epochs) over the first epochs
    (epoch e gets warmup_temp + (temp - warmup_temp) e / (warmup_epochs - 1)), then temp."""
    epoch = jnp.floor(jnp.asarray(step, jnp.float32) / steps_per_epoch)
    if warmup_epochs <= 1:
        return jnp.where(epoch < warmup_epochs, warmup_temp, temp).astype(jnp.float32)
    ramp = warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1)
    return jnp.where(epoch < warmup_epochs, ramp, temp).astype(jnp.float32)


def ema_momentum(step: Array, total_steps: int, base: float = 0.996, final: float = 1.0) -> Array:
    """Teacher EMA momentum, cosine from `base` at step 0 to `final` at the last step (per step)."""
    t = jnp.asarray(step, jnp.float32) / max(total_steps, 1)
    return (final - (final - base) * (jnp.cos(jnp.pi * t) + 1.0) / 2.0).astype(jnp.float32)


def ema(teacher, student, momentum: Array):
    """teacher <- m teacher + (1 - m) student, leaf by leaf."""
    return jax.tree.map(lambda t, s: (momentum * t + (1.0 - momentum) * s).astype(t.dtype),
                        teacher, student)


def update_center(center: Array, teacher_out: Array, momentum: float = 0.9) -> Array:
    """(1, K) center <- m c + (1 - m) mean of teacher outputs (..., K) over all leading axes."""
    batch_center = jnp.mean(teacher_out.reshape(-1, teacher_out.shape[-1]), axis=0, keepdims=True)
    return center * momentum + batch_center * (1.0 - momentum)


# ------------------------------------------------------------------------------ teacher targets

def sinkhorn_knopp(scores: Array, iters: int = 3) -> Array:
    """(..., K) teacher scores (logits / tau_t) -> targets (..., K) whose rows each sum to 1 and
    whose columns (prototypes) each get 1/K of the total mass over all leading axes, by `iters`
    alternating normalisations of exp(scores) (SwAV; DINOv2's sinkhorn_knopp_teacher). Over the
    global batch under jax.jit (the sums are global means of a sharded array)."""
    k = scores.shape[-1]
    # in the log domain: exp(scores - max) underflows whole prototype columns to 0 (then 0 / 0) once
    # the teacher temperature is sharp (scores span 2 / tau_t: 200 at tau_t = 0.01)
    log_q = scores.reshape(-1, k).astype(jnp.float32)
    n = log_q.shape[0]
    log_q = log_q - jax.nn.logsumexp(log_q)              # total mass 1 (all that iters=0 does)
    for _ in range(iters):
        log_q = log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - jnp.log(k)   # each prototype: 1/K
        log_q = log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - jnp.log(n)   # each sample: 1/N
    return (jnp.exp(log_q) * n).reshape(scores.shape)


def teacher_probs(teacher_logits: Array, center: Array, tau_t: Array, sinkhorn_iters: int = 0) -> Array:
    """DINO's target softmax((t - c) / tau_t), or with sinkhorn_iters > 0 Sinkhorn-Knopp of t / tau_t
    over all crops and samples (the center unused). No gradient."""
    tau_t = jnp.asarray(tau_t, jnp.float32)
    if sinkhorn_iters > 0:
        q = sinkhorn_knopp(teacher_logits.astype(jnp.float32) / tau_t, sinkhorn_iters)
    else:
        q = jax.nn.softmax((teacher_logits - center) / tau_t, axis=-1)
    return jax.lax.stop_gradient(q)


def koleo_loss(features: Array, eps: float = 1e-8) -> Array:
    """KoLeo (Sablayrolles et al. 2019; DINOv2): -mean_i log(min_{j != i} ||x_i - x_j|| + eps) of
    the L2-normalised rows of features (B, D); it spreads the batch over the sphere."""
    x = _normalize(features.astype(jnp.float32))
    d2 = jnp.sum(x * x, -1)[:, None] + jnp.sum(x * x, -1)[None, :] - 2.0 * x @ x.T
    d2 = jnp.where(jnp.eye(x.shape[0], dtype=bool), jnp.inf, d2)
    nearest = jnp.sqrt(jnp.maximum(jnp.min(d2, axis=1), 0.0))
    return -jnp.mean(jnp.log(nearest + eps))


# ------------------------------------------------------------------------------ losses

def _cross_entropy(teacher_probs: Array, student_logits: Array, tau_s: float) -> Array:
    """-sum_k p_k log_softmax(s / tau_s)_k over the last axis."""
    return -jnp.sum(teacher_probs * jax.nn.log_softmax(student_logits / tau_s, axis=-1), axis=-1)


def _normalize(x: Array) -> Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def region_term(student_region: Array, student_feat: Array, teacher_probs: Array,
                teacher_feat: Array, tau_s: float, student_valid: Array | None = None,
                teacher_valid: Array | None = None) -> Array:
    """(B,) region loss of one (teacher crop, student crop) pair.

    student_region (B, Ts, K) region-head logits, student_feat (B, Ts, P) backbone tokens,
    teacher_probs (B, Tt, K) centred and sharpened teacher region probabilities,
    teacher_feat (B, Tt, P) teacher backbone tokens.
    student_valid (B, Ts) / teacher_valid (B, Tt) bool, None = all (EsViT): only valid student
    tokens count (the mean is over them; an example without one adds 0) and they are matched only
    to valid teacher tokens (`content_tokens`: not flat background).
    """
    sim = jnp.einsum("bsp,btp->bst", _normalize(student_feat.astype(jnp.float32)),
                     _normalize(teacher_feat.astype(jnp.float32)))
    if teacher_valid is not None:
        sim = jnp.where(teacher_valid[:, None, :], sim, -jnp.inf)
    best = jnp.argmax(sim, axis=-1)                                        # (B, Ts)
    matched = jnp.take_along_axis(teacher_probs, best[..., None], axis=1)  # (B, Ts, K)
    ce = _cross_entropy(matched, student_region, tau_s)                    # (B, Ts)
    if student_valid is None and teacher_valid is None:
        return jnp.mean(ce, axis=-1)
    w = jnp.ones(ce.shape, jnp.float32) if student_valid is None else student_valid.astype(jnp.float32)
    if teacher_valid is not None:
        w = w * jnp.any(teacher_valid, axis=-1, keepdims=True).astype(jnp.float32)
    return jnp.sum(ce * w, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1.0)


def content_tokens(crops: Array, num_tokens: int, min_std: float) -> Array:
    """(N, H, W, C) crops -> (N, T) bool: the tokens whose cell of the crop (a row-major grid of T
    equal cells, e.g. 7x7 for 49 tokens of a 28 px crop) has pixel std > min_std, i.e. holds some
    content rather than flat background. Not in EsViT (a remedy, `esvit.region_min_std`)."""
    n, h, w, c = crops.shape
    gh = int(round((num_tokens * h / w) ** 0.5))
    gw = num_tokens // gh
    if gh * gw != num_tokens or h % gh or w % gw:
        raise ValueError(f"{num_tokens} tokens do not tile a {h}x{w} crop into equal cells.")
    cells = crops.astype(jnp.float32).reshape(n, gh, h // gh, gw, w // gw, c)
    return (jnp.std(cells, axis=(2, 4, 5)) > min_std).reshape(n, num_tokens)


def esvit_loss(student_view: Array, teacher_view: Array, center: Array, tau_s: float, tau_t: Array,
               student_region: list[Array] | None = None, student_feat: list[Array] | None = None,
               teacher_region: Array | None = None, teacher_feat: Array | None = None,
               center_grid: Array | None = None, sinkhorn_iters: int = 0,
               student_valid: list[Array] | None = None, teacher_valid: Array | None = None
               ) -> tuple[Array, dict[str, Array]]:
    """The DINO (region args None) or EsViT loss over all crop pairs; see the module docstring.

    student_view (V, B, K): view-head logits of every crop, the 2 global crops first.
    teacher_view (2, B, K): teacher view-head logits of the global crops.
    student_region / student_feat: per crop v, (B, Ts_v, K) and (B, Ts_v, P) (resolutions differ).
    teacher_region (2, B, Tt, K), teacher_feat (2, B, Tt, P).
    sinkhorn_iters > 0: Sinkhorn-Knopp targets instead of centering (`teacher_probs`).
    student_valid (per crop v, (B, Ts_v)) / teacher_valid (2, B, Tt) bool: the region term on
    content tokens only (`region_term`); None: every token (EsViT).
    Returns (loss, {"view": mean view term, "region": mean region term}).
    """
    q = teacher_probs(teacher_view, center, tau_t, sinkhorn_iters)
    regions = student_region is not None
    if regions:
        q_grid = teacher_probs(teacher_region, center_grid, tau_t, sinkhorn_iters)
        teacher_feat = jax.lax.stop_gradient(teacher_feat)
    total, views, grids, pairs = 0.0, 0.0, 0.0, 0
    for iq in range(teacher_view.shape[0]):
        for v in range(student_view.shape[0]):
            if v == iq:
                continue
            view = jnp.mean(_cross_entropy(q[iq], student_view[v], tau_s))
            views += view
            if regions:
                grid = jnp.mean(region_term(
                    student_region[v], student_feat[v], q_grid[iq], teacher_feat[iq], tau_s,
                    None if student_valid is None else student_valid[v],
                    None if teacher_valid is None else teacher_valid[iq]))
                grids += grid
                total += 0.5 * view + 0.5 * grid
            else:
                total += view
            pairs += 1
    return total / pairs, {"view": views / pairs, "region": grids / pairs if regions else jnp.zeros(())}


def masked_patch_loss(student_patch: Array, teacher_patch_probs: Array, mask: Array, tau_s: float) -> Array:
    """iBOT's masked-image-modelling term (Zhou et al. 2022), the mean over the global crops v of

        mean_b [ sum_{i masked in (v, b)} CE(q_t[v, b, i], s[v, b, i]) / max(#masked in (v, b), 1) ]

    student_patch (V, B, L, K): patch logits of the student's MASKED crops; teacher_patch_probs
    (V, B, L, K): the teacher's centred, sharpened targets on the same crops unmasked (position by
    position: the same crop, not the other one, as iBOT pairs them); mask (V, B, L) bool. A crop
    without masked patches adds 0 to its batch mean."""
    ce = _cross_entropy(teacher_patch_probs, student_patch, tau_s)                 # (V, B, L)
    m = mask.astype(jnp.float32)
    per_crop = jnp.sum(ce * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)    # (V, B)
    return jnp.mean(jnp.mean(per_crop, axis=-1))


# ------------------------------------------------------------------------------ diagnostics

def _entropy(p: Array) -> Array:
    """-sum_k p_k log p_k over the last axis (0 log 0 = 0)."""
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def collapse_diagnostics(student_logits: Array, teacher_logits: Array, center: Array, tau_s: float,
                         tau_t: Array, kl: bool = True, sinkhorn_iters: int = 0) -> dict[str, Array]:
    """DINO's collapse checks for one head, from the loss's own inputs.

    student_logits (V, B, K) or (V, B, T, K), teacher_logits (2, B, ...K), center (1, K).
    teacher_entropy: mean over samples of H(q), q = softmax((t - c) / tau_t): ln K for a uniform
      teacher (the centring won), -> 0 for a sharp one;
    teacher_batch_entropy: H of the batch-mean q: -> 0 when every sample picks one prototype (collapse);
    student_entropy: mean H(p), p = softmax(s / tau_s);
    kl: mean over the loss's (teacher crop, other student crop) pairs of KL(q || p) = CE(q, p) - H(q),
      position by position (so not for region tokens, which the loss matches by similarity: kl=False);
    center_norm: ||c||. q is the loss's target (`teacher_probs`, Sinkhorn-Knopp if sinkhorn_iters).
    """
    q = teacher_probs(teacher_logits, center, tau_t, sinkhorn_iters)
    log_p = jax.nn.log_softmax(student_logits / tau_s, axis=-1)
    k = q.shape[-1]
    out = {"teacher_entropy": jnp.mean(_entropy(q)),
           "teacher_batch_entropy": _entropy(jnp.mean(q.reshape(-1, k), axis=0)),
           "student_entropy": jnp.mean(_entropy(jnp.exp(log_p))),
           "center_norm": jnp.linalg.norm(center)}
    if kl:
        kls = [jnp.mean(jnp.sum(q[iq] * (jnp.log(jnp.maximum(q[iq], 1e-30)) - log_p[v]), axis=-1))
               for iq in range(q.shape[0]) for v in range(log_p.shape[0]) if v != iq]
        out["kl"] = sum(kls) / len(kls)
    return out

