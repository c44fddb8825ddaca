"""Checkpoints: an orbax CheckpointManager under WORKDIR/checkpoints.

Each checkpoint holds the whole train state (parameters, optimizer state, extra
method state, EMA, step, rng) and the data-iterator state, so a run that is killed
and started again on the same workdir continues exactly. Saves are asynchronous;
orbax writes into a temporary directory and renames it when complete, so a run
killed mid-save leaves the earlier checkpoints as they were.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from vit_jax.errors import CorruptCheckpointError  # noqa: F401  (re-exported)


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


class Checkpointer:
    """Keeps the last `keep` checkpoints of a run; `async_save` overlaps writing with training."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                                                  item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                                                        data=ocp.args.JsonSave(data_state)),
                                            force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores into the shapes, dtypes and shardings of `abstract_state`.

        Raises CorruptCheckpointError naming the directory when the files do not match.
        """
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for unreadable or mismatched files
            raise CorruptCheckpointError(
                    f"cannot restore checkpoint {self.directory}/{step}: {type(e).__name__}: {e}\n"
                    "The checkpoint is unreadable or was written by a different model/config. Start a "
                    "new --workdir, or delete that step directory to resume from an earlier one.") from e
        return out["state"], out["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings, for `restore`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                                            tree, shardings)


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
                                     item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                    "data": ocp.JsonCheckpointHandler()})
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
    return state
