"""Checkpoints: an orbax CheckpointManager under WORKDIR/checkpoints.

Each checkpoint holds the whole train state (parameters, optimizer state, extra
method state, EMA, step, rng), the data-iterator state and a digest of every array
(`digests`), so a run that is killed and started again on the same workdir continues
exactly, and a checkpoint whose files were damaged is detected instead of restored as
garbage. Saves are asynchronous; orbax writes into a temporary directory and renames it
when complete, so a run killed mid-save leaves the earlier checkpoints as they were.

`restore_newest` is the resume rule: the newest checkpoint that reads back and matches its
digests; damaged newer ones are reported (and moved aside by the caller, `move_aside`).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vit_jax.errors import CorruptCheckpointError  # noqa: F401  (re-exported)
from vit_jax.trees import path_str

CORRUPT_DIR = "checkpoints.corrupt"  # beside checkpoints/: damaged steps, kept for inspection


# -- digests ----------------------------------------------------------------------------

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _leaf_digest(x: jax.Array) -> jax.Array:
    """A uint32 checksum of an array's bits: sum_i bits_i * w_i (mod 2**32) with odd weights w_i
    from the flat position, so any one changed element always changes it (odd numbers are
    invertible mod 2**32) and more changes do with probability 1 - 2**-32. Integer sums are exact,
    so the value does not depend on the sharding or the reduction order."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    bits = jax.lax.bitcast_convert_type(x, _UINT[size] if size in _UINT else jnp.uint32)
    bits = bits.astype(jnp.uint32)  # 64-bit types gained a trailing axis of 2 words
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):  # the flat position, without reshaping a sharded array
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride)
        stride *= bits.shape[axis]
    weights = (index * jnp.uint32(2654435761) + jnp.uint32(0x9E3779B9)) | jnp.uint32(1)
    return jnp.sum(bits * weights, dtype=jnp.uint32)


_digest_tree = jax.jit(lambda tree: jax.tree.map(_leaf_digest, tree))


def digests(tree: Any) -> dict[str, int]:
    """{"params/blocks_0/attn/query/kernel": checksum, ...} of every array in `tree`."""
    values = jax.device_get(_digest_tree(tree))
    return {path_str(p): int(v) for p, v in jax.tree_util.tree_leaves_with_path(values)}


def failed_digests(tree: Any, saved: dict[str, int], prefix: str = "") -> list[str]:
    """The paths of `tree` (under `prefix` in `saved`'s names) whose digest differs from `saved`."""
    now = digests(tree)
    return [name for name, value in now.items()
            if saved.get(prefix + name, value) != value]


@contextlib.contextmanager
def _quiet_absl():
    """Hides orbax's warnings that a read-only manager is read-only (three lines per read)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _item_handlers(partial: bool = False) -> dict:
    """The handlers of a checkpoint's items (`partial`: the pytree handler that can restore a subtree)."""
    return {"state": ocp.PyTreeCheckpointHandler() if partial else ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(), "digests": ocp.JsonCheckpointHandler()}


class Checkpointer:
    """Keeps the last `keep` checkpoints of a run; `async_save` overlaps writing with training."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, read_only: bool = False):
        """`read_only` opens an existing directory for restoring only: nothing is created or cleaned."""
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        with _quiet_absl():  # (the options of a read-only manager log three warnings)
            if read_only:
                options = ocp.CheckpointManagerOptions(read_only=True)
            else:
                options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                       enable_async_checkpointing=async_save,
                                                       cleanup_tmp_directories=True)
            self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                 item_handlers=_item_handlers())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data_state),
                                                        digests=ocp.args.JsonSave(digests(state))),
                          force=True)

    def saved_digests(self, step: int) -> dict[str, int] | None:
        """The digests saved with `step`; None for a checkpoint written before digests existed."""
        if not os.path.isdir(os.path.join(self.directory, str(step), "digests")):
            return None
        with _quiet_absl():
            return self.manager.restore(step, args=ocp.args.Composite(
                digests=ocp.args.JsonRestore()))["digests"]

    def differences(self, step: int, abstract_state: Any) -> list[str]:
        """How the arrays stored at `step` differ from `abstract_state` ([] when they fit): paths
        missing on either side, or of another shape. Reads metadata only."""
        meta = self.manager.item_metadata(step)["state"]
        meta = getattr(meta, "tree", meta)
        stored = {path_str(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(meta)}
        wanted = {path_str(p): tuple(np.shape(x))
                  for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
        order = lambda k: (not k.startswith("params/"), k)  # noqa: E731  (the model's arrays first)
        out = [f"{k}: {stored[k]} in the checkpoint, {wanted[k]} now"
               for k in sorted(stored.keys() & wanted.keys(), key=order) if stored[k] != wanted[k]]
        out += [f"{k}: only in the checkpoint" for k in sorted(stored.keys() - wanted.keys(), key=order)]
        out += [f"{k}: not in the checkpoint" for k in sorted(wanted.keys() - stored.keys(), key=order)]
        return out

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores into the shapes, dtypes and shardings of `abstract_state` and checks the digests.

        Raises CorruptCheckpointError naming the directory and what failed.
        """
        where = f"{self.directory}/{step}"
        try:
            saved = self.saved_digests(step)
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for unreadable files
            first = str(e).splitlines()[0] if str(e) else ""
            raise CorruptCheckpointError(f"cannot read {where}: {type(e).__name__}: "
                                         f"{first[:120]}{'...' if len(first) > 120 else ''}") from e
        if saved is not None:
            bad = failed_digests(out["state"], saved)
            if bad:
                raise CorruptCheckpointError(
                    f"{where} fails its digests in {len(bad)} array(s) ({', '.join(bad[:3])}"
                    f"{', ...' if len(bad) > 3 else ''}): its files were changed after the save")
        return out["state"], out["data"]

    def move_aside(self, steps: list[int]) -> list[str]:
        """Moves the step directories out of checkpoints/ into checkpoints.corrupt/ (kept, not
        deleted, so a new save of the same step cannot clash with them); returns the new paths."""
        target_root = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)
        os.makedirs(target_root, exist_ok=True)
        moved = []
        for step in steps:
            target = os.path.join(target_root, str(step))
            n = 1
            while os.path.exists(target):
                target, n = os.path.join(target_root, f"{step}.{n}"), n + 1
            os.replace(os.path.join(self.directory, str(step)), target)
            moved.append(target)
        self.manager.reload()
        return moved

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings, for `restore`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                                            tree, shardings)


class StateMismatch(Exception):
    """The checkpoint holds a state of another shape (another model, objective or optimizer)."""

    def __init__(self, step: int, differences: list[str]):
        super().__init__(f"step {step}: " + "; ".join(differences[:4]))
        self.step, self.differences = step, differences


def restore_newest(ckpt: Checkpointer, steps: list[int], abstract_state: Any
                   ) -> tuple[int, Any, dict, dict[int, str]]:
    """The newest of `steps` (the step directories found) that reads back whole: (step, state,
    data_state, {damaged newer step: why}). Raises StateMismatch when the newest readable checkpoint holds a differently
    shaped state (a config change: no older one would fit either), CorruptCheckpointError when
    no checkpoint can be restored."""
    damaged: dict[int, str] = {}
    for step in sorted(steps, reverse=True):
        try:
            differences = ckpt.differences(step, abstract_state)
        except Exception as e:  # unreadable metadata
            damaged[step] = f"unreadable metadata ({type(e).__name__})"
            continue
        if differences:
            raise StateMismatch(step, differences)
        try:
            state, data = ckpt.restore(step, abstract_state)
        except CorruptCheckpointError as e:
            damaged[step] = str(e)
            continue
        return step, state, data, damaged
    raise CorruptCheckpointError(
        f"no checkpoint in {ckpt.directory} can be restored: "
        + "; ".join(f"step {s}: {why}" for s, why in damaged.items())
        + ". Nothing was changed. Restore the files, or move checkpoints/ aside to start again "
        "from step 0 (or use a new --workdir).")


def load_params(workdir_or_dir: str, step: int | None = None,
                path: tuple[str, ...] = ("params",)) -> Any:
    """The parameters of a vit_jax run (for evaluation or fine-tuning), on this process' first device.

    `workdir_or_dir` is a run's workdir or its checkpoints/ directory. Works whatever mesh or
    number of processes wrote the checkpoint, and reads only the subtree at `path` of the state
    (default the trained parameters; ("extra", "teacher", "params") is an EMA teacher's).
    Raises KeyError when the checkpoint has no such subtree.
    """
    directory = workdir_or_dir
    if os.path.isdir(os.path.join(directory, "checkpoints")):
        directory = os.path.join(directory, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints directory at {workdir_or_dir}")
    with _quiet_absl():
        mngr = ocp.CheckpointManager(os.path.abspath(directory),
                                     options=ocp.CheckpointManagerOptions(read_only=True),
                                     item_handlers=_item_handlers(partial=True))
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    try:
        meta = mngr.item_metadata(step)["state"]
    except Exception as e:
        raise CorruptCheckpointError(f"cannot read the metadata of {directory}/{step}: "
                                     f"{type(e).__name__}: {e}") from e
    node = meta
    for key in path:
        if not hasattr(node, "keys") or key not in node.keys():
            raise KeyError(f"{directory}/{step} has no {'/'.join(path)} in its state")
        node = node[key]
    try:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), node)
        for key in reversed(path):
            target = {key: target}
        restore_args = jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=device), target)
        state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            target, restore_args=restore_args, partial_restore=True)))["state"]
    except Exception as e:
        raise CorruptCheckpointError(f"cannot read the parameters of {directory}/{step}: "
                                     f"{type(e).__name__}: {e}") from e
    for key in path:
        state = state[key]
    if os.path.isdir(os.path.join(directory, str(step), "digests")):
        saved = mngr.restore(step, args=ocp.args.Composite(digests=ocp.args.JsonRestore()))["digests"]
        bad = failed_digests(state, saved, prefix="".join(k + "/" for k in path))
        if bad:
            raise CorruptCheckpointError(
                f"{directory}/{step} fails its digests in {len(bad)} array(s) ({', '.join(bad[:3])}): "
                "its files were changed after the save; pass an earlier step or restore the files")
    return state
