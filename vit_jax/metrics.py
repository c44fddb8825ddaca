"""Run logging: WORKDIR/metrics.jsonl, an optional TensorBoard writer, a progress line.

metrics.jsonl holds one JSON object a line, each with `step` and metric names
(`train/loss`, `eval/<split>/<metric>`, ...). On resume from step S the rows after S
(written by the interrupted run, and about to be written again) are dropped, lazily at
the first new write, so a run that fails before writing keeps the file untouched.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any


def _clean(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


def read_rows(path: str) -> tuple[list[dict], bool]:
    """(rows, torn) of a metrics.jsonl: `torn` when its last line is an incomplete write (a run
    killed mid-line), which is left out. Raises ValueError naming the line for any other bad line."""
    if not os.path.exists(path):
        return [], False
    with open(path) as f:
        lines = [(i, line) for i, line in enumerate(f, 1) if line.strip()]
    rows, torn = [], False
    for k, (i, line) in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if k == len(lines) - 1:
                torn = True
                break
            raise ValueError(f"{path}:{i} is not a metrics row ({e})") from None
        rows.append(row)
    return rows, torn


def read_jsonl(path: str) -> list[dict]:
    """The rows of a metrics.jsonl (see read_rows; a torn last line is left out)."""
    return read_rows(path)[0]


class MetricWriter:
    """Appends rows to metrics.jsonl (process 0 only) and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, resume_step: int | None = None, enabled: bool = True,
                              tensorboard: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self._truncate_after = resume_step
        self._tb = None
        if enabled and tensorboard:
            try:  # optional dependency
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                pass

    def _truncate(self) -> None:
        rows = [r for r in read_jsonl(self.path) if r.get("step", 0) <= self._truncate_after]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, self.path)
        self._truncate_after = None

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._truncate_after is not None:
            self._truncate()
        row = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A one-line progress report: step, loss, images/s and ETA."""

    def __init__(self, total_steps: int, global_batch: int, enabled: bool = True):
        self.total, self.batch, self.enabled = total_steps, global_batch, enabled
        self._t, self._step = None, None

    def rate(self, step: int) -> tuple[float, float]:
        """(images/s, seconds/step) since the previous call; (nan, nan) on the first."""
        now = time.perf_counter()
        out = (math.nan, math.nan)
        if self._t is not None and step > self._step:
            dt = (now - self._t) / (step - self._step)
            out = (self.batch / dt, dt)
        self._t, self._step = now, step
        return out

    def reset_clock(self, step: int) -> None:
        """Excludes a pause (evaluation, checkpointing) from the rate."""
        self._t, self._step = time.perf_counter(), step

    def line(self, step: int, metrics: dict[str, Any], images_per_sec: float, step_time: float) -> None:
        if not self.enabled:
            return
        eta = (self.total - step) * step_time if math.isfinite(step_time) else math.nan
        eta_s = "?" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        loss = metrics.get("train/loss", math.nan)
        ips = "?" if not math.isfinite(images_per_sec) else f"{images_per_sec:,.0f}"
        print(f"[step {step:>6}/{self.total}] loss {loss:.4f}  {ips} img/s  ETA {eta_s}", flush=True)
        sys.stdout.flush()
