"""Sweep DINO / EsViT recipes on mnist5k: many `vit_jax.main` runs side by side, one results file.

    python benchmarks/dino_sweep.py --out workdirs/dino_sweep --parallel 8 --stage1_epochs 20

Each run is `python -m vit_jax.main --config configs/mnist5k/esvit.py:LOSS,BACKBONE,faithful` plus the
run's `--config.KEY=VALUE` overrides (RUNS below), in its own process (several share one GPU;
XLA does not preallocate). Stage 1 runs every recipe of RUNS for --stage1_epochs; stage 2 runs
the --top best of stage 1 (teacher k-NN, k=10) for --stage2_epochs, and the best one as EsViT
(view + region) on the ViT, and as DINO and EsViT on the Swin, for --stage1_epochs. A global
--deadline_s stops what is still running (its evaluations so far are kept). Output in --out:
results.jsonl, one line per finished or stopped run (its overrides, wall time, every eval row and
the train rows at the evaluations' steps), and metrics.tar.gz, every run's metrics.jsonl.
--smoke runs every recipe for 3 steps (checks the overrides before a real sweep).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tarfile
import time

from vit_jax.metrics import read_jsonl

# Every run changes what it names in the faithful recipe (configs/mnist5k/esvit.py's RECIPE
# "faithful"); "remedy" is close to the shipped default ("remedies"), with teacher temperature 0.04.
PAPER_TEACHER = {"esvit.warmup_teacher_temp": 0.04, "esvit.teacher_temp": 0.07,
                 "esvit.warmup_teacher_temp_epochs": 10, "esvit.momentum_teacher": 0.996}
LOCAL16 = {"esvit.num_local": 4, "esvit.local_size": 16, "esvit.local_scale": "(0.2, 0.5)"}
REMEDY = {"esvit.sinkhorn_iters": 3, "esvit.koleo_weight": 0.1, "model.weight_init": "mae",
          "esvit.teacher_temp": 0.04, "esvit.warmup_teacher_temp": 0.04, **LOCAL16}
RUNS: dict[str, dict] = {
    "faithful": {},
    "paper_teacher": PAPER_TEACHER,
    "tt04": {"esvit.teacher_temp": 0.04, "esvit.warmup_teacher_temp": 0.04},
    "no_local": {"esvit.num_local": 0},
    "local16": LOCAL16,
    "local12_big": {"esvit.local_scale": "(0.2, 0.5)"},
    "out256": {"esvit.out_dim": 256},
    "xavier": {"model.weight_init": "mae"},
    "gap": {"model.pool": "gap"},
    "lr5e-4": {"optim.lr": 5e-4},
    "lr2e-3": {"optim.lr": 2e-3},
    "m0996": {"esvit.momentum_teacher": 0.996},
    "sk": {"esvit.sinkhorn_iters": 3},
    "sk_koleo": {"esvit.sinkhorn_iters": 3, "esvit.koleo_weight": 0.1},
    "free_last": {"esvit.norm_last_layer": False},
    "batch64": {"batch_size": 64},
    "no_droppath": {"model.drop_path_rate": 0.0},
    "gap_xavier_local16": {"model.pool": "gap", "model.weight_init": "mae", **LOCAL16},
    "global25": {"esvit.global_scale": "(0.25, 1.0)"},
    "no_photometric": {"esvit.jitter_p": 0.0, "esvit.blur_p": "(0.0, 0.0, 0.0)", "esvit.solarize_p": "(0.0, 0.0, 0.0)"},
    "remedy": REMEDY,
    "remedy_gap": {**REMEDY, "model.pool": "gap"},
    "remedy_out256": {**REMEDY, "esvit.out_dim": 256},
    "remedy_lr2e-3": {**REMEDY, "optim.lr": 2e-3},
    "remedy_no_local": {**REMEDY, "esvit.num_local": 0},
    "remedy_koleo05": {**REMEDY, "esvit.koleo_weight": 0.5},
    "remedy_gap_out256_lr2e-3": {**REMEDY, "model.pool": "gap", "esvit.out_dim": 256, "optim.lr": 2e-3},
    "mim": {"esvit.mim_weight": 1.0},
    "mim_remedy": {**REMEDY, "esvit.mim_weight": 1.0},
}


def command(arg: str, overrides: dict, workdir: str, epochs: float, workers: int, smoke: bool,
            eval_every: float = 0) -> list[str]:
    cmd = [sys.executable, "-m", "vit_jax.main", "--config", f"configs/mnist5k/esvit.py:{arg},faithful",
           "--workdir", workdir, f"--config.num_epochs={epochs}", f"--config.data.workers={workers}",
           "--config.progress=False", "--config.tensorboard=False", "--config.log_every=31"]
    if smoke:
        cmd += ["--config.total_steps=3", "--config.optim.warmup_steps=1", "--config.eval_every=3",
                "--config.checkpoint_every=3", "--config.esvit.freeze_last_layer_epochs=0"]
    else:
        every = eval_every or max(epochs / 4, 1.0)
        cmd += [f"--config.eval_every_epochs={every}", f"--config.checkpoint_every_epochs={epochs}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    return cmd


def summarise(workdir: str) -> dict:
    """Eval rows and the train rows at (or just before) each evaluated step, from metrics.jsonl."""
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))   # [] when the run wrote none
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    train = [r for r in rows if "train/loss" in r]
    keep = ("train/loss", "train/view/teacher_entropy", "train/view/teacher_batch_entropy",
            "train/view/student_entropy", "train/view/kl", "train/view/center_norm", "train/koleo")
    picked = []
    for e in evals:
        before = [t for t in train if t["step"] <= e["step"]]
        if before:
            picked.append({k: round(v, 4) for k, v in before[-1].items() if k in keep or k == "step"})
    return {"evals": [{k: v for k, v in e.items() if k.startswith("eval/") or k == "step"} for e in evals],
            "train": picked, "last_train": train[-1] if train else None}


def run_one(name: str, arg: str, overrides: dict, out: str, epochs: float, workers: int, smoke: bool,
            deadline: float) -> dict:
    workdir = os.path.join(out, "runs", name)
    cmd = command(arg, overrides, workdir, epochs, workers, smoke, EVAL_EVERY)
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1")
    t0 = time.time()
    status = "done"
    with open(os.path.join(out, "logs", name + ".log"), "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            proc.wait(timeout=max(deadline - time.time(), 1))
            if proc.returncode:
                status = f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = "stopped at the deadline"
    result = {"name": name, "arg": arg, "epochs": epochs, "overrides": overrides, "status": status,
              "wall_s": round(time.time() - t0, 1), **summarise(workdir)}
    if status != "done":
        result["log_tail"] = open(os.path.join(out, "logs", name + ".log")).read()[-1500:]
    with open(RESULTS, "a") as f:
        f.write(json.dumps(result) + "\n")
    knn = [e.get("eval/knn/top1_k10") for e in result["evals"]]
    print(f"{time.time() - START:6.0f}s {name:28s} {status:24s} knn k10 {knn}", flush=True)
    return result


def best_knn(result: dict) -> float:
    return max([e.get("eval/knn/top1_k10", 0.0) for e in result["evals"]] or [0.0])


def run_all(jobs: list[tuple], args, deadline: float) -> list[dict]:
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(run_one, name, arg, ov, args.out, ep, args.workers, args.smoke, deadline)
                   for name, arg, ov, ep in jobs]
        return [f.result() for f in futures]


START = time.time()
RESULTS = ""
EVAL_EVERY = 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="data.workers of each run")
    p.add_argument("--stage1_epochs", type=float, default=20)
    p.add_argument("--stage2_epochs", type=float, default=100)
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated names of RUNS (default: all)")
    p.add_argument("--no_stage2", action="store_true")
    p.add_argument("--deadline_s", type=float, default=1e9)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--eval_every_epochs", type=float, default=0, help="default: a quarter of the run")
    p.add_argument("--results", default="", help="results file (default: OUT/results.jsonl)")
    args = p.parse_args()
    global RESULTS, EVAL_EVERY
    RESULTS = args.results or os.path.join(args.out, "results.jsonl")
    EVAL_EVERY = args.eval_every_epochs
    deadline = START + args.deadline_s
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    names = args.only.split(",") if args.only else list(RUNS)
    stage1 = run_all([(n, "v,vit", RUNS[n], args.stage1_epochs) for n in names], args, deadline)
    if not args.no_stage2 and time.time() < deadline:
        ranked = sorted(stage1, key=best_knn, reverse=True)
        top = [r["name"] for r in ranked[:args.top]]
        print("stage 2 from", top, flush=True)
        ov = RUNS[top[0]]
        swin_ov = {k: v for k, v in ov.items() if not k.startswith("model.")}
        jobs = [(f"{n}_long", "v,vit", RUNS[n], args.stage2_epochs) for n in top]
        jobs += [(f"{top[0]}_vr", "vr,vit", ov, args.stage1_epochs),
                 (f"{top[0]}_swin_v", "v,swin", swin_ov, args.stage1_epochs),
                 (f"{top[0]}_swin_vr", "vr,swin", swin_ov, args.stage1_epochs)]
        run_all(jobs, args, deadline)
    with tarfile.open(os.path.join(os.path.dirname(RESULTS), "metrics.tar.gz"), "w:gz") as tar:
        for name in sorted(os.listdir(os.path.join(args.out, "runs"))):
            path = os.path.join(args.out, "runs", name, "metrics.jsonl")
            if os.path.isfile(path):
                tar.add(path, arcname=f"{name}.metrics.jsonl")
    print(f"done in {time.time() - START:.0f} s", flush=True)


if __name__ == "__main__":
    main()
