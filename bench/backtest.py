"""Backtest machinery overhead: an expanding backtest of PatchTST on the bundled S&P 500 daily bars against the same
fold trainings called one after another in-process (`fit_fold` on each fold); the backtest must add at most 5%.
The backtest runs with 1 worker (in this process) and with N warm Dask worker processes (folds at once, the cores shared out).

    python bench/backtest.py [--folds 8] [--epochs 3] [--rounds 2] [--workers 2]
"""
from __future__ import annotations
import argparse, statistics, sys, time, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import table, write_section


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--folds", type=int, default=8); ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--model", default="patchtst"); ap.add_argument("--rounds", type=int, default=2); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    import torch
    from finsight.backtest import backtest, fit_fold, plan_folds
    from finsight.data.sources import load_bundled
    from finsight.features import BasicFeatureEngineering
    from finsight.models import ModelConfig
    torch.set_num_threads(a.threads); warnings.filterwarnings("ignore")
    bars, cfg = load_bundled("SP500"), ModelConfig(num_epochs=a.epochs, early_stopping_patience=a.epochs + 1)   # default architecture, fixed epochs
    folds = plan_folds(len(bars), cfg, BasicFeatureEngineering().warmup, a.folds)
    trains, tests, pars = [], [], []
    for r in range(a.rounds):   # interleaved rounds: the machine's speed drifts
        t0 = time.perf_counter(); [fit_fold(bars, f, a.model, cfg) for f in folds]; trains.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); bt = backtest(bars, a.model, cfg, folds=a.folds, progress=False); tests.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); bt.summary(); bt.versus(); bt.by_horizon(); report = time.perf_counter() - t0
        if a.workers > 1: t0 = time.perf_counter(); backtest(bars, a.model, cfg, folds=a.folds, progress=False, workers=a.workers); pars.append(time.perf_counter() - t0)
    tr, bk = statistics.median(trains), statistics.median(tests)
    ratio = statistics.median(b / t for t, b in zip(trains, tests))   # per round: the two halves ran back to back
    rows = [{"what": f"{a.folds} fold trainings in a loop (fit_fold)", "seconds": tr, "ratio": 1.0},
            {"what": f"backtest(): the same trainings + forecasts of every origin + 4 baselines", "seconds": bk, "ratio": ratio},
            {"what": "the report (bootstrap intervals, DM tests, per horizon)", "seconds": report, "ratio": report / tr}]
    if pars: rows.insert(2, {"what": f"backtest(workers={a.workers}): folds at once on {a.workers} warm Dask worker processes (cluster start included)",
                             "seconds": statistics.median(pars), "ratio": statistics.median(p / t for t, p in zip(trains, pars))})
    body = table(rows) + (f"\n\n{a.model} (default architecture), {a.epochs} epochs per fold (no early stop), {a.folds} expanding folds over the bundled S&P 500 "
                          f"daily bars ({len(bars)} bars, {bt.metrics()['origins']} origins), {a.threads} torch threads; median of {a.rounds} interleaved rounds (ratio: the median of the per-round ratios) "
                          f"(all rounds: loop {', '.join(f'{t:.1f}' for t in trains)} s; backtest {', '.join(f'{t:.1f}' for t in tests)} s). Goal: backtest <= 1.05x the "
                          f"loop; the {a.workers}-worker backtest runs {a.workers} folds at once, {max(1, a.threads // a.workers)} torch thread(s) each.")
    write_section("Backtest", body, f"python bench/backtest.py --folds {a.folds} --epochs {a.epochs} --rounds {a.rounds} --workers {a.workers}")


if __name__ == "__main__":
    main()
