"""Plan a large run without its hardware: compile the real train step for N simulated devices and
read, from the compiled executable, what one device needs per step.

    python -m vit_jax.bench --aot --devices 64 --mesh 8,8,1 --model vit_giant_patch14_224 \
        --batch 4096 --dtype bfloat16 [--scan] [--remat] [--accum K] [--objective mae]

Nothing runs: the state and the batch are abstract (shapes, dtypes and shardings), the step is
lowered and compiled by XLA for the CPU backend with N devices (jax_num_cpu_devices), and the
report reads the executable's memory analysis (per device: arguments, outputs, temporaries,
aliased bytes), its cost analysis (FLOPs of the per-device program; XLA counts a loop body once,
so the loops' other iterations of their matmuls and convolutions are added from the HLO,
vit_jax/hlo_costs.py) and its HLO (every collective and the bytes it produces per device, a loop's
once per iteration). The CPU compiler's temporaries approximate a GPU's or TPU's (other fusion and
layout decisions); arguments and outputs are exact.
--scan compiles the blocks as one nn.scan loop (model.scan): XLA compiles one block instead of
depth copies, which is what makes the 32- and 40-block models compile on a laptop.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import config_base, hlo_costs, objectives, optim, sharding, train
from vit_jax import state as state_lib
from vit_jax.data.info import DataInfo

def build_step(model: str, batch: int, image_size: int, mesh: jax.sharding.Mesh, *,
               objective: str = "supervised", dtype: str = "float32", num_classes: int = 1000,
               remat: bool = False, accum: int = 1, overrides: dict | None = None,
               fsdp_min_size: int = 2 ** 12, scan: bool = False) -> dict[str, Any]:
    """The train step of `model` under `objective` on `mesh`: {"step" (jitted, state donated),
    "state" and "batch" (ShapeDtypeStructs with their shardings), "init" (rng -> a real state
    with those shardings), "shardings", "objective"}. vit_jax.bench runs it; plan compiles it."""
    cfg = config_base.base_config()
    cfg.model_name, cfg.objective = model, objective
    cfg.model.update(overrides or {})
    if dtype != "float32":
        cfg.model.dtype = dtype
    if remat:
        cfg.model.remat = True
    if scan:
        cfg.model.scan = True
    if objective != "supervised":
        cfg[objective] = objectives.default_config(objective)
    cfg.batch_size, cfg.total_steps, cfg.optim.warmup_steps = batch, 10_000, 100
    cfg.mesh = dict(zip(sharding.AXES, mesh.devices.shape))
    info = DataInfo(num_classes=num_classes, image_shape=(image_size, image_size, 3), num_train=batch)
    obj = objectives.build(cfg, info)
    rng = jax.random.PRNGKey(0)
    example = {"image": jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32),
               "label": jax.ShapeDtypeStruct((1,), np.int32)}
    params = jax.eval_shape(obj.init, rng, example)[0]
    tx, schedule = optim.make_optimizer(cfg, params, cfg.total_steps, decay_rule=obj.weight_decay_rule,
                                        held=obj.held)
    abstract = jax.eval_shape(lambda r, ex: state_lib.init_state(obj, tx, r, ex), rng, example)
    shardings = sharding.tree_shardings(abstract, mesh, fsdp_min_size=fsdp_min_size)
    rows = sharding.batch_sharding(mesh)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    data = {"image": jax.ShapeDtypeStruct((batch, image_size, image_size, 3), np.float32, sharding=rows),
            "label": jax.ShapeDtypeStruct((batch,), np.int32, sharding=rows)}
    step = jax.jit(train.make_train_step(obj, tx, schedule, accum, 0.0), in_shardings=(shardings, rows),
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    init = jax.jit(lambda r: state_lib.init_state(obj, tx, r, {k: jnp.zeros(v.shape, v.dtype)
                                                              for k, v in example.items()}),
                   out_shardings=shardings)
    return {"step": step, "state": state, "batch": data, "init": init, "shardings": shardings,
            "objective": obj}


def plan(model: str, batch: int, mesh_shape: tuple[int, int, int], *, image_size: int = 224,
         objective: str = "supervised", dtype: str = "float32", remat: bool = False, accum: int = 1,
         num_classes: int = 1000, overrides: dict | None = None, fsdp_min_size: int = 2 ** 12,
         scan: bool = False) -> dict[str, Any]:
    """Compile (not run) the step on a mesh of `mesh_shape` over this process' devices and report
    its per-device memory, FLOPs and collectives."""
    mesh = sharding.make_mesh(*mesh_shape)
    built = build_step(model, batch, image_size, mesh, objective=objective, dtype=dtype,
                       num_classes=num_classes, remat=remat, accum=accum, overrides=overrides,
                       fsdp_min_size=fsdp_min_size, scan=scan)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):   # traced as vit_jax.train traces it: under its mesh
        compiled = built["step"].lower(built["state"], built["batch"]).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    text = compiled.as_text()
    coll = hlo_costs.collective_bytes(text)
    # XLA counts a loop body once (scan over blocks, microbatches): add the loops' other
    # iterations of their matmuls and convolutions
    matmul, matmul_once = hlo_costs.matmul_flops(text)
    flops = float(cost.get("flops", float("nan"))) + matmul - matmul_once
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(built["state"]["params"]))
    gib = 2.0 ** 30
    args, outs = mem.argument_size_in_bytes, mem.output_size_in_bytes
    temps, alias = mem.temp_size_in_bytes, mem.alias_size_in_bytes
    return {
        "model": model, "objective": objective, "params": n_params, "batch": batch, "image_size": image_size,
        "dtype": dtype, "scan": scan, "remat": remat, "accum": accum, "devices": int(np.prod(mesh_shape)),
        "mesh": dict(zip(sharding.AXES, mesh_shape)), "compile_s": round(compile_s, 1),
        "argument_gib": round(args / gib, 3), "output_gib": round(outs / gib, 3),
        "temp_gib": round(temps / gib, 3), "alias_gib": round(alias / gib, 3),
        # the donated state is both an argument and an output: count it once
        "peak_gib": round((args + outs + temps - alias) / gib, 3),
        "gflop_per_device": float(f"{flops / 1e9:.4g}"),
        "matmul_gflop_per_device": float(f"{matmul / 1e9:.4g}"),
        "collective_gib": round(sum(c["bytes"] for c in coll.values()) / gib, 3),
        "collectives": {k: v for k, v in coll.items() if v["count"]},
        "bytes": {"argument": args, "output": outs, "temp": temps, "alias": alias,
                  "peak": args + outs + temps - alias,
                  "collectives": sum(c["bytes"] for c in coll.values())},
    }
