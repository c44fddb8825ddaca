"""The bench command times the real train step and reports what it promises."""
import json
import sys

import jax
import numpy as np

from tests import subprocess_run
from vit_jax import aot, bench, hlo_costs, sharding


def test_bench_in_process():
    r = bench.bench("vit_tiny_patch2_8", 8, steps=2, repeats=2, image_size=8, num_classes=10,
                    overrides=dict(width=16, depth=1, num_heads=2))
    assert r["images_per_sec"] > 0 and r["step_ms"] > 0 and r["compile_s"] > 0
    assert r["gflop_per_step"] > 0 and r["tflops"] > 0
    assert len(r["step_ms_runs"]) == 2 and r["mfu"] is None  # CPU peak is unknown


def test_bench_cli_json():
    out = subprocess_run.run_command([sys.executable, "-m", "vit_jax.bench", "--model", "vit_tiny_patch4_16",
                                      "--batch", "4", "--steps", "1", "--repeats", "1", "--json"])
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["model"] == "vit_tiny_patch4_16" and r["batch"] == 4 and r["image_size"] == 16


HLO = """
  %ag = f32[8,16]{1,0} all-gather(f32[4,16]{1,0} %p), dimensions={0}
  %ar = (f32[10]{0}, bf16[3,2]{1,0}) all-reduce(f32[10]{0} %a, bf16[3,2]{1,0} %b), to_apply=%add
  %cps = (f32[5]{0}, f32[5]{0}) collective-permute-start(f32[5]{0} %c), source_target_pairs={{0,1}}
  %cpd = f32[5]{0} collective-permute-done((f32[5]{0}, f32[5]{0}) %cps)
  %add = f32[8,16]{1,0} add(f32[8,16]{1,0} %ag, f32[8,16]{1,0} %ag)
"""


def test_collective_bytes_closed_form():
    c = hlo_costs.collective_bytes(HLO)
    assert c["all-gather"] == {"count": 1, "bytes": 8 * 16 * 4}
    assert c["all-reduce"] == {"count": 1, "bytes": 10 * 4 + 6 * 2}
    assert c["collective-permute"] == {"count": 1, "bytes": 5 * 4}   # the -done is not counted again
    assert c["reduce-scatter"]["count"] == c["all-to-all"]["count"] == 0


# a module whose entry runs a 3-iteration loop; its body runs a fused dot and an all-gather, and
# the entry one more dot (an unfused one) and a 2x2 convolution
LOOP_HLO = """
%fused_dot (p0: f32[2,3], p1: f32[3,4]) -> f32[2,4] {
  %p0 = f32[2,3]{1,0} parameter(0)
  %p1 = f32[3,4]{1,0} parameter(1)
  ROOT %d = f32[2,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (t: (s32[], f32[2,3])) -> (s32[], f32[2,3]) {
  %t = (s32[], f32[2,3]{1,0}) parameter(0)
  %x = f32[2,3]{1,0} get-tuple-element(%t), index=1
  %w = f32[3,4]{1,0} constant({...})
  %f = f32[2,4]{1,0} fusion(%x, %w), kind=kOutput, calls=%fused_dot
  %g = f32[4,3]{1,0} all-gather(%x), dimensions={0}
  ROOT %r = (s32[], f32[2,3]{1,0}) tuple(%i, %x)
}

%cond (t.1: (s32[], f32[2,3])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[2,3], b: f32[3,5], im: f32[1,4,4,3], k: f32[2,2,3,8]) -> f32[2,5] {
  %a = f32[2,3]{1,0} parameter(0)
  %w0 = (s32[], f32[2,3]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %conv = f32[1,2,2,8]{3,2,1,0} convolution(%im, %k), window={size=2x2 stride=2x2}, dim_labels=b01f_01io->b01f
  ROOT %e = f32[2,5]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""


def test_loop_costs_closed_form():
    """A loop body's collectives and matmuls count once per iteration (XLA counts them once)."""
    mult = hlo_costs.multiplicities(hlo_costs.computations(LOOP_HLO))
    assert mult["body"] == 3 and mult["fused_dot"] == 3 and mult["main"] == 1
    c = hlo_costs.collective_bytes(LOOP_HLO)
    assert c["all-gather"] == {"count": 3, "bytes": 3 * 4 * 3 * 4}
    total, once = hlo_costs.matmul_flops(LOOP_HLO)
    loop_dot, entry_dot, conv = 2 * 2 * 4 * 3, 2 * 2 * 5 * 3, 2 * (2 * 2 * 8) * 4 * 3
    assert (total, once) == (3 * loop_dot + entry_dot + conv, loop_dot + entry_dot + conv)


def test_aot_scan_counts_every_layer():
    """The blocks as one scan loop and the microbatches as another: the per-step matmul FLOPs
    equal the unrolled step's, and with remat inside the scan the temporaries shrink."""
    tiny = dict(width=16, depth=3, num_heads=2)
    kw = dict(image_size=8, num_classes=10, overrides=tiny, fsdp_min_size=1)
    flat = aot.plan("vit_tiny_patch2_8", 16, (4, 2, 1), **kw)
    scanned = aot.plan("vit_tiny_patch2_8", 16, (4, 2, 1), scan=True, accum=2, **kw)
    remat = aot.plan("vit_tiny_patch2_8", 16, (4, 2, 1), scan=True, remat=True, **kw)
    assert scanned["scan"] and flat["matmul_gflop_per_device"] > 0
    assert scanned["matmul_gflop_per_device"] == flat["matmul_gflop_per_device"]
    assert scanned["bytes"]["argument"] == flat["bytes"]["argument"]
    assert remat["matmul_gflop_per_device"] > flat["matmul_gflop_per_device"]   # the recomputed forward
    assert remat["bytes"]["temp"] < flat["bytes"]["temp"]
    # the loop keeps the rows sharded (vit._batch_sharded under the traced mesh): without it the
    # partitioner gathered activations over fsdp in every block (6x the flat step's bytes here)
    only_scan = aot.plan("vit_tiny_patch2_8", 16, (4, 2, 1), scan=True, **kw)
    assert only_scan["bytes"]["collectives"] < 3 * flat["bytes"]["collectives"]


def test_aot_plan_on_8_simulated_devices():
    """The step compiles for 8 devices without running; the arguments are exactly each device's
    shard of the state and the batch, FSDP gathers the parameters and pure data parallelism
    does not (it all-reduces the gradients instead)."""
    tiny = dict(width=16, depth=1, num_heads=2)
    plans = {m: aot.plan("vit_tiny_patch2_8", 16, m, image_size=8, num_classes=10, overrides=tiny,
                         fsdp_min_size=1)
             for m in ((4, 2, 1), (8, 1, 1))}
    for shape, r in plans.items():
        mesh = sharding.make_mesh(*shape)
        built = aot.build_step("vit_tiny_patch2_8", 16, 8, mesh, num_classes=10, overrides=tiny,
                               fsdp_min_size=1)
        want = sum(int(np.prod(s.sharding.shard_shape(s.shape))) * s.dtype.itemsize
                   for s in jax.tree.leaves((built["state"], built["batch"])))
        assert r["bytes"]["argument"] == want and r["devices"] == 8
        assert r["bytes"]["peak"] > want and r["bytes"]["temp"] > 0 and r["gflop_per_device"] > 0
    assert "all-gather" in plans[(4, 2, 1)]["collectives"]
    assert "all-gather" not in plans[(8, 1, 1)]["collectives"]
    assert "all-reduce" in plans[(8, 1, 1)]["collectives"]


def test_aot_cli_simulates_the_devices_it_is_given():
    out = subprocess_run.run_command([sys.executable, "-m", "vit_jax.bench", "--aot", "--devices", "4",
                                      "--mesh", "2,2,1", "--model", "vit_tiny_patch2_8", "--batch", "4", "--json"])
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["devices"] == 4 and r["mesh"] == {"data": 2, "fsdp": 2, "model": 1}
    assert r["bytes"]["argument"] > 0 and "all-gather" in r["collectives"]
