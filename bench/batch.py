"""Batch throughput: `finsight batch` with 1 and 2 jobs at once, beside the same jobs run in-process without papermill.

Eight small jobs (4 synthetic hourly symbols x PatchTST and PatchTSMixer, tiny models, 2 epochs, tracking and .pt
export on) in a fresh runs/ and data folder. The difference between the in-process run and the 1-worker batch is
what papermill and the job service cost per job.

    python bench/batch.py
"""
from __future__ import annotations
import json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from _report import table, write_section

SYMBOLS, MODELS = ["SYNA", "SYNB", "SYNC", "SYND"], ["patchtst", "patchtsmixer"]
CONFIG = {"context_length": 32, "d_model": 64, "n_heads": 4, "num_layers": 1, "num_epochs": 2, "batch_size": 128, "seed": 0}
BIN = Path(sys.executable).parent


def prepare(root: Path) -> dict:
    "A data root with the synthetic symbols and the environment that points finsight at it."
    env = {**os.environ, "FINSIGHT_DATA_ROOT": str(root / "data"), "FINSIGHT_RUNS_DIR": str(root / "runs"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    code = ("from finsight.data.sources import LocalDataLoader, synthetic_ohlcv\n"
            f"ld = LocalDataLoader({str(root / 'data')!r})\n"
            f"for i, s in enumerate({SYMBOLS!r}): ld.save(synthetic_ohlcv(3000, '1h', seed=i), s, '1h')\n")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return env


def batch(env: dict, workers: int) -> tuple[float, dict]:
    "Seconds for the whole `finsight batch`, and how its jobs started (from the executed notebooks' papermill metadata)."
    sets = [f"{k}={json.dumps(v)}" for k, v in CONFIG.items()]
    before = set(Path(env["FINSIGHT_RUNS_DIR"]).glob("batch-*"))
    t, t0 = time.perf_counter(), time.time()
    out = subprocess.run([str(BIN / "finsight"), "batch", "--symbols", *SYMBOLS, "--timeframes", "1h", "--models", *MODELS,
                          "--max-concurrent", str(workers), "--set", *sets], env=env, capture_output=True, text=True)
    if out.returncode: raise SystemExit(f"batch failed:\n{out.stdout}\n{out.stderr[-3000:]}")
    took = time.perf_counter() - t
    folder, = set(Path(env["FINSIGHT_RUNS_DIR"]).glob("batch-*")) - before
    return took, starts(folder, t0)


def starts(folder: Path, t0: float) -> dict:
    "When the first job's notebook began (seconds after the command), and the median seconds of a job's notebook outside its cells (kernel start, papermill)."
    from datetime import datetime
    jobs = []
    for f in folder.glob("*.ipynb"):
        pm = json.loads(f.read_text())["metadata"]["papermill"]
        cells = sum(c["metadata"].get("papermill", {}).get("duration") or 0 for c in json.loads(f.read_text())["cells"])
        jobs.append((datetime.fromisoformat(pm["start_time"]).timestamp(), pm["duration"] - cells))
    jobs.sort()
    return {"first job at": jobs[0][0] - t0, "first start": jobs[0][1], "job start": statistics.median(j[1] for j in jobs[1:])}


def in_process(env: dict) -> float:
    "The same eight jobs through the forecast task's `run` in one process, one after the other."
    code = ("import time; from finsight.tasks import get_task\n"
            f"t = time.perf_counter(); task = get_task('forecast')\n"
            f"for s in {SYMBOLS!r}:\n"
            f"    for m in {MODELS!r}: task.run(symbol=s, timeframe='1h', model_type=m, config={CONFIG!r}, progress=False)\n"
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode: raise SystemExit(out.stderr[-3000:])
    return float(out.stdout.strip().splitlines()[-1])


def main():
    n = len(SYMBOLS) * len(MODELS)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        env = prepare(Path(d))
        t_in = in_process(env)
        rows.append({"how": "in-process task.run, no papermill (sequential)", "jobs at once": 1, "seconds": t_in})
        for w in (1, 2):
            took, st = batch(env, w)
            rows.append({"how": "finsight batch (papermill jobs on the job service)", "jobs at once": w, "seconds": took,
                         "first notebook after (s)": st["first job at"], "first job's start (s)": st["first start"],
                         "a later job's start (s, median)": st["job start"]})
    for r in rows:
        r["s per job"] = r["seconds"] / n; r["jobs per hour"] = 3600 * n / r["seconds"]; r["vs in-process"] = r["seconds"] / t_in
    over = (rows[1]["seconds"] - t_in) / n
    body = table(rows) + (f"\n\n{n} jobs: {len(SYMBOLS)} synthetic hourly symbols (3,000 bars) x {', '.join(MODELS)}; config {CONFIG}; "
                          f"tracking (embedded MLflow) and .pt + ONNX export in every job. Papermill and the job service add about "
                          f"{over:.1f} s per job (1-worker batch minus in-process). Kernels are forked from a warm process that imported "
                          f"the workbench once (finsight.runner.Zygote): 'a job's start' is a notebook's time outside its cells (fork, "
                          f"connect, papermill); the first job's start also waits for the warm process's imports, and the first notebook begins "
                          f"after the command's own imports and the service's start. Those two are paid once per batch; in-process, the "
                          f"same imports are paid before the clock starts (the package) or by the first job (transformers, ONNX, MLflow).")
    write_section("Batch jobs", body, "python bench/batch.py")


if __name__ == "__main__":
    main()
