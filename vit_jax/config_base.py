"""The defaults every config starts from; a config file overrides what its recipe needs.

All keys exist here, so a misspelt `--config.key=value` is an error, not a silent no-op.
A method's section is config.<objective name>, with its defaults from the method itself: a
config file writes `c.mae = objectives.default_config("mae")` (a config without the section
gets the defaults). Durations take one unit each (vit_jax/durations.py: *_steps, *_epochs,
*_examples; unset keys are None). Evaluators are named in config.evals
(vit_jax/evaluate/evaluators.py).
"""
from __future__ import annotations

import importlib.util
import json
import os

import ml_collections as mlc

from vit_jax import durations, models
from vit_jax.errors import ConfigError


def base_config() -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 0
    c.objective = "supervised"
    c.model_name = "vit_tiny_patch16_224"
    c.model = mlc.ConfigDict()        # overrides of the model's fields, e.g. depth, drop_path_rate
    c.init_from = ""                  # a vit_jax workdir (or its checkpoints/): start from its backbone

    c.data = mlc.ConfigDict(dict(
            name="mnist5k",               # mnist5k | digits | tfds:NAME | folder:/path
            train_split="train",
            eval_split="test",            # "" turns evaluation off
            data_dir="",                  # tfds data_dir ("" = tfds default)
            # folders: False stops at an unreadable image with its name; True replaces it by the
            # next readable file (a note names each skipped file once)
            skip_bad_images=False,
            # folders: "draft" reads a file's header with the row and decodes it in a first
            # rrc / resize op at the JPEG scale (1/2, 1/4, 1/8) its output needs (image_decode.py)
            decode="full",
            # big_vision-style transform strings, see vit_jax/data/transforms.py
            train_transform="normalize('mnist')",
            eval_transform="normalize('mnist')",
            loader="threads",             # threads | grain (vit_jax/data/train_loader.py)
            workers=4,                    # threads: host threads; grain: worker processes
            read_threads=1,               # grain: threads in each worker
            prefetch=2,                   # batches in flight (grain: per worker)
            device_prefetch=2,            # batches put on the devices ahead by a thread (0: off)
            # what train images cross to the devices as: "float32" (normalised on the host) or
            # "uint8" (the pixels; the transform's final normalize runs on the device)
            wire="float32",
            # True: floor(N / B) steps per epoch, each epoch a fresh permutation and its last
            # partial batch dropped (DINO's loader); durations in epochs count such epochs
            drop_remainder=False,
    ))
    c.batch_size = 128                # global batch (all processes, all devices)
    c.eval_batch_size = 256
    c.grad_accum_steps = 1            # microbatches per step; batch_size is split over them
    c.total_steps = -1                # -1: from num_epochs / total_examples; 0: evaluate only
    c.num_epochs = mlc.config_dict.placeholder(float)   # unset: 10 epochs
    c.total_examples = mlc.config_dict.placeholder(int)

    c.optim = mlc.ConfigDict(dict(
            name="adamw", lr=1e-3, schedule="cosine", end_lr=0.0,
            **durations.placeholders("warmup"),   # warmup_steps | warmup_epochs | warmup_examples
            start_lr=0.0,                 # the warmup starts here (timm's warmup_lr)
            # the last steps hold the schedule's end (timm's cooldown_epochs at min_lr)
            **durations.placeholders("cooldown"),  # cooldown_steps | cooldown_epochs | cooldown_examples
            step_boundaries=(0.5, 0.75), step_factor=0.1,   # schedule="step": lr *= factor at these fractions of the run
            b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, clip_norm=1.0,
        layer_decay=1.0,              # < 1: layer-wise lr decay (MAE/BEiT fine-tuning)
        trust_coefficient=0.001,      # LARS only
        clip_mode="global",           # global | per_param (DINO: each tensor's grad clipped to clip_norm alone)
        weight_decay_end=-1.0,        # >= 0: cosine from weight_decay to this over the run (DINO); < 0: constant
        freeze="",                    # regex: leaves whose path matches from its start get lr 0 ("backbone/")
    ))
    c.ema_decay = 0.0                 # > 0 keeps an EMA of the parameters, evaluated as eval/<split>_ema
    c.dtype = "float32"               # compute dtype: float32 | bfloat16 (parameters stay float32)

    c.mesh = mlc.ConfigDict(dict(data=-1, fsdp=1, model=1))
    c.log_every = 50
    # every evaluator runs at eval_every unless it gives its own every_*; 0: only at the end
    c.update(durations.placeholders("eval_every"))        # unset: 500 steps
    c.update(durations.placeholders("checkpoint_every"))  # unset: 500 steps
    c.evals = mlc.ConfigDict({"metrics": {"type": "metrics"}})   # eval/<eval_split>/<metric>
    c.keep_checkpoints = 3
    c.async_checkpoints = True
    c.tensorboard = True
    c.progress = True                 # print a progress line at each log step
    return c


def load_config_file(path: str, arg: str | None = None) -> mlc.ConfigDict:
    """`get_config(arg)` of a config file, as `--config path[:arg]` would load it (notebooks, tests).
    A ":ARG" suffix on `path` is the argument when `arg` is None (ARG may itself be a path:
    "configs/mnist5k/finetune.py:workdirs/mae")."""
    if arg is None and not os.path.isfile(path) and ".py:" in path:
        path, arg = path.split(".py:", 1)
        path += ".py"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist.")
    spec = importlib.util.spec_from_file_location(f"vit_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


def read_config_json(path: str) -> dict:
    """The JSON object in a run's config.json; a ConfigError naming the file when it is missing,
    unreadable, not JSON (a run killed while writing it) or not an object."""
    try:
        with open(path, "rb") as f:
            values = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path} does not exist: {os.path.dirname(path)} is not a vit_jax workdir "
                          "(no config.json); point at a run's workdir") from e
    except OSError as e:
        raise ConfigError(f"{path} cannot be read ({e.strerror or e}); check its permissions") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        if isinstance(e, json.JSONDecodeError):
            # json's messages may end in " at" ("Unterminated string starting at"): the position follows
            what = f"{e.msg.removesuffix(' at').removesuffix(' starting')} at line {e.lineno} column {e.colno}"
        else:
            what = f"not UTF-8 at byte {e.start}"
        raise ConfigError(f"{path}: {what}: the workdir's config.json is not valid JSON (truncated?); "
                          "restore it or point at another run") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path} holds a JSON {type(values).__name__}, not the object of a run's "
                          "config; restore it or point at another run")
    return values


def backbone_of_run(c: mlc.ConfigDict, workdir: str) -> mlc.ConfigDict:
    """Sets c.init_from = workdir and c.model_name / c.model to the backbone that run trained
    (from its config.json), so an evaluation config fits any pre-training run (ViT, Swin, CvT).
    A workdir without config.json is left to validation (init_from must exist)."""
    c.init_from = workdir
    path = os.path.join(workdir, "config.json")
    if workdir and os.path.isfile(path):
        run = read_config_json(path)   # a truncated file fails naming it, not as bare JSON
        c.model_name = run["model_name"]
        model, _ = models.upgrade_fields(run.get("model", {}))   # older runs' field names
        c.model = mlc.ConfigDict({k: v for k, v in model.items()
                                  if k not in ("num_classes", "drop_path_rate", "dropout")})
    return c


# The small-data recipes (configs/mnist5k/*) share one backbone so that pre-training,
# fine-tuning, linear probe and k-NN all talk about the same network.
MNIST5K_MODEL_NAME = "vit_tiny_patch4_28"
MNIST5K_MODEL = dict(width=128, depth=6, num_heads=4, mlp_dim=256)
# The digits' training augmentations for the from-scratch rows: random 2-pixel shifts, or
# LeCun-style affine warps (vit_jax/data/random_affine.py: +-10 degrees, +-10% shifts, scale
# 0.9-1.1), the invariances 4,000 digits cannot show on their own.
MNIST5K_AUGS = {"shift": "pad_crop(28, 2)|normalize('mnist')",
                "affine": "random_affine(10, (0.1, 0.1), (0.9, 1.1))|normalize('mnist')",
                # wider warps: +-15 degrees, scale 0.85-1.15, shear 10 (CCT's shipped recipe)
                "affine15": "random_affine(15, (0.1, 0.1), (0.85, 1.15), 10)|normalize('mnist')"}


def parse_config_arg(arg: str, **options: tuple[object, tuple | None]) -> dict[str, object]:
    """A config file's ARG "value,key=value,...", checked: options maps key -> (default, allowed);
    allowed () takes any int >= 0, None any string. A bare value sets the first key whose allowed
    values hold it, else the first free-string key.

    parse_config_arg("vit_lite,seed=1", model=("cct", ("cct", "vit_lite")), seed=(0, ()))
    -> {"model": "vit_lite", "seed": 1}
    """
    out = {k: default for k, (default, _) in options.items()}
    usage = ",".join(f"{k}=" + ("PATH" if allowed is None else "|".join(map(str, allowed)) or "N")
                     for k, (_, allowed) in options.items())
    free = next((k for k, (_, allowed) in options.items() if allowed is None), "")
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            key = next((k for k, (_, allowed) in options.items() if allowed and part in allowed), free)
            value = part
        if key not in options:
            raise ConfigError(f"config ARG {arg!r}: {part!r} is not an option; use {usage}")
        allowed = options[key][1]
        if allowed is None:
            out[key] = value
            continue
        if allowed and value not in allowed or not allowed and not value.isdigit():
            raise ConfigError(f"config ARG {arg!r}: {key}={value!r}; use {usage}")
        out[key] = value if allowed else int(value)
    return out


def mnist5k_config() -> mlc.ConfigDict:
    """base_config() on mnist5k with the shared small-data ViT (7x7 grid of 4x4 patches)."""
    c = base_config()
    c.data.name = "mnist5k"
    c.data.train_transform = "pad_crop(28, 2)|normalize('mnist')"
    c.data.eval_transform = "normalize('mnist')"
    c.data.workers = 2
    c.model_name = MNIST5K_MODEL_NAME
    c.model = mlc.ConfigDict(dict(MNIST5K_MODEL))
    c.batch_size = 128
    c.eval_batch_size = 512
    return c


def cifar10_config(data_dir: str = "") -> mlc.ConfigDict:
    """base_config() on tfds cifar10 (array_record, prepared by the user: 50,000 train / 10,000
    test images at 32 px), normalised with CIFAR-10's statistics, batch 128."""
    c = base_config()
    c.data.name = "tfds:cifar10"
    c.data.data_dir = data_dir
    c.data.eval_split = "test"
    c.data.train_transform = "pad_crop(32, 4)|flip|normalize('cifar10')"
    c.data.eval_transform = "normalize('cifar10')"
    c.data.workers = 8
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.log_every = 100
    c.eval_every_epochs = 10
    c.checkpoint_every_epochs = 10
    return c


def imagenet_config(data_dir: str = "") -> mlc.ConfigDict:
    """base_config() on tfds imagenet2012 (array_record, prepared by the user) at 224 px."""
    c = base_config()
    c.data.name = "tfds:imagenet2012"
    c.data.data_dir = data_dir
    c.data.eval_split = "validation"
    c.data.train_transform = "rrc(224)|flip|normalize('imagenet')"
    c.data.eval_transform = "resize_center_crop(224, crop_pct=0.875)|normalize('imagenet')"
    # an accelerator host: worker processes (not threads under one GIL) and uint8 over PCIe
    # (BENCHMARKS.md, "Input pipeline alone": both double the JPEG pipeline's rate)
    c.data.loader = "grain"
    c.data.workers = 32
    c.data.wire = "uint8"
    c.eval_batch_size = 1024
    c.log_every = 100
    c.eval_every = 5000
    c.checkpoint_every = 2000
    c.dtype = "bfloat16"
    return c
