"""The run's workdir: read before anything is written, written only once the state is ready.

    prior = inspect(config, path)      # reads only; WorkdirError if the workdir cannot be used as asked
    ...                                # restore or init the state: a failure here leaves the disk as it was
    begin(prior, config, resuming)     # the first writes: the directory, environment.jsonl, config.json, old metrics aside

The rules (each printed when it applies):
- a workdir with checkpoints resumes from the newest one that reads back whole
  (checkpoint.restore_newest); damaged newer ones are moved to checkpoints.corrupt/;
- config.init_from initialises a fresh run only. On a workdir with checkpoints it must be the one
  the run was started with (it is then not applied again); another one is refused;
- batch_size cannot change on resume: the data position and every schedule count steps of it;
- metrics.jsonl without checkpoints (they were deleted) is moved aside, not appended to;
- a torn last line of metrics.jsonl (a kill during a write) is dropped when the run resumes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

from vit_jax import environment
from vit_jax import metrics as metrics_lib
from vit_jax.errors import WorkdirError


@dataclasses.dataclass
class Prior:
    """What the workdir held before this run touched it."""
    path: str
    steps: list[int]              # checkpoint steps found (not yet verified)
    config: dict | None           # config.json's values, None when absent or unreadable
    metrics_rows: int             # readable rows of metrics.jsonl
    torn_metrics: bool            # its last line is an incomplete write


def _steps(path: str) -> list[int]:
    """Finished checkpoint steps: orbax's step directories (its temporaries carry a suffix)."""
    directory = os.path.join(path, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(e.name) for e in os.scandir(directory) if e.is_dir() and e.name.isdigit())


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) else None


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, dict):
        return {prefix[:-1]: values}
    out: dict[str, Any] = {}
    for k, v in values.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def config_changes(old: dict | None, new: Any) -> list[str]:
    """"key: old -> new" for every config value that differs (new: a ConfigDict or dict)."""
    if old is None:
        return []
    if not isinstance(new, dict):
        new = json.loads(new.to_json_best_effort())
    a, b = _flat(old), _flat(json.loads(json.dumps(new)))
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
            for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def _writable_root(path: str) -> str:
    """The directory that must be writable: the workdir, or its nearest existing parent."""
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise WorkdirError(f"cannot create --workdir {path}: {existing} is a file; choose another path")
    return existing


def _check_writable(path: str) -> None:
    for d in (_writable_root(path), os.path.join(path, "checkpoints")):
        if os.path.isdir(d) and not os.access(d, os.W_OK | os.X_OK):
            raise WorkdirError(f"--workdir {path}: {d} is not writable; choose a writable --workdir "
                               "(or fix its permissions)")


def inspect(config: Any, path: str, log: Callable[[str], None] = print) -> Prior:
    """Reads the workdir and applies the module's rules; raises WorkdirError naming the fix."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"--workdir {path} is a file, not a directory; give a directory "
                           "(it is created when absent)")
    _check_writable(path)
    steps = _steps(path)
    old = _read_json(os.path.join(path, "config.json"))
    metrics_path = os.path.join(path, "metrics.jsonl")
    try:
        rows, torn = metrics_lib.read_rows(metrics_path)
    except ValueError as e:
        raise WorkdirError(f"{e}; repair or remove that line (the file is not changed)") from e
    prior = Prior(path, steps, old, len(rows), torn)
    if not steps:
        return prior
    if torn:
        log(f"note: the last line of {metrics_path} is incomplete (a run killed while writing it); "
            "it is dropped when this run writes its first row")
    first = f"{path} already has checkpoints (steps {', '.join(map(str, steps[-3:]))})"
    started_from = (old or {}).get("init_from") or ""
    if config.init_from and os.path.abspath(config.init_from) != os.path.abspath(started_from or "/-"):
        was = f"it was started from {started_from}" if started_from else "it was started without init_from"
        raise WorkdirError(
            f"{first}, so it resumes from them, and init_from={config.init_from} would be ignored "
            f"({was}). To resume, drop --config.init_from; to start from {config.init_from}, "
            "use a new --workdir.")
    if config.init_from:
        log(f"note: resuming {path}; init_from={config.init_from} initialised its first run and is "
            "not applied again")
    if old is not None and "batch_size" in old and old["batch_size"] != config.batch_size:
        raise WorkdirError(
            f"{first} trained with batch_size={old['batch_size']}; resuming with "
            f"batch_size={config.batch_size} would replay or skip examples and shift every schedule "
            f"counted in steps. Resume with --config.batch_size={old['batch_size']}, or start a new "
            f"--workdir with --config.init_from={path} to continue from its weights.")
    return prior


def mismatch_error(prior: Prior, config: Any, step: int, differences: list[str]) -> WorkdirError:
    """The error for a resume whose config builds another state than the checkpoints hold."""
    changes = [c for c in config_changes(prior.config, config)
               if c.split(":")[0].split(".")[0] in ("model", "model_name", "objective", "optim", "ema_decay")
               or c.split(":")[0].startswith(prior.config.get("objective", "-") if prior.config else "-")]
    hint = (f" The config differs from {prior.path}/config.json in: {'; '.join(changes[:6])}."
            if changes else "")
    return WorkdirError(
        f"{prior.path} holds checkpoints (step {step}) of another model or method than this config "
        f"builds: {'; '.join(differences[:3])}{' ...' if len(differences) > 3 else '.'}{hint} "
        f"Nothing was changed. Resume with the config the run was started with, or use a new --workdir "
        f"(--config.init_from={prior.path} starts it from these weights).")


def _aside(path: str, stamp: str) -> str:
    root, ext = os.path.splitext(path)
    target = f"{root}.{stamp}{ext}"
    os.replace(path, target)
    return target


def begin(prior: Prior, config: Any, resuming: bool, log: Callable[[str], None] = print) -> None:
    """The run's first writes (process 0): creates the workdir, moves the metrics of deleted
    checkpoints aside, appends this start to environment.jsonl (vit_jax/environment.py) and
    writes config.json (a differing earlier one is kept beside it)."""
    os.makedirs(prior.path, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    metrics_path = os.path.join(prior.path, "metrics.jsonl")
    if not resuming and os.path.exists(metrics_path):
        kept = _aside(metrics_path, stamp)
        log(f"note: {prior.path} has metrics.jsonl but no checkpoint to resume from (deleted?); this run "
            f"starts at step 0 and the old metrics were moved to {kept}")
    env_path = os.path.join(prior.path, "environment.jsonl")
    now = environment.describe(config)
    if resuming:
        changed = environment.decoder_change(environment.last_start(env_path), now)
        if changed:
            log(f"note: the image decoder differs from the one this run started with ({changed}); "
                "JPEG and PNG files may decode to other pixels from here on. To continue with the same "
                "pixels, resume in the environment that environment.jsonl records")
    with open(env_path, "a") as f:
        f.write(json.dumps(now) + "\n")
    path = os.path.join(prior.path, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
        kept = _aside(path, stamp)
        changes = config_changes(prior.config, config)
        log(f"note: the config differs from the one in {prior.path} ({'; '.join(changes[:4]) or 'unreadable'}"
            f"{' ...' if len(changes) > 4 else ''}); the earlier one is kept as {kept}")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
