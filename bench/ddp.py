"""Data-parallel training on the CPU: DDP on 2 processes x 1 thread beside 1 process x 2 threads (and x 1 thread).

PatchTST in its default size (ModelConfig defaults), 10 synthetic channels, context 64, horizon 1, batch 64 (the global
batch: 32 windows per rank under DDP), `finsight.training.fit` with the same windows and seed in every variant. Windows/s
count the last epoch (the first warms up); DDP ranks are started by `finsight.distributed.launch` (torch's elastic_launch,
gloo) and their start-up is not counted. Each variant runs `--rounds` times in turn; the best round is shown.

    python bench/ddp.py [--windows 1024] [--epochs 2] [--rounds 2]
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, str(Path(__file__).parent))
from _report import table, write_section
from finsight.data.windows import WindowDataset
from finsight.models import ModelConfig, ModelFactory
from finsight.training import fit
from finsight.distributed import DDPRun, init_distributed, launch

CH, CTX, H, BS = 10, 64, 1, 64


def windows(n: int) -> WindowDataset:
    "`n` windows of 10 smooth random channels (seeded)."
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(n + CTX + H - 1, CH)), 0).astype("float32") / 30
    return WindowDataset(x, x[:, 0], np.ones(len(x)), CTX, H)


def train(n: int, epochs: int, parallel=None) -> float:
    "Windows/s of the last epoch of `fit` on `n` windows."
    cfg = ModelConfig(context_length=CTX, prediction_length=H, batch_size=BS, num_epochs=epochs, seed=0, early_stopping_patience=100)
    torch.manual_seed(0); ad = ModelFactory.create("patchtst", cfg, CH, 0)
    ds = windows(n)
    res = fit(ad, ds, progress=False, parallel=parallel)
    return len(ds) / res.history[-1]["seconds"]


def rank(n: int, epochs: int) -> float:
    "One DDP rank (under `launch`)."
    import warnings; warnings.filterwarnings("ignore", message=".*BatchNorm.*")   # PatchTST's BatchNorm: per-rank statistics on CPU (noted in the table)
    par, _ = init_distributed("cpu")
    try: return train(n, epochs, par)
    finally: torch.distributed.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--windows", type=int, default=1024); ap.add_argument("--epochs", type=int, default=2); ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    best = {}
    for _ in range(a.rounds):
        for name, threads in (("1 process x 2 threads", 2), ("1 process x 1 thread", 1)):
            torch.set_num_threads(threads); best[name] = max(best.get(name, 0), train(a.windows, a.epochs))
        t0 = time.perf_counter(); out = launch(2, rank, a.windows, a.epochs, threads=1)
        best["DDP, 2 processes x 1 thread (gloo)"] = max(best.get("DDP, 2 processes x 1 thread (gloo)", 0), out[0]); start = time.perf_counter() - t0
    torch.set_num_threads(2); base = best["1 process x 2 threads"]
    rows = [{"variant": k, "windows/s": v, "vs 1 process x 2 threads": v / base} for k, v in best.items()]
    body = table(rows) + (f"\n\nPatchTST default size (ModelConfig defaults), 10 channels, context 64, horizon 1, global batch {BS}, {a.windows} windows x {a.epochs} epochs, "
                          f"best of {a.rounds} rounds; windows/s of the last epoch (the DDP launch, with its rank start-up, took {start:.1f} s in the last round). "
                          "Under DDP each rank trains on 32 windows of each batch and the gradients are all-reduced every step; on the CPU PatchTST's BatchNorm "
                          "normalises with each rank's part (torch's SyncBatchNorm needs CUDA). The machine is shared with other work (2 threads in one process suffer most "
                          "when another job takes a core): expect large swings, and rerun on a quiet machine.")
    write_section("Data-parallel training (CPU)", body, f"python bench/ddp.py --windows {a.windows} --epochs {a.epochs} --rounds {a.rounds}")


if __name__ == "__main__":
    main()
