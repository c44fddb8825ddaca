"""Checks a config before anything is compiled, and resolves what the run needs.

`validate(config)` raises ConfigError with a message that names the key and the fix,
or returns a Plan: the objective, the data sources and transforms, the shape of one
example, every duration in steps, the evaluators and the optimizer's lr factors. The model is
traced abstractly (jax.eval_shape), which takes a moment and no compile, so shape errors also
surface here.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np

from vit_jax import durations, objectives, optim
from vit_jax.data import pipeline, sources, train_loader, transforms
from vit_jax.data.device_normalize import DeviceNormalize
from vit_jax.data.info import DataInfo
from vit_jax.errors import ConfigError, UserError  # noqa: F401  (ConfigError re-exported)
from vit_jax.evaluate import evaluators

WIRES = ("float32", "uint8")   # data.wire: what the train batches' images cross to the devices as


@dataclasses.dataclass
class Plan:
    objective: objectives.Objective
    train_source: Any
    train_transform: Callable
    eval_source: Any | None
    eval_transform: Callable | None
    example: dict[str, np.ndarray]  # one transformed training example, no batch axis
    total_steps: int
    info: DataInfo
    steps: dict[str, int]           # durations.all_steps: total, warmup, eval_every, checkpoint_every
    evaluators: list                # evaluate.evaluators.Evaluator, not built yet
    lr_factors: Any | None          # optim.lr_factors (layer decay, freezing)
    # the device's part of the train transform, on the global batch (data.wire="uint8": normalize)
    on_device: Callable[[dict], dict] | None = None


def _fail(msg: str) -> None:
    raise ConfigError(msg)


def _note(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def _check_loader(d) -> None:
    loader = d.get("loader", "threads")
    if loader not in train_loader.LOADERS:
        _fail(f"data.loader={loader!r}: use 'threads' (a thread pool in this process) or 'grain' "
              f"(data.workers worker processes)")
    if not (isinstance(d.workers, int) and d.workers >= 0 and d.get("read_threads", 1) >= 1
            and d.prefetch >= 1 and d.get("device_prefetch", 0) >= 0):
        _fail(f"data.workers={d.workers!r} and data.device_prefetch={d.get('device_prefetch', 0)!r} "
              f"must be ints >= 0, data.read_threads={d.get('read_threads', 1)!r} and "
              f"data.prefetch={d.prefetch!r} >= 1")


def _check_numbers(c) -> None:
    if not (isinstance(c.seed, int) and 0 <= c.seed < 2**32):
        _fail(f"seed={c.seed!r} must be an integer in [0, 2**32)")
    if c.batch_size <= 0:
        _fail(f"batch_size={c.batch_size} must be positive")
    if c.eval_batch_size <= 0:
        _fail(f"eval_batch_size={c.eval_batch_size} must be positive")
    if c.grad_accum_steps < 1 or c.batch_size % c.grad_accum_steps:
        _fail(f"grad_accum_steps={c.grad_accum_steps} must be >= 1 and divide batch_size={c.batch_size}")
    if c.total_steps is not None and c.total_steps < -1:
        _fail(f"total_steps={c.total_steps}: give a positive number, -1 to derive it from num_epochs, "
              "or 0 to evaluate only")
    if c.total_steps in (None, -1) and c.get("total_examples") is None and c.num_epochs is not None \
            and not c.num_epochs > 0:
        _fail(f"num_epochs={c.num_epochs} must be positive when total_steps=-1")
    for key in ("log_every", "eval_every", "checkpoint_every"):
        if c[key] is not None and c[key] < 0:
            _fail(f"{key}={c[key]} must be >= 0 (0 means: only at the end)")
    if c.log_every == 0:
        _fail("log_every must be >= 1")
    if c.keep_checkpoints < 1:
        _fail(f"keep_checkpoints={c.keep_checkpoints} must be >= 1")
    if not 0.0 <= c.ema_decay < 1.0:
        _fail(f"ema_decay={c.ema_decay} must be in [0, 1) (0 turns the EMA off)")
    if c.dtype not in ("float32", "bfloat16"):
        _fail(f"dtype={c.dtype!r}: use 'float32' or 'bfloat16'")
    o = c.optim
    if o.name not in optim.OPTIMIZERS:
        _fail(f"optim.name={o.name!r}: use one of {optim.OPTIMIZERS}")
    if not 0.0 < o.layer_decay <= 1.0:
        _fail(f"optim.layer_decay={o.layer_decay} must be in (0, 1] (1 turns it off)")
    if c.init_from and not os.path.isdir(c.init_from):
        _fail(f"init_from={c.init_from!r} is not a directory: give a vit_jax workdir or its checkpoints/")
    if o.schedule not in optim.SCHEDULES:
        _fail(f"optim.schedule={o.schedule!r}: use one of {sorted(optim.SCHEDULES)}")
    if not (o.lr > 0 and np.isfinite(o.lr)):
        _fail(f"optim.lr={o.lr} must be a positive finite number")
    if (o.warmup_steps or 0) < 0 or o.weight_decay < 0 or o.clip_norm < 0 or o.end_lr < 0:
        _fail("optim.warmup_steps, weight_decay, clip_norm and end_lr must be >= 0")
    if not (0 <= o.start_lr <= o.lr):
        _fail(f"optim.start_lr={o.start_lr} (where the warmup starts) must be in [0, optim.lr={o.lr}]")
    bounds = tuple(o.step_boundaries)
    if o.schedule == "step" and (not all(0 < b <= 1 for b in bounds) or list(bounds) != sorted(bounds)
                                 or not o.step_factor > 0):
        _fail(f"schedule='step' needs optim.step_boundaries as increasing fractions of the run in "
              f"(0, 1] (got {bounds}) and optim.step_factor > 0 (got {o.step_factor})")
    if not (0 <= o.b1 < 1 and 0 <= o.b2 < 1):
        _fail(f"optim.b1={o.b1} and optim.b2={o.b2} must be in [0, 1)")
    if o.clip_mode not in optim.CLIP_MODES:
        _fail(f"optim.clip_mode={o.clip_mode!r}: use 'global' (one norm over all gradients) or "
              "'per_param' (each tensor clipped on its own, as DINO); optim.clip_norm is the threshold")
    # NaN fails both tests; -inf is just another "off" value.
    if not (o.weight_decay_end < 0 or np.isfinite(o.weight_decay_end)):
        _fail(f"optim.weight_decay_end={o.weight_decay_end} must be a finite number >= 0 (cosine from "
              "optim.weight_decay to it over the run) or < 0 (constant weight_decay, e.g. -1)")


def _check_mesh(c) -> None:
    m = c.mesh
    sizes = [m.data, m.fsdp, m.model]
    n = jax.device_count()
    if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        _fail(f"mesh={dict(m)}: sizes must be positive, with at most one -1 (= the remaining devices)")
    known = int(np.prod([s for s in sizes if s != -1]))
    if (-1 in sizes and n % known) or (-1 not in sizes and known != n):
        _fail(f"mesh={dict(m)} does not fit {n} device(s): data*fsdp*model must equal the device count; "
                    "set one of --config.mesh.data/fsdp/model to -1")
    resolved = [n // known if s == -1 else s for s in sizes]
    batch_devices = resolved[0] * resolved[1]
    micro = c.batch_size // c.grad_accum_steps
    if micro % batch_devices:
        _fail(f"batch_size/grad_accum_steps = {micro} is not divisible by the {batch_devices} devices on the "
                    "batch axes (mesh.data*mesh.fsdp); change batch_size or the mesh")
    if c.batch_size % jax.process_count() or c.eval_batch_size % batch_devices:
        _fail(f"batch_size={c.batch_size} must divide by {jax.process_count()} processes and "
                    f"eval_batch_size={c.eval_batch_size} by the {batch_devices} batch devices")


def _transform(spec: str, key: str, info: dict) -> Callable:
    try:
        return transforms.build(spec)
    except (ValueError, SyntaxError, TypeError) as e:
        _fail(f"data.{key}={spec!r}: {e}")


class MethodStep:
    """The data transform, then the method's own per-example host step (`prepare_example`).
    A class rather than a closure so that it pickles, as worker processes receive it."""

    def __init__(self, transform: Callable, objective: objectives.Objective):
        self.transform, self.objective = transform, objective

    def __call__(self, example: dict, rng: np.random.Generator) -> dict:
        return self.objective.prepare_example(self.transform(example, rng), rng)


def _with_method(transform: Callable, objective: objectives.Objective) -> Callable:
    if type(objective).prepare_example is objectives.Objective.prepare_example:  # the default: as is
        return transform
    return MethodStep(transform, objective)


def source_kwargs(data) -> dict:
    """Extra arguments of sources.get_source for a config's `data` section."""
    kw = {}
    # .get: a workdir's config.json may predate the keys
    for key, value, off in (("skip_bad_images", data.get("skip_bad_images"), False),
                            ("decode", data.get("decode", "full"), "full")):
        if value and value != off:
            if not data.name.startswith("folder:"):
                _fail(f"data.{key}={value!r} applies to image folders (data.name='folder:/path'), "
                      f"not to data.name={data.name!r}; remove it")
            kw[key] = value
    if data.data_dir and data.name.startswith("tfds:"):
        kw["data_dir"] = data.data_dir
    return kw


def validate(c) -> Plan:
    """Checks `c` (a ConfigDict) and returns the Plan of the run, or raises ConfigError."""
    _check_numbers(c)
    _check_mesh(c)
    _check_loader(c.data)
    if c.objective not in objectives.names():
        _fail(f"objective={c.objective!r} is unknown; choose one of {objectives.names()}")
    kw = source_kwargs(c.data)
    try:
        train_src = sources.get_source(c.data.name, c.data.train_split, **kw)
        eval_src = sources.get_source(c.data.name, c.data.eval_split, **kw) if c.data.eval_split else None
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise ConfigError(f"data: {e}") from e
    if len(train_src) == 0:
        _fail(f"data: split {c.data.train_split!r} of {c.data.name!r} is empty")
    train_tf = _transform(c.data.train_transform, "train_transform", {})
    eval_tf = _transform(c.data.eval_transform, "eval_transform", {})
    firsts = {}  # key -> its transform applied to the first example of its split
    for key, src, tf, split in (("train_transform", train_src, train_tf, c.data.train_split),
                                ("eval_transform", eval_src, eval_tf, c.data.eval_split)):
        if src is None:
            continue
        at = f" ({pipeline.origin(src, 0)})"
        try:  # an unreadable file is a DataError naming it: passed on as it is
            firsts[key] = tf(dict(src[0]), np.random.default_rng(0))
            at = ""  # mixed_sizes names the file it fails on
            # Mixed sizes (folders): transform one file of each size now, not fail in some batch.
            mixed = pipeline.mixed_sizes(src, lambda ex, tf=tf: tf(ex, np.random.default_rng(0)))
        except UserError:
            raise
        except Exception as e:
            raise ConfigError(f"data.{key}={c.data[key]!r} fails on split {split!r}{at}: "
                              f"{type(e).__name__}: {e}") from e
        if mixed:
            (a, a_hw, a_shape), (b, b_hw, b_shape) = mixed
            _fail(f"data.{key}={c.data[key]!r} gives images of different shapes: {a} "
                  f"({a_hw[0]}x{a_hw[1]}) -> {a_shape} but {b} ({b_hw[0]}x{b_hw[1]}) -> {b_shape}; "
                  + pipeline.SAME_SIZE_FIX.format(keys=f"data.{key}"))
    eval_shape = np.shape(firsts["eval_transform"]["image"]) if eval_src is not None else None
    example = {k: np.asarray(v) for k, v in firsts["train_transform"].items()}
    if example["image"].ndim != 3 or example["image"].dtype != np.float32:
        _fail(f"data.train_transform must end with float32 (H, W, C) images (add normalize), got "
                    f"{example['image'].dtype} {example['image'].shape}")

    if c.data.get("drop_remainder") and c.batch_size > len(train_src):
        _fail(f"data.drop_remainder with batch_size={c.batch_size} > {len(train_src)} training "
              f"examples would drop every example: lower batch_size or set data.drop_remainder=False")
    try:
        steps = durations.all_steps(c, len(train_src), note=_note)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    total = steps["total"]
    if total and steps["warmup"] + steps["cooldown"] > total:
        _fail(f"the warmup (optim.warmup_steps/_epochs/_examples: {steps['warmup']} steps) and the "
              f"cooldown (optim.cooldown_*: {steps['cooldown']} steps) exceed the {total} training steps")
    info = DataInfo(num_classes=int(getattr(train_src, "num_classes", 0) or 0),
                                    image_shape=tuple(example["image"].shape), num_train=len(train_src))
    try:
        objective = objectives.build(c, info)   # a method checks its config here
        # The method's own per-example host step (e.g. EVA's patch masks) follows the data transform.
        train_tf = _with_method(train_tf, objective)
        example = {k: np.asarray(v) for k, v in train_tf(dict(train_src[0]), np.random.default_rng(0)).items()}
        # (a method that makes its own views from the image, e.g. multi-crop, drops "image")
        if eval_shape is not None and "image" in example and eval_shape != example["image"].shape:
            _fail(f"data.eval_transform gives images of shape {eval_shape} but data.train_transform "
                  f"gives {example['image'].shape}; make their sizes agree")
        # Abstract trace of init and loss: catches shape errors (patch size, channels) without compiling.
        # a batch of at least 2 rows and of whole device blocks (losses may pair rows within them)
        rows = 2 * objective.batch_shards
        ex = {k: jax.ShapeDtypeStruct((rows,) + v.shape, v.dtype) for k, v in example.items()}
        rng = jax.ShapeDtypeStruct((2,), np.uint32)
        params, extra = jax.eval_shape(objective.init, rng, {k: jax.ShapeDtypeStruct((1,) + v.shape, v.dtype)
                                                                                                                  for k, v in example.items()})
        if total:  # total_steps == 0 only evaluates
            jax.eval_shape(objective.loss, params, extra, ex, rng, jax.ShapeDtypeStruct((), np.int32))
        factors = optim.lr_factors(c.optim, params, objective.backbone_key,
                                   getattr(objective.backbone, "depth", None))
        planned = evaluators.plan(c, objective, len(train_src), steps["eval_every"], note=_note)
        train_tf, on_device = _wire(c, train_tf, example)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # AttributeError: a missing section
        raise ConfigError(f"{type(e).__name__}: {e}") from e
    return Plan(objective, train_src, train_tf, eval_src,
                (lambda ex, tf=eval_tf: tf(ex, np.random.default_rng(0))), example, total, info,
                steps, planned, factors, on_device)


def _wire(c, train_tf: Callable, example: dict) -> tuple[Callable, Callable[[dict], dict] | None]:
    """data.wire: "float32" sends normalised images; "uint8" the pixels before the final normalize,
    which then runs on the device (vit_jax/data/device_normalize.py)."""
    wire = c.data.get("wire", "float32")   # .get: a workdir's config.json may predate the key
    if wire not in WIRES:
        _fail(f"data.wire={wire!r}: use one of {WIRES}")
    if wire == "float32":
        return train_tf, None
    if not isinstance(train_tf, transforms.SpecTransform):
        _fail(f"data.wire='uint8' with objective={c.objective!r}: the method's own host step "
              f"(prepare_example) works on the normalised image; use data.wire='float32'")
    try:
        host, (mean, std) = train_tf.before_normalize()
    except ValueError as e:
        raise ConfigError(f"data.wire='uint8' sends the pixels before data.train_transform's final "
                          f"normalize, but {e}: use data.wire='float32'") from None
    return host, DeviceNormalize(mean, std, example["image"].shape[-1])
