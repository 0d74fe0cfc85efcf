"""Training throughput: our trainer against a bare loop over pre-built tensors and against transformers.Trainer.

For PatchTST and PatchTSMixer (10 channels, context 64, horizon 1, d_model 128, batch 64, CPU, 2 threads) this
measures training windows per second of
  (a) a bare eager loop over pre-built tensors with the same module (the floor of plain eager training),
  (b) `transformers.Trainer` over a per-item dataset that slices a DataFrame in __getitem__ (granite-tsfm's
      ForecastDFDataset would be the natural choice, but granite-tsfm 0.3.11 requires torch<2.12),
  our `finsight.training.fit` in its default settings,
and with its fast options (bf16 autocast, fast dropout masks, torch.compile), each against (a), with the validation
loss (fp32 eval) reached, and compile time reported separately.

    python bench/train.py [--windows 4096] [--epochs 3] [--repeat 5] [--models patchtst patchtsmixer] [--no-compile]
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
from finsight.hardware import plan_precision, resolve_device
from finsight.training import _val_loss, fit
from contextlib import nullcontext
from tqdm.auto import tqdm

CH, CTX, H, BS = 10, 64, 1, 64
FAST = {"mixed_precision": True, "fast_dropout": True}   # the README's fast settings: what the precision plan makes of them here
DEFAULTS, PLANNED = "finsight fit, defaults (fp32 eager, grad clipping)", "finsight fit, fast settings (mixed_precision=True, fast_dropout=True), as planned"


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
    return ModelConfig(**{"context_length": CTX, "prediction_length": H, "d_model": 128, "n_heads": 8, "num_layers": 2, "batch_size": BS, "num_epochs": epochs,
                          "patch_length": 8, "learning_rate": 1e-3, "seed": 0, "early_stopping_patience": 200, **kw})


DEVICE = torch.device("cpu")


def _sync():
    if DEVICE.type == "cuda": torch.cuda.synchronize()


def bare_loop(model, x, y, epochs):
    "(a): the same module, pre-built (N, ctx, C) tensors, AdamW, nothing else."
    ad = ModelFactory.create(model, cfg(model, epochs), CH, 0); m = ad.module.train().to(DEVICE)
    X = torch.as_tensor(x).unfold(0, CTX, 1).transpose(1, 2)[: len(x) - CTX - H + 1].contiguous().to(DEVICE)
    Y = torch.as_tensor(y)[CTX:].unfold(0, H, 1)[: len(X)].contiguous().to(DEVICE)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4); g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        for idx in torch.randperm(len(X), generator=g).split(BS):
            idx = idx.to(DEVICE); loss = torch.nn.functional.mse_loss(m(X[idx]), Y[idx]); opt.zero_grad(); loss.backward(); opt.step()
        _sync(); times.append(time.perf_counter() - t)
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
    res = fit(ad, tr, None, progress=False, device=DEVICE)
    total = time.perf_counter() - t0
    ep = [h["seconds"] for h in res.history]
    steady = _steady(len(tr), ep)
    vl = _val_loss(ad.module, va, DEVICE, nullcontext, 256)
    return {"wps": steady, "precision": res.precision, "fast_dropout": res.plan.get("precision.fast_dropout"), "first_epoch_s": ep[0], "steady_epoch_s": float(np.mean(ep[1:])) if len(ep) > 1 else ep[0], "val_loss": vl, "total_s": total, "n": len(tr)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=4096); ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["patchtst", "patchtsmixer"]); ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--repeat", type=int, default=5, help="rounds; each round runs every eager variant once, in turn (best round kept)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds for the validation-loss comparison of the fast options (0: skip it)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (bench/gpu_check.sh): on a GPU (b) is left out")
    a = ap.parse_args()
    global DEVICE
    DEVICE = resolve_device(a.device)
    torch.set_num_threads(2); warnings.filterwarnings("ignore")
    x, y = data(a.windows)
    rows, verdicts = [], []
    for model in a.models:
        eager = {"(a) bare eager loop, pre-built tensors": lambda: {"wps": bare_loop(model, x, y, a.epochs)}}
        if DEVICE.type == "cpu": eager["(b) transformers.Trainer, per-item DataFrame dataset"] = lambda: {"wps": hf_trainer(model, x, a.epochs)}
        eager |= {name: (lambda kw=kw: ours(model, x, y, a.epochs, **kw)) for name, kw in [
            (DEFAULTS, {}),
            ("finsight fit, mixed precision forced (bf16 autocast on CPU)", {"mixed_precision": "force"}),
            ("finsight fit, fast dropout", {"fast_dropout": True}),
            (PLANNED, FAST)]}
        best, rounds = {}, []
        for r in range(a.repeat):  # interleaved rounds: a noisy minute hurts every variant alike
            rounds.append({})
            for name, f in eager.items():
                res = f(); rounds[-1][name] = res["wps"]; print(model, r, name, round(res["wps"]), flush=True)
                if name not in best or res["wps"] > best[name]["wps"]: best[name] = res
        plan = plan_precision(DEVICE, **FAST, warn=False)
        ratio = float(np.median([rd[PLANNED] / rd[DEFAULTS] for rd in rounds]))
        goal = 1.3 if plan.dtype == "bf16" and DEVICE.type == "cpu" else 0.97
        verdicts.append(f"{model}: the plan for the fast settings here is {plan}; it trains at {ratio:.2f}x fp32 eager (median of rounds; "
                        f"goal >= {goal}: {'met' if ratio >= goal else f'missed by {goal - ratio:.2f}'})")
        print(verdicts[-1], flush=True)
        if not a.no_compile:
            for name, kw in [("finsight fit, torch.compile", {"compile": True}), ("finsight fit, mixed precision + torch.compile", {"mixed_precision": True, "compile": True})]:
                best[name] = ours(model, x, y, a.epochs, **kw); best[name]["compile_s"] = max(best[name]["first_epoch_s"] - best[name]["steady_epoch_s"], 0.0)
        A = "(a) bare eager loop, pre-built tensors"; base = best[A]["wps"]
        for name, r in best.items():
            per_round = [rd[name] / rd[A] for rd in rounds if name in rd]
            rows.append({"model": model, "variant": name, "used": r.get("precision", "-") + (" + fast dropout" if r.get("fast_dropout") else ""),
                         "windows/s": r["wps"], "vs (a)": r["wps"] / base,
                         "vs (a), median of rounds": float(np.median(per_round)) if per_round else "-",
                         "val loss": r.get("val_loss", "-"), "compile s": r.get("compile_s", "-")})
            print(rows[-1], flush=True)
    body = table(rows) + (f"\n\nThe workload is what the workbench trains: {CH} engineered channels of synthetic hourly bars, target the "
                          f"standardised log return of the close, context {CTX}, horizon {H}, d_model 128, 2 layers, dropout 0.1, batch {BS}, {a.windows} windows x {a.epochs} epochs, "
                          f"2 threads. Every eager variant runs once per round, in turn, for {a.repeat} rounds (the machine is shared and its speed drifts by "
                          "+-20% from minute to minute; interleaving spreads that over all variants): windows/s and vs (a) are each variant's best round, "
                          "'median of rounds' the median over rounds of the variant's speed over (a)'s in the same round. Compiled variants run once. Windows/s count the epochs after the first "
                          "(the first warms up; torch.compile compiles there, shown as compile s); our trainer's numbers exclude validation. "
                          "(a) uses torch's default AdamW (foreach) and the model's own modules; our trainer always uses the fused AdamW kernel and, on the CPU, a softmax that avoids torch's slow kernel over a short last dimension (`NarrowSoftmax`: PatchTSMixer's gating over 8 patches). Fast dropout: `ModelConfig(fast_dropout=True)` "
                          "(masks from 16-bit slices of 64-bit draws instead of `bernoulli_`). Val loss: fp32 eval MSE on the last 15% of windows after training.")
    body += ("\n\nThe precision plan (`finsight.hardware.plan_precision`) decides what the fast settings use on this machine: bf16 autocast only "
             "where the CPU has bf16 instructions (else fp32, warned), fast dropout on eager CPU training. Goal: never slower than fp32 eager "
             "(median of rounds >= 0.97x), and >= 1.3x on a CPU with bf16 instructions.\n\n" + "\n".join(f"- {v}" for v in verdicts))
    gpu = f" on {torch.cuda.get_device_name(DEVICE)}" if DEVICE.type == "cuda" else ""
    write_section(f"Training throughput{gpu}", body, f"python bench/train.py --windows {a.windows} --epochs {a.epochs} --repeat {a.repeat}" + (f" --device {a.device}" if gpu else ""))
    if a.seeds: quality(a, x, y)



def quality(a, x, y):
    "Is the fast setting as good as fp32 eager? Validation loss of both over several seeds (same seed: same initial weights and batch order)."
    rows = []
    for model in a.models:
        pairs = []
        for seed in tqdm(range(a.seeds), desc=f"{model} seeds"):
            pairs.append((ours(model, x, y, a.epochs, seed=seed)["val_loss"], ours(model, x, y, a.epochs, seed=seed, **FAST)["val_loss"]))
        d = np.array(pairs)
        diff = d[:, 1] - d[:, 0]
        rows.append({"model": model, "seeds": a.seeds, "fp32 eager val loss": f"{d[:, 0].mean():.4f} ± {d[:, 0].std(ddof=1):.4f}",
                     "fast settings val loss": f"{d[:, 1].mean():.4f} ± {d[:, 1].std(ddof=1):.4f}",
                     "paired difference (fast - fp32)": f"{diff.mean():+.4f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.4f} (s.e.)",
                     "fast no worse in": f"{int((diff <= 0).sum())} of {len(diff)} seeds"})
        print(rows[-1], flush=True)
    body = table(rows) + (f"\n\nThe throughput workload ({a.windows} windows x {a.epochs} epochs), trained with seeds 0..{a.seeds - 1} in fp32 eager (the defaults) and with "
                          "`mixed_precision=True, fast_dropout=True` (as the precision plan makes them here); val loss is the fp32 eval MSE on the last 15% of windows, mean ± standard deviation over seeds. "
                          "One seed gives both runs the same initial weights and batch order, so the paired difference isolates the setting.")
    write_section("Training quality of the fast options", body, f"python bench/train.py --windows {a.windows} --epochs {a.epochs} --seeds {a.seeds}")


if __name__ == "__main__":
    main()
