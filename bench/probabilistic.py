"""The distribution and volatility baselines' cost per fold, beside one model fold's training: historical simulation
and GARCH(1,1)-t quantile forecasts (`prob_backtest`), and naive, HAR-RV and GARCH variance forecasts
(`vol_backtest`), on the bundled S&P 500 daily bars, with the folds of an expanding backtest.

    python bench/probabilistic.py [--folds 8] [--epochs 3] [--rounds 3]
"""
from __future__ import annotations
import argparse, statistics, sys, time, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from _report import table, write_section


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=8); ap.add_argument("--epochs", type=int, default=3); ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    from finsight.backtest import fit_fold, plan_folds
    from finsight.data.sources import load_bundled
    from finsight.features import BasicFeatureEngineering
    from finsight.models import ModelConfig
    from finsight.probabilistic import prob_backtest, vol_backtest
    bars, cfg = load_bundled("SP500"), ModelConfig(num_epochs=a.epochs, early_stopping_patience=a.epochs + 1)
    plan = plan_folds(len(bars), cfg, BasicFeatureEngineering().warmup, a.folds)
    times = {"prob": [], "vol": [], "dlinear": [], "patchtst": []}
    for _ in range(a.rounds):
        t0 = time.perf_counter(); pb = prob_backtest(bars, cfg.prediction_length, plan=plan, progress=False); times["prob"].append((time.perf_counter() - t0) / len(plan))
        t0 = time.perf_counter(); vb = vol_backtest(bars, horizon=1, folds=a.folds, progress=False); times["vol"].append((time.perf_counter() - t0) / a.folds)
        for m in ("dlinear", "patchtst"):
            t0 = time.perf_counter(); fit_fold(bars, plan[-1], m, cfg); times[m].append(time.perf_counter() - t0)
    # training throughput of each probabilistic head beside the MSE head of the same model, on the same windows
    from finsight.training import fit, prepare_windows
    from finsight.models import ModelFactory
    n = len(bars)
    heads = {("dlinear", "mse"): {}, ("dlinear", "quantile"): {"loss": "quantile"},
             ("patchtst", "mse"): {}, ("patchtst", "nll normal"): {"loss": "nll", "distribution": "normal"}, ("patchtst", "nll student_t"): {"loss": "nll"},
             ("patchtsmixer", "mse"): {}, ("patchtsmixer", "nll student_t"): {"loss": "nll"}}
    epochs = {"dlinear": a.epochs, "patchtst": 1, "patchtsmixer": 1}
    cfgs = {k: ModelConfig(context_length=64, num_epochs=epochs[k[0]], early_stopping_patience=epochs[k[0]] + 1, **o) for k, o in heads.items()}
    win, _ = prepare_windows(bars.iloc[:int(n * .7)], bars.iloc[int(n * .7):int(n * .85)], None, BasicFeatureEngineering(), cfgs["dlinear", "mse"])
    runs = {k: [] for k in heads}
    for r in range(2 * a.rounds + 1):   # interleaved: the machine's drift hits every head alike
        for k, c in cfgs.items():
            if k[0] != "dlinear" and r >= a.rounds: continue   # the transformers: `rounds` fits each
            ad = ModelFactory.create(k[0], c, len(win.channels), win.target_channel)
            t0 = time.perf_counter(); fit(ad, win.train, win.val, progress=False); runs[k].append(len(win.train) * c.num_epochs / (time.perf_counter() - t0))
    thr = {k: statistics.median(v) for k, v in runs.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [{"per fold": "historical simulation + GARCH(1,1)-t quantiles (prob_backtest)", "seconds": med["prob"], "vs one PatchTST fold": med["prob"] / med["patchtst"]},
            {"per fold": "naive + HAR-RV + GARCH variance (vol_backtest)", "seconds": med["vol"], "vs one PatchTST fold": med["vol"] / med["patchtst"]},
            {"per fold": f"DLinear training, last fold ({a.epochs} epochs)", "seconds": med["dlinear"], "vs one PatchTST fold": med["dlinear"] / med["patchtst"]},
            {"per fold": f"PatchTST training, last fold ({a.epochs} epochs)", "seconds": med["patchtst"], "vs one PatchTST fold": 1.0}]
    heads_rows = [{"model": m, "head": h, "training windows/s": round(v), "vs the MSE head": round(v / thr[m, "mse"], 3)} for (m, h), v in thr.items()]
    s = pb.forecasts.groupby("fold").size().median()
    body = (table(rows) + "\n\n" + table(heads_rows) + f"\n\n{len(bars)} S&P 500 daily bars, {len(plan)} expanding folds (about {int(s)} origin-horizon rows per fold, "
            f"horizon {cfg.prediction_length}); medians of {a.rounds} rounds. "
            "Heads: each probabilistic head (quantile: pinball loss on 5 levels; nll: the Hugging Face distribution head) beside the MSE head of the same model, "
            "on the same windows (context 64, default model sizes), interleaved; DLinear with the epochs above, median of 2 x rounds + 1 fits; "
            "PatchTST and PatchTSMixer one epoch per fit, median of rounds fits.")
    write_section("Probabilistic baselines", body, "python bench/probabilistic.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
