"""Command line: `python -m vit_jax.main --config configs/NAME.py[:ARG] --workdir DIR [--config.key=value]`.

Multi-host: pass --multihost (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID) and every process runs the same command line; jax.distributed.initialize
is called before anything touches a device.
"""
from __future__ import annotations

import difflib
import importlib.machinery
import importlib.util
import os
import re
import sys
import sysconfig
import textwrap
import traceback
from typing import Any, NoReturn

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from vit_jax import host_memory
from vit_jax.errors import ConfigError, UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file, e.g. configs/quickstart.py[:ARG]",
                                                                                    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config.json, metrics.jsonl, checkpoints/.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pods, SLURM, "
                                                              "or the JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID variables).")

# Python's own files: a frame there is never where a user's mistake is (see _where).
_LIBRARY_DIRS = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _where(e: BaseException) -> str:
    """' (at FILE:LINE)': the innermost frame of e's traceback outside Python's libraries and
    this file, so a message names the config line (or the vit_jax line, for a bug) at fault."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(_LIBRARY_DIRS + ("<",)) and f.filename != __file__]
    if not frames:
        return ""
    name = os.path.relpath(frames[-1].filename)
    return f" (at {frames[-1].filename if name.startswith('..') else name}:{frames[-1].lineno})"


def _missing_file_message(path: str) -> str:
    near = []
    folder = os.path.dirname(path) or "."
    if os.path.isdir(folder):
        near = difflib.get_close_matches(os.path.basename(path), os.listdir(folder), n=1)
    hint = f"did you mean {os.path.join(os.path.dirname(path), near[0])}?" if near else \
        f"a relative path starts at {os.getcwd()}"
    return f"--config {path}: no such config file ({hint})"


def _load_config_file(path: str, arg: list[str], argument: str) -> Any:
    """get_config(*arg) of the config file `path`; every mistake in the file (missing, syntax,
    an exception while it runs) is a ConfigError that names it."""
    if not os.path.isfile(path):
        raise ConfigError(_missing_file_message(path))
    # as ml_collections loads it: any file name (not only *.py), module name config_config
    loader = importlib.machinery.SourceFileLoader("config_config", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        loader.exec_module(module)
    except SyntaxError as e:
        if not e.filename or not os.path.samefile(e.filename, path):
            raise  # a module it imports is broken: a bug, keep the traceback
        raise ConfigError(f"{path}, line {e.lineno}: syntax error: {e.msg}") from e
    except UserError:
        raise
    except Exception as e:
        raise ConfigError(f"{path} fails to load: {type(e).__name__}: {_one_line(e)}{_where(e)}") from e
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{path} has no get_config() function")
    call = f"get_config({arg[0]!r})" if arg else "get_config()"
    try:
        config = module.get_config(*arg)
    except UserError:
        raise  # already says what is wrong (e.g. the ARG workdir's config.json)
    except Exception as e:
        raise ConfigError(f"{argument}: {call} raised {type(e).__name__}: {_one_line(e)}{_where(e)}") from e
    if config is None:
        raise ConfigError(f"{argument}: {call} returned None (a missing return statement?)")
    return config


def _override_paths(name: str) -> list[str]:
    """The X.Y of every --NAME.X.Y[=value] on the command line, read as ml_collections reads it."""
    argv = flags.FLAGS.read_flags_from_files(sys.argv, force_gnu=False)
    return [a.split("=", 1)[0].split(".", 1)[1] for a in argv
            if re.match(rf"-{{1,2}}(no)?{re.escape(name)}\.", a)]


def _initials(key: str) -> str:
    return "".join(w[0] for w in key.split("_") if w) if "_" in key else ""


def _dotted_keys(node: config_dict.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k in node.keys():
        out.append(prefix + str(k))
        if isinstance(node[k], config_dict.ConfigDict):
            out += _dotted_keys(node[k], f"{prefix}{k}.")
    return out


def _suggestion(config: config_dict.ConfigDict, parents: list[str], key: str) -> str:
    """' (did you mean optim.lr?)' from a close spelling, the initials of the key
    (learning_rate -> lr) or the same key elsewhere; else the keys that exist there."""
    node = config
    for p in parents:
        node = node[p]
    keys = sorted(str(k) for k in node.keys())
    prefix = "".join(f"{p}." for p in parents)
    near = difflib.get_close_matches(key, keys, n=1) or [k for k in keys if k == _initials(key)]
    if near:
        return f" (did you mean {prefix}{near[0]}?)"
    elsewhere = [p for p in _dotted_keys(config) if p.rsplit(".", 1)[-1] in (key, _initials(key))]
    if elsewhere:
        return f" (did you mean {' or '.join(elsewhere[:3])}?)"
    shown = ", ".join(keys[:25]) + (", ..." if len(keys) > 25 else "")
    return f" ({prefix.rstrip('.') or 'the config'} has: {shown})"


def _check_override_keys(config: Any, name: str, argument: str) -> None:
    """A --NAME.key that the config lacks is a ConfigError with a did-you-mean (ml_collections
    raises a bare AttributeError or KeyError from deep inside flag parsing). Keys below a list
    index are left to ml_collections."""
    for path in _override_paths(name):
        node, parents = config, []
        for part in path.split("."):
            if "[" in part:
                break
            if not isinstance(node, config_dict.ConfigDict):
                if hasattr(node, part):  # e.g. a dataclass field, which ml_collections sets
                    node, parents = getattr(node, part), parents + [part]
                    continue
                raise ConfigError(f"--{name}.{path}: {'.'.join(parents)} is {node!r} in {argument}, "
                                  f"so it has no key {part}")
            if part not in node:
                raise ConfigError(f"--{name}.{path}: no such key in {argument}"
                                  f"{_suggestion(config, parents, part)}")
            node, parents = node[part], parents + [part]


class _ConfigFileParser(flags.ArgumentParser):
    """ml_collections' `--config path[:ARG]` parser (ConfigFileFlagParser), with every mistake
    in the file or in a --config.key as a one-line ConfigError. (ml_collections defers a missing
    file to the first use of the config, re-raises get_config's errors with a traceback inside
    the message, or as type(e)(message), which fails for e.g. JSONDecodeError, and lets
    SyntaxError and a misspelt key's AttributeError through as tracebacks.)"""

    def __init__(self, name: str, lock_config: bool = True):
        self.name, self.lock_config = name, lock_config

    def parse(self, argument: str) -> Any:
        path, *arg = argument.split(":", 1)  # as ml_collections: ARG (e.g. a path) may hold colons
        config = _load_config_file(path, arg, argument)
        _check_override_keys(config, self.name, argument)
        if self.lock_config and callable(getattr(config, "lock", None)):
            config.lock()
        return config

    def flag_type(self) -> str:
        return "config object"


# DEFINE_config_file takes no parser; its flag reads the file through this attribute.
flags.FLAGS[_CONFIG.name].parser = _ConfigFileParser(_CONFIG.name, lock_config=True)


def _fail(e: UserError) -> NoReturn:
    print(f"{e.prefix}: {e}", file=sys.stderr)
    sys.exit(e.exit_code)


def _user_error_of(e: flags.Error) -> UserError | None:
    """The user's mistake behind a flag error: a UserError that absl wrapped (it recasts a
    parser's ValueError as IllegalFlagValueError), or a --config.key=value of the wrong type."""
    cause = e.__cause__ or e.__context__  # only the direct one: an older error is not this one
    if isinstance(cause, UserError):
        return cause
    m = re.match(rf"flag --({re.escape(_CONFIG.name)}\.[^=]+)=", str(e))
    if isinstance(e, flags.IllegalFlagValueError) and m and m.group(1) in flags.FLAGS:
        flag, reason = flags.FLAGS[m.group(1)], _one_line(e.__context__ or e)
        value = str(e)[m.end():].removesuffix(f": {e.__context__}")
        kind, key = flag.flag_type(), m.group(1).split(".", 1)[1]
        if kind in ("int", "float", "bool"):  # these flags' default is the config's own value
            reason = f"not a valid {kind} (the config has {key}={flag.default!r})"
        return ConfigError(f"--{m.group(1)}={value}: {reason}")
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parse_flags_with_usage, except that a mistake in --config or a --config.key=value
    prints one line (`config error: ...`, exit code 2) instead of a traceback; --help and
    the other usage errors behave as absl's."""
    try:
        return flags.FLAGS(argv)
    except UserError as e:  # raised by the config file and not a ValueError: absl passed it on
        _fail(e)
    except flags.Error as e:
        user = _user_error_of(e)
        if user is not None:
            _fail(user)
        message = str(e)  # absl's own report of every other flag error
        message = f":\n{textwrap.indent(message, '  ')}" if "\n" in message else f": {message}"
        print(f"FATAL Flags parsing error{message}\nPass --helpshort or --helpfull to see help on flags.",
              file=sys.stderr)
        sys.exit(1)


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
    host_memory.keep_freed_memory()   # before the backend's threads start (host_memory.py)
    maybe_initialize_distributed(_MULTIHOST.value)
    from vit_jax import train  # after distributed init: importing jax modules may touch devices
    try:
        train.run(_CONFIG.value, _WORKDIR.value)
    except UserError as e:  # a message that says what to do; anything else is a bug (traceback)
        _fail(e)
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C while stopping
        print("interrupted: stopped at once; the workdir keeps its last checkpoint (if any); run the "
              "same command to resume", file=sys.stderr)
        sys.exit(130)


def entry() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry()
