"""Training throughput: our trainer against a bare loop over pre-built tensors and against transformers.Trainer.

For PatchTST and PatchTSMixer (10 channels, context 64, horizon 1, d_model 128, batch 64, CPU, 2 threads) this
measures training windows per second of
  (a) a bare eager loop over pre-built tensors with the same module (the floor of plain eager training),
  (b) `transformers.Trainer` over a per-item dataset that slices a DataFrame in __getitem__ (granite-tsfm's
      ForecastDFDataset would be the natural choice, but granite-tsfm 0.3.11 requires torch<2.12),
  our `finsight.training.fit` in its default settings, and with its fast options (bf16 autocast, torch.compile),
each against (a), with the validation loss (fp32 eval) reached, and compile time reported separately.

    python bench/train.py [--windows 8192] [--epochs 3] [--models patchtst patchtsmixer]
"""
from __future__ import annotations
import argparse, os, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import torch
sys.path.insert(0, str(Path(__file__).parent))
from _report import table, write_section
from finsight.data.windows import WindowDataset
from finsight.models import ModelConfig, ModelFactory
from finsight.training import _val_loss, fit
from contextlib import nullcontext

CH, CTX, H, BS = 10, 64, 1, 64


def data(n_windows: int, seed=0):
    "What the workbench trains: 10 engineered channels of synthetic hourly bars (fitted on the first 70%), target = standardised log return."
    from finsight.data.sources import synthetic_ohlcv
    from finsight.data.windows import TargetTransform, target_series
    from finsight.features import BasicFeatureEngineering
    bars = synthetic_ohlcv(n_windows + CTX + H + 40, "1h", seed=seed)
    fe = BasicFeatureEngineering(indicators=["sma_20", "ema_20", "rsi", "macd", "log_returns"]).fit(bars.iloc[: int(len(bars) * 0.7)])
    feats = fe.transform(bars)
    cols = ["close", "volume", "high", "low", "open", "sma_20", "ema_20", "rsi", "macd", "log_returns"]
    close = bars["close"].loc[feats.index].to_numpy()
    tt = TargetTransform("log_return").fit(target_series(close[: int(len(close) * 0.7)], "log_return")[1:])
    y = np.nan_to_num(tt.encode(close)).astype("float32")
    return feats[cols].to_numpy("float32")[: n_windows + CTX + H - 1], y[: n_windows + CTX + H - 1]


def cfg(model, epochs, **kw):
    return ModelConfig(context_length=CTX, prediction_length=H, d_model=128, n_heads=8, num_layers=2, batch_size=BS, num_epochs=epochs,
                       patch_length=8, learning_rate=1e-3, seed=0, early_stopping_patience=200, **kw)


def bare_loop(model, x, y, epochs):
    "(a): the same module, pre-built (N, ctx, C) tensors, AdamW, nothing else."
    ad = ModelFactory.create(model, cfg(model, epochs), CH, 0); m = ad.module.train()
    X = torch.as_tensor(x).unfold(0, CTX, 1).transpose(1, 2)[: len(x) - CTX - H + 1].contiguous()
    Y = torch.as_tensor(y)[CTX:].unfold(0, H, 1)[: len(X)].contiguous()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4); g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        for idx in torch.randperm(len(X), generator=g).split(BS):
            loss = torch.nn.functional.mse_loss(m(X[idx]), Y[idx]); opt.zero_grad(); loss.backward(); opt.step()
        times.append(time.perf_counter() - t)
    return _steady(len(X), times)


def _steady(n, times):
    "Windows per second over the epochs after the first (warm-up, compilation)."
    return n * (len(times) - 1) / sum(times[1:]) if len(times) > 1 else n / times[0]


class _DFDataset(torch.utils.data.Dataset):
    "What a user writes without the workbench: slice a DataFrame per item."
    def __init__(self, df): self.df = df
    def __len__(self): return len(self.df) - CTX - H + 1
    def __getitem__(self, i):
        w = self.df.iloc[i:i + CTX + H]
        return {"past_values": torch.tensor(w.iloc[:CTX].to_numpy(), dtype=torch.float32),
                "future_values": torch.tensor(w.iloc[CTX:].to_numpy(), dtype=torch.float32)}


def hf_trainer(model, x, epochs):
    "(b): transformers.Trainer on the bare HF model over a per-item DataFrame dataset."
    from transformers import Trainer, TrainingArguments
    ad = ModelFactory.create(model, cfg(model, epochs), CH, 0)
    ds = _DFDataset(pd.DataFrame(x))
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BS, num_train_epochs=epochs, learning_rate=1e-3,
                             weight_decay=1e-4, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
                             dataloader_num_workers=0, use_cpu=True, seed=0, lr_scheduler_type="constant", max_grad_norm=0.0)
    from transformers import TrainerCallback
    times = []
    class EpochTimer(TrainerCallback):
        def on_epoch_begin(self, *a, **k): self.t = time.perf_counter()
        def on_epoch_end(self, *a, **k): times.append(time.perf_counter() - self.t)
    tr = Trainer(model=ad.module.model, args=args, train_dataset=ds, callbacks=[EpochTimer()])
    tr.train()
    return _steady(len(ds), times)


def ours(model, x, y, epochs, **kw):
    "Our trainer: WindowDataset + fit; windows/s from the epoch times (validation excluded), the first epoch (compile) apart."
    c = cfg(model, epochs, **kw)
    ad = ModelFactory.create(model, c, CH, 0)
    n = len(x); cut = int(n * 0.85)
    tr = WindowDataset(x[:cut], y[:cut], np.ones(cut), CTX, H)
    va = WindowDataset(x[cut - CTX:], y[cut - CTX:], np.ones(n - cut + CTX), CTX, H)
    t0 = time.perf_counter()
    res = fit(ad, tr, None, progress=False)
    total = time.perf_counter() - t0
    ep = [h["seconds"] for h in res.history]
    steady = _steady(len(tr), ep)
    vl = _val_loss(ad.module, va, torch.device("cpu"), nullcontext, 256)
    return {"wps": steady, "first_epoch_s": ep[0], "steady_epoch_s": float(np.mean(ep[1:])) if len(ep) > 1 else ep[0], "val_loss": vl, "total_s": total, "n": len(tr)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=8192); ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--models", nargs="+", default=["patchtst", "patchtsmixer"]); ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs per variant (compiled variants run once)")
    a = ap.parse_args()
    torch.set_num_threads(2); warnings.filterwarnings("ignore")
    x, y = data(a.windows)
    rows = []
    for model in a.models:
        base = max(bare_loop(model, x, y, a.epochs) for _ in range(a.repeat))
        hf = max(hf_trainer(model, x, a.epochs) for _ in range(a.repeat))
        rows.append({"model": model, "variant": "(a) bare eager loop, pre-built tensors", "windows/s": base, "vs (a)": 1.0, "val loss": "-", "compile s": "-"})
        rows.append({"model": model, "variant": "(b) transformers.Trainer, per-item DataFrame dataset", "windows/s": hf, "vs (a)": hf / base, "val loss": "-", "compile s": "-"})
        variants = [("finsight fit, defaults (fp32 eager, grad clipping)", {}),
                    ("finsight fit, bf16 autocast", {"mixed_precision": True})]
        if not a.no_compile:
            variants += [("finsight fit, torch.compile", {"compile": True}), ("finsight fit, bf16 autocast + torch.compile", {"mixed_precision": True, "compile": True})]
        for name, kw in variants:
            r = max((ours(model, x, y, a.epochs, **kw) for _ in range(1 if kw.get("compile") else a.repeat)), key=lambda r: r["wps"])
            rows.append({"model": model, "variant": name, "windows/s": r["wps"], "vs (a)": r["wps"] / base, "val loss": r["val_loss"],
                         "compile s": max(r["first_epoch_s"] - r["steady_epoch_s"], 0.0) if kw.get("compile") else "-"})
            print(rows[-1], flush=True)
    body = table(rows) + (f"\n\nThe workload is what the workbench trains: {CH} engineered channels of synthetic hourly bars, target the "
                          f"standardised log return of the close, {CH} channels, context {CTX}, horizon {H}, d_model 128, 2 layers, batch {BS}, {a.windows} windows x {a.epochs} epochs, "
                          "2 threads, best of --repeat runs. Windows/s count the epochs after the first for every variant (the first warms up; "
                          "torch.compile compiles there, shown as compile s); our trainer's numbers exclude validation. Val loss: fp32 eval MSE on the last 15% of windows after training.")
    write_section("Training throughput", body, "python bench/train.py")


if __name__ == "__main__":
    main()
