"""Command line: `python -m vit_jax.main --config configs/NAME.py[:ARG] --workdir DIR [--config.key=value]`.

Multi-host: pass --multihost (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID) and every process runs the same command line; jax.distributed.initialize
is called before anything touches a device.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vit_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file, e.g. configs/quickstart.py[:ARG]",
                                                                                    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config.json, metrics.jsonl, checkpoints/.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pods, SLURM, "
                                                              "or the JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID variables).")


def maybe_initialize_distributed(force: bool = False) -> None:
    """jax.distributed.initialize from the flag or the environment; a no-op for one process."""
    import jax
    env = {k: os.environ.get(k) for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
    if all(env.values()):
        jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                                                              num_processes=int(env["JAX_NUM_PROCESSES"]),
                                                              process_id=int(env["JAX_PROCESS_ID"]))
    elif force:
        jax.distributed.initialize()  # auto-detects TPU pods, SLURM, ...


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("both --config and --workdir are required")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    maybe_initialize_distributed(_MULTIHOST.value)
    from vit_jax import train  # after distributed init: importing jax modules may touch devices
    try:
        train.run(_CONFIG.value, _WORKDIR.value)
    except UserError as e:  # a message that says what to do; anything else is a bug (traceback)
        print(f"{e.prefix}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def entry() -> None:
    app.run(main)


if __name__ == "__main__":
    entry()
