"""The one training loop. It knows the mesh, the state, the data and the clock; the method
lives entirely in the objective (vit_jax/objectives) and the evaluations in the evaluators the
config names (vit_jax/evaluate/evaluators.py), so every method trains here unchanged.

    run(config, workdir)  ->  dict of the final metrics

The state is vit_jax/state.py's dict pytree: step, params, opt_state, extra, [ema,] rng.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from vit_jax import checkpoint as ckpt_lib
from vit_jax import init_from, optim, sharding
from vit_jax import metrics as metrics_lib
from vit_jax import state as state_lib
from vit_jax import validate as validate_lib
from vit_jax import workdir as workdir_lib
from vit_jax.data import train_loader
from vit_jax.data.device_prefetch import DevicePrefetch
from vit_jax.data.skipped_files import SkippedFiles
from vit_jax.errors import Interrupted, NonFiniteError, WorkdirError
from vit_jax.evaluate import evaluators as evaluators_lib
from vit_jax.evaluate.context import EvalContext
from vit_jax.objectives import Objective
from vit_jax.trees import subtree


def _is_main() -> bool:
    return jax.process_index() == 0


def _log(msg: str) -> None:
    if _is_main():
        print(msg, flush=True)


# -- the jitted functions ---------------------------------------------------------------

def make_train_step(objective: Objective, tx: optax.GradientTransformation,
                    schedule, accum: int, ema_decay: float):
    """state, batch -> state, metrics. Non-finite loss or gradients leave the state unchanged."""

    def grads_of(params, extra, batch, rng, step):
        def loss_fn(p, e, b, r):
            loss, (metrics, new_extra) = objective.loss(p, e, b, r, step)
            # the loss that is differentiated is the one reported (and checked for NaN)
            return loss, (dict(metrics, loss=loss), new_extra)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if accum == 1:
            (_, (metrics, extra)), grads = grad_fn(params, extra, batch, rng)
            return grads, metrics, extra

        # Microbatch i takes rows i, i+accum, ...: every device keeps a share of every
        # microbatch, so splitting the batch moves no data between devices.
        micro = jax.tree.map(
            lambda x: x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1), batch)

        def body(carry, i_mb):
            grads_sum, extra = carry
            i, mb = i_mb
            (_, (metrics, extra)), grads = grad_fn(params, extra, mb, jax.random.fold_in(rng, i))
            return (jax.tree.map(jnp.add, grads_sum, grads), extra), metrics
        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, extra), metrics = jax.lax.scan(body, (zeros, extra), (jnp.arange(accum), micro))
        grads = jax.tree.map(lambda g: g / accum, grads)
        return grads, jax.tree.map(jnp.mean, metrics), extra

    def step_fn(state, batch):
        step = state["step"]
        rng = jax.random.fold_in(state["rng"], step)
        params = state["params"]
        grads, metrics, extra = grads_of(params, state["extra"], batch, rng, step)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        extra = objective.after_update(new_params, extra, step)
        new = dict(state, step=step + 1, params=new_params, opt_state=opt_state, extra=extra)
        if "ema" in state:
            new["ema"] = optim.ema_update(state["ema"], new_params, ema_decay)
        grad_norm = optax.tree.norm(grads)
        metrics = {f"train/{k}": v for k, v in metrics.items()}
        if objective.backbone_key:  # a method with heads of its own: is the backbone still learning?
            metrics["train/backbone_grad_norm"] = optax.tree.norm(subtree(grads, objective.backbone_key))
        metrics.update({"train/grad_norm": grad_norm, "train/param_norm": optax.tree.norm(new_params),
                        "train/lr": schedule(step)})
        finite = jnp.isfinite(metrics["train/loss"]) & jnp.isfinite(grad_norm)
        # A poisoned update never enters the state: the host sees finite=False and stops.
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        metrics["finite"] = finite
        return new, metrics

    return step_fn


# -- the loop ---------------------------------------------------------------------------

class _StopRequest:
    """SIGINT / SIGTERM while training: finish the step, save a checkpoint, stop with one line.
    A second signal stops at once (KeyboardInterrupt), keeping the last checkpoint."""

    def __init__(self):
        self.signal: str | None = None
        self._old: dict = {}

    def __enter__(self) -> "_StopRequest":
        # Signals reach the main thread only. With several processes each would see its signal at
        # another step and the others would wait in a collective forever: there the default stays
        # (stop at once; the run resumes from its last checkpoint).
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. `cmd &` in a script ignores SIGINT
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        _log(f"{self.signal}: stopping after this step and saving a checkpoint (again to stop at once)")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _restore(ckpt, prior, config, abstract):
    """(step, state, data_state, damaged) of the newest good checkpoint, or a WorkdirError."""
    try:
        step, state, data_state, damaged = ckpt_lib.restore_newest(ckpt, prior.steps, abstract)
    except ckpt_lib.StateMismatch as e:
        raise workdir_lib.mismatch_error(prior, config, e.step, e.differences) from None
    batch = data_state.get("global_batch", config.batch_size)
    if batch != config.batch_size:
        raise WorkdirError(f"{ckpt.directory}/{step} was trained with batch_size={batch}; resume with "
                           f"--config.batch_size={batch}, or start a new --workdir with "
                           f"--config.init_from={prior.path} to continue from its weights.")
    return step, state, data_state, damaged


def run(config, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if it has one.

    total_steps == 0 evaluates the initial (e.g. pre-trained) state only. Nothing is written to
    the workdir until the state is restored or initialised (vit_jax/workdir.py has the rules).
    """
    # Everything that can be wrong with the config or the workdir is found here, before any compile.
    plan = validate_lib.validate(config)
    workdir = os.path.abspath(workdir)
    prior = workdir_lib.inspect(config, workdir, _log)
    total_steps = plan.total_steps

    mesh = sharding.make_mesh(**config.mesh)
    objective = plan.objective

    # Shapes, shardings and the optimizer come from an abstract init: nothing is allocated twice.
    example = {k: jnp.zeros((1,) + v.shape, v.dtype) for k, v in plan.example.items()}
    rng = jax.random.PRNGKey(config.seed)
    abstract_vars = jax.eval_shape(objective.init, rng, example)
    tx, schedule = optim.make_optimizer(config, abstract_vars[0], max(total_steps, 1), plan.lr_factors,
                                        plan.steps["warmup"], objective.weight_decay_rule,
                                        objective.held, plan.steps["cooldown"])
    ema = config.ema_decay > 0
    abstract = jax.eval_shape(lambda p, e, r: state_lib.create(p, e, tx, r, ema), *abstract_vars, rng)
    state_shardings = sharding.tree_shardings(abstract, mesh)

    resuming = bool(prior.steps)
    damaged: dict[int, str] = {}
    if resuming:
        reader = ckpt_lib.Checkpointer(workdir, read_only=True)
        start, state, data_state, damaged = _restore(reader, prior, config,
                                                     ckpt_lib.abstract_like(abstract, state_shardings))
    else:
        # init_from is read and checked against the abstract params before the init compile
        load_init = init_from.prepare(objective, abstract_vars[0], config.init_from) \
            if config.init_from else None
        var_shardings = (state_shardings["params"], state_shardings["extra"])
        params, extra = jax.jit(objective.init, out_shardings=var_shardings)(rng, example)
        # host side, once, never on resume: frozen teachers' weights, then config.init_from
        extra = state_lib.put_frozen_extra(objective, extra)
        if load_init is not None:
            params = load_init(params)
        params, extra = jax.device_put((params, extra), var_shardings)
        state = jax.jit(lambda p, e, r: state_lib.create(p, e, tx, r, ema),
                        out_shardings=state_shardings)(params, extra, rng)
        start, data_state = 0, {"step": 0}

    # The first writes: the state is ready, so a failure above left the workdir as it was.
    if _is_main():
        workdir_lib.begin(prior, config, resuming, _log)
    ckpt = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints, config.async_checkpoints)
    if damaged and _is_main():
        moved = ckpt.move_aside(sorted(damaged))
        for (s, why), where in zip(sorted(damaged.items()), moved):
            _log(f"note: checkpoint {s} is damaged ({why}); moved to {where}")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("vit_jax workdir ready")
        ckpt.manager.reload()
    if resuming:
        _log(f"resumed from {ckpt.directory}/{start}")
    pipe = train_loader.for_config(plan.train_source, plan.train_transform, config,
                                 jax.process_index(), jax.process_count())
    pipe.set_state(data_state)
    # .get: a workdir's config.json may predate the key
    on_device = plan.on_device or (lambda b: b)   # data.wire="uint8": the final normalize, here

    skipped = SkippedFiles(plan.train_source)   # data.skip_bad_images: the unreadable files met

    def to_device(local: dict) -> dict:
        return on_device(sharding.global_batch(skipped.take(local), mesh))
    pipe = DevicePrefetch(pipe, to_device, config.data.get("device_prefetch", 0))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    _log(f"{config.objective} | {config.model_name} | {n_params:,} params | mesh {dict(mesh.shape)} | "
         f"{jax.process_count()} process(es), {jax.device_count()} device(s) | steps {start}->{total_steps}")

    batch_shard = sharding.batch_sharding(mesh)
    step_fn = jax.jit(make_train_step(objective, tx, schedule, config.grad_accum_steps, config.ema_decay),
                      in_shardings=(state_shardings, batch_shard),
                      out_shardings=(state_shardings, sharding.replicated(mesh)),
                      donate_argnums=(0,))

    def train_step(state, batch):
        # traced under the mesh, so that a model may constrain its activations to it (the scanned
        # ViT keeps its rows sharded inside the loop: vit._batch_sharded)
        with jax.set_mesh(mesh):
            return step_fn(state, batch)

    ctx = EvalContext(config, mesh, workdir, objective, plan.train_source, plan.eval_source,
                      plan.eval_transform, _is_main(), validate_lib.source_kwargs(config.data))
    evaluators = evaluators_lib.build(ctx, plan.evaluators)

    writer = metrics_lib.MetricWriter(workdir, start if resuming else None, _is_main(), config.tensorboard)
    progress = metrics_lib.Progress(total_steps, config.batch_size, _is_main() and config.progress)
    pending: list[tuple[int, dict]] = []  # device metrics not yet looked at (keeps dispatch async)
    last: dict[str, Any] = {}

    def flush() -> None:
        """Fetches pending metrics; stops the run at the first non-finite step."""
        for step, m in pending:
            m = jax.device_get(m)
            if not bool(m.pop("finite")):
                ckpt.wait()
                saved = ckpt.latest_step()
                kept = (f"nothing after step {saved} was saved; lower optim.lr, raise optim.warmup_steps or "
                        f"set optim.clip_norm, then run again on this workdir to resume from step {saved}"
                        if saved is not None else
                        "no checkpoint had been saved yet; lower optim.lr, raise optim.warmup_steps or set "
                        "optim.clip_norm, then run again (it starts from step 0)")
                raise NonFiniteError(
                    f"non-finite loss or gradient at step {step} (loss={float(m['train/loss'])}, "
                    f"grad_norm={float(m['train/grad_norm'])}). The state was not updated and {kept}.")
            last.update({k: float(v) for k, v in m.items()})
        pending.clear()

    def run_evals(step: int, last_step: bool) -> None:
        results = {}
        for ev in evaluators:
            if last_step or (ev.every and step % ev.every == 0):
                results.update(ev.run(state, step))
        if results:
            writer.write(step, results)
            last.update(results)
            _log("  ".join(f"{k}={v:.4f}" for k, v in sorted(results.items())))

    ckpt_every = plan.steps["checkpoint_every"]
    t_start = time.perf_counter()
    progress.reset_clock(start)
    step = start
    stop = _StopRequest()
    try:
        stop.__enter__()
        if total_steps == 0:
            run_evals(0, True)
        for step in range(start + 1, total_steps + 1):
            batch = next(pipe)         # on the devices already (DevicePrefetch)
            state, m = train_step(state, batch)
            pending.append((step, m))
            is_last = step == total_steps
            if step % config.log_every == 0 or is_last:
                flush()
                ips, dt = progress.rate(step)
                row = {k: v for k, v in last.items() if k.startswith("train/")}
                row.update({"epoch": pipe.epoch(step), "perf/images_per_sec": ips, "perf/step_time": dt})
                if config.data.get("skip_bad_images"):
                    row["data/skipped_images"] = len(skipped)
                writer.write(step, row)
                progress.line(step, row, ips, dt)
            if is_last or any(ev.every and step % ev.every == 0 for ev in evaluators):
                flush()
                run_evals(step, is_last)
                progress.reset_clock(step)
            if (ckpt_every and step % ckpt_every == 0) or is_last or stop.signal:
                flush()  # never save a state whose step went non-finite
                ckpt.save(step, state, dict(pipe.state(), global_batch=config.batch_size))
                progress.reset_clock(step)
            if stop.signal and not is_last:
                ckpt.wait()
                raise Interrupted(f"{stop.signal} at step {step} of {total_steps}; checkpoint {step} saved "
                                  f"in {ckpt.directory}; run the same command to resume")
        flush()
    finally:
        stop.__exit__()
        ckpt.close()
        writer.close()
        pipe.close()
    wall = time.perf_counter() - t_start
    summary = {k: v for k, v in last.items() if k.startswith("eval/") or k == "train/loss"}
    summary.update(step=step, wall_time_s=wall)
    _log("final: " + json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in summary.items()}))
    return summary
