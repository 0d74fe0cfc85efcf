"""Search throughput: `tune` with N trials of a small config on the bundled S&P 500 daily bars, with 1 worker (trials one
after another in this process) and with 2 warm Dask worker processes (trials at once, the cores shared out); trials per
hour and the share of trials pruned.

    python bench/tune.py [--trials 20] [--models dlinear patchtst] [--epochs 2] [--workers 1 2]
"""
from __future__ import annotations
import argparse, sys, tempfile, time, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import table, write_section


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--trials", type=int, default=20); ap.add_argument("--models", nargs="+", default=["dlinear", "patchtst"])
    ap.add_argument("--epochs", type=int, default=2); ap.add_argument("--folds", type=int, default=2); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    import torch
    from finsight.data.sources import load_bundled
    from finsight.tune import tune
    torch.set_num_threads(a.threads); warnings.filterwarnings("ignore")
    bars = load_bundled("SP500")
    cfg = dict(context_length=32, d_model=64, n_heads=4, num_layers=1, num_epochs=a.epochs, batch_size=256)
    rows = []
    for model in a.models:
        for w in a.workers:
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                r = tune(bars, model, cfg, trials=a.trials, folds=a.folds, storage=f"sqlite:///{d}/o.db", progress=False, workers=w)
                secs = time.perf_counter() - t0
            m = r.metrics()
            rows.append({"model": model, "workers": w, "trials": m["trials"], "seconds": secs, "trials per hour": 3600 * m["trials"] / secs,
                         "pruned %": 100 * m["pruned"] / m["trials"], "failed": m["failed"], "cv rel_mae": m["cv_rel_mae"],
                         "held-out rel_mae": m["holdout_rel_mae"], "held-out DM p": m["holdout_dm_p_naive"]})
    body = table(rows) + (f"\n\n`tune` of each model (its default search space; base: context 32, d_model 64, 1 layer, {a.epochs} epochs, batch 256) on the bundled "
                          f"S&P 500 daily bars: {a.folds} walk-forward folds per trial on the first five sixths, the winner backtested once on the last sixth "
                          f"(included in the seconds, as is the start of the workers). {a.threads} torch threads with 1 worker; with N workers, N trials at once on warm "
                          f"Dask worker processes sharing one SQLite study, {a.threads} // N torch threads each. Parallel trials see fewer finished trials when "
                          "they are sampled and pruned, so the pruned share and the winner can differ from the 1-worker run.")
    write_section("Tune", body, f"python bench/tune.py --trials {a.trials} --models {' '.join(a.models)} --epochs {a.epochs} --workers {' '.join(map(str, a.workers))}")


if __name__ == "__main__":
    main()
