"""Global models over a panel: training windows/s from in-memory windows against streamed Parquet shards, and the peak
memory of the streaming dataset against the panel's size on disk (issue 16, items 3 and 6).

A 200-symbol synthetic factor panel (`finsight.data.panel.synthetic_panel`), the default features (16 channels), each
symbol's pipeline and target scaling fitted on its own training rows; PatchTST of `ModelConfig`'s default size
(d_model 128, 2 layers, 8 heads, patch 8) at context 64, horizon 1, batch 64, 2 threads: one model per dataset, their `--steps`
optimizer steps (after `--warmup`) interleaved one by one and each timed, so a shared machine's drift hits both alike.
Memory: a child process per measurement reads one full epoch of the training shards, either streamed (buffer
`--buffer` windows) or loaded whole into tensors, and reports its peak resident memory above what it held before.

    python bench/panel.py [--symbols 200] [--bars 800] [--steps 60] [--device cpu]

Writes the "Panel training: in-memory vs streaming windows" section of docs/benchmarks.md.
"""
from __future__ import annotations
import argparse, json, subprocess, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import table, write_section  # noqa: E402

CTX, H, BS = 64, 1, 64
MiB = 2 ** 20


def build(symbols: int, bars: int, timeframe: str, folder: Path, seed: int = 0):
    "A synthetic panel's windows (per-symbol pipelines, aligned 70/15/15 split) and their training shards in `folder`."
    from finsight.data.panel import synthetic_panel
    from finsight.data.streaming import write_shards
    from finsight.panel_features import panel_windows
    w = panel_windows(synthetic_panel(symbols, bars, timeframe, seed=seed), CTX, H, train_ratio=0.7, val_ratio=0.15)
    write_shards(w.train, folder, rows_per_shard=250_000, channels=w.channels, overwrite=True)
    return w, sum(p.stat().st_size for p in folder.glob("*.parquet"))


def paired_training(datasets: dict, model_cfg, n_channels: int, target: int, steps: int, warmup: int, device) -> dict[str, float]:
    """Training windows/s of each dataset: one PatchTST per dataset (same initial weights), their optimizer steps interleaved
    one by one, each timed from asking its dataset for the batch to the end of the step (`fit`'s work per batch), so the
    drift of a shared machine hits every dataset alike."""
    from finsight.models import ModelFactory
    from finsight.training import make_optimizer
    runs = {}
    for name, ds in datasets.items():
        m = ModelFactory.create("patchtst", model_cfg, n_channels, target).module.to(device).train()
        runs[name] = [m, make_optimizer(m, model_cfg, device), iter(ds.batches(BS, shuffle=True, generator=torch.Generator().manual_seed(0))), 0.0, 0]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(warmup + steps):
        for r in runs.values():
            m, opt, it = r[:3]; sync(); t0 = time.perf_counter()
            x, y = next(it); x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = torch.nn.functional.mse_loss(m(x), y); opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sync()
            if i >= warmup: r[3] += time.perf_counter() - t0; r[4] += len(y)
    return {name: r[4] / r[3] for name, r in runs.items()}


def data_only(ds, windows: int) -> float:
    "Windows/s of serving shuffled batches alone (no model), for `windows` windows."
    t0, n = time.perf_counter(), 0
    for x, y in ds.batches(BS, shuffle=True, generator=torch.Generator().manual_seed(1)):
        n += len(y)
        if n >= windows: break
    return n / (time.perf_counter() - t0)


def _steps_per_second(model, opt, batches, steps: int, warmup: int, wrap=lambda m: m) -> float:
    "Training windows/s of `steps` optimizer steps after `warmup` (each batch's `weight` scales its rank's loss, as `fit` does)."
    m, n, t = wrap(model), 0, 0.0
    for i, (x, y, w, _) in zip(range(warmup + steps), batches):
        t0 = time.perf_counter(); loss = torch.nn.functional.mse_loss(m(x), y) * w
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        if i >= warmup: t += time.perf_counter() - t0; n += len(y)
    return n / t


def _ddp_rank(shards: str, cfg: dict, n_channels: int, target: int, steps: int, warmup: int) -> float:
    "One rank: its share of each global batch of the streamed panel, DDP (gloo) gradients; this rank's windows/s."
    from finsight.distributed import init_distributed
    from finsight.data.streaming import StreamingWindowDataset
    from finsight.models import ModelConfig, ModelFactory
    from finsight.training import make_optimizer
    warnings.filterwarnings("ignore")
    par, dev = init_distributed("cpu")
    try:
        torch.manual_seed(0); c = ModelConfig(**cfg); m = ModelFactory.create("patchtst", c, n_channels, target).module.train()
        ds = StreamingWindowDataset(shards, batch_size=BS, seed=0)
        return _steps_per_second(m, make_optimizer(m, c, dev), ds.shard_batches(BS, par.rank, par.world_size, torch.Generator().manual_seed(0)), steps, warmup, par.wrap)
    finally: torch.distributed.destroy_process_group()


def ddp_rows(shards: Path, model_cfg, n_channels: int, target: int, steps: int, warmup: int) -> list[dict]:
    """DDP rows of the table: 2 processes x 1 thread (gloo, `finsight.distributed.launch`, each rank streaming its share of each
    global batch of `shards`) beside 1 process x 2 threads on the same global batches (batch 64)."""
    from finsight.distributed import launch
    from finsight.data.streaming import StreamingWindowDataset
    from finsight.models import ModelFactory
    from finsight.training import make_optimizer
    torch.set_num_threads(2); torch.manual_seed(0)
    m = ModelFactory.create("patchtst", model_cfg, n_channels, target).module.train()
    ds = StreamingWindowDataset(shards, batch_size=BS, seed=0)
    one = _steps_per_second(m, make_optimizer(m, model_cfg, torch.device("cpu")), ds.shard_batches(BS, 0, 1, torch.Generator().manual_seed(0)), steps, warmup)
    out = launch(2, _ddp_rank, str(shards), model_cfg.to_dict(), n_channels, target, steps, warmup, threads=1)
    two = sum(out.values())   # each rank's windows/s: together, the global batch's
    return [{"windows": "DDP, 2 processes x 1 thread (gloo), streaming", "training windows/s": two, "vs in-memory": ""},
            {"windows": "1 process x 2 threads, streaming (same global batches)", "training windows/s": one, "vs in-memory": ""}]


def rss_child(mode: str, folder: str, buffer: int, chunk: int) -> dict:
    "In a child process: peak resident memory while one epoch of the shards is served streamed, or loaded whole into tensors."
    code = f"""
import json, re, numpy as np, pyarrow.parquet as pq, torch
from finsight.data.streaming import StreamingWindowDataset
status = lambda k: int(re.search(k + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
ds = StreamingWindowDataset({folder!r}, buffer_windows={buffer}, chunk_windows={chunk})
open("/proc/self/clear_refs", "w").write("5")   # reset the peak (VmHWM) to the current RSS: imports' peaks do not count
before = status("VmRSS")
if {mode!r} == "stream":
    n = sum(len(y) for x, y in ds.batches({BS}, shuffle=True))
else:   # the in-memory way: every row of every shard in one tensor, windows as views
    t = [pq.read_table(f, columns=["x", "y"]) for f in ds.files]
    x = torch.from_numpy(np.concatenate([np.asarray(a.column("x").combine_chunks().flatten()).reshape(-1, ds.n_channels) for a in t])); del t
    n = len(x)
print(json.dumps({{"before": before, "peak": status("VmHWM"), "n": n}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(a) -> None:
    from finsight.hardware import resolve_device
    from finsight.models import ModelConfig
    from finsight.data.streaming import StreamingWindowDataset
    torch.set_num_threads(a.threads); warnings.filterwarnings("ignore")
    device = resolve_device(a.device)
    tmp = Path(tempfile.mkdtemp(prefix="finsight-bench-panel-"))
    t0 = time.perf_counter()
    w, disk = build(a.symbols, a.bars, "1d", tmp / "small")
    print(f"panel built and sharded in {time.perf_counter() - t0:.1f} s: {w.train.num_windows:,} training windows, {len(w.channels)} channels", flush=True)
    cfg = ModelConfig(context_length=CTX, prediction_length=H, batch_size=BS, learning_rate=1e-3, seed=0)   # PatchTST's default size
    stream = lambda: StreamingWindowDataset(tmp / "small", buffer_windows=a.buffer, chunk_windows=a.chunk)
    names = ["in-memory (PanelWindowDataset)", "streaming (StreamingWindowDataset)"]
    wps = paired_training(dict(zip(names, (w.train, stream()))), cfg, len(w.channels), w.target_channel, a.steps, a.warmup, device)
    ratio = wps[names[1]] / wps[names[0]]
    feed = {name: data_only(ds, 20_000) for name, ds in zip(names, (w.train, stream()))}
    rows = [{"windows": name, "training windows/s": wps[name], "vs in-memory": wps[name] / wps[names[0]], "data only, windows/s": feed[name]} for name in names]
    print(rows, flush=True)
    rows += ddp_rows(tmp / "small", cfg, len(w.channels), w.target_channel, a.steps, a.warmup)
    print(rows[-2:], flush=True)
    t1 = time.perf_counter()
    _, disk_big = build(a.symbols, a.big_bars, "1h", tmp / "big", seed=1)
    print(f"large panel built in {time.perf_counter() - t1:.1f} s", flush=True)
    mem = []
    for label, folder, size in [(f"{a.symbols} x {a.bars:,} daily bars", tmp / "small", disk), (f"{a.symbols} x {a.big_bars:,} hourly bars", tmp / "big", disk_big)]:
        s, m = rss_child("stream", str(folder), a.buffer, a.chunk), rss_child("memory", str(folder), a.buffer, a.chunk)
        mem.append({"panel": label, "training rows": f"{m['n']:,}", "shards on disk, MiB": size / MiB,
                    f"streaming (buffer {a.buffer:,} windows): peak RSS growth, MiB": (s["peak"] - s["before"]) / MiB,
                    "loaded whole: peak RSS growth, MiB": (m["peak"] - m["before"]) / MiB})
        print(mem[-1], flush=True)
    buf_mib = stream().buffer_bytes / MiB
    verdict = f"streaming at {ratio:.2f}x in-memory training throughput (goal >= 0.90: {'met' if ratio >= 0.9 else 'missed'})"
    gpu = f" on {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    body = (table(rows) + f"\n\n{verdict}.\n\n" + table(mem) +
            f"\n\n{a.symbols} synthetic symbols (`synthetic_panel`, 3 shared AR(1) factors), default features ({len(w.channels)} channels), "
            f"per-symbol pipelines and target scaling fitted on each symbol's training rows, aligned 70/15/15 split; {w.train.num_windows:,} training windows. "
            f"PatchTST of the default size (d_model 128, 2 layers, 8 heads, patch 8), context {CTX}, horizon {H}, batch {BS}, {a.threads} threads{gpu}: "
            f"{a.steps} optimizer steps after {a.warmup} warm-up steps each, one model per dataset (same initial weights), their steps interleaved one by one "
            "and each timed from asking for the batch to the end of the optimizer step, so a shared machine's drift hits both alike. Streaming reads Parquet shards (250,000 rows each, row groups of 1,024) in chunks of "
            f"{a.chunk} windows, {a.buffer:,} windows per shuffle buffer ({buf_mib:.1f} MiB of rows). 'Data only': serving 20,000 shuffled windows without a model. "
            "Memory: a child process serves one full epoch of the training shards; its peak RSS during the epoch (VmHWM, reset before it) minus its RSS before. "
            "'Loaded whole' reads every shard into one tensor, as the in-memory windows hold it. DDP: two ranks started by `finsight.distributed.launch` (gloo), "
            "each streaming its share of every global batch of 64 and all-reducing gradients each step, beside one process with 2 threads on the same batches; "
            "on the CPU PatchTST's BatchNorm normalises with each rank's part (SyncBatchNorm needs CUDA).")
    write_section(f"Panel training: in-memory vs streaming windows{gpu}", body, "python bench/panel.py" + (f" --device {a.device}" if gpu else ""))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=200); ap.add_argument("--bars", type=int, default=800)
    ap.add_argument("--big-bars", type=int, default=8_000, help="bars per symbol of the larger panel (memory rows only)")
    ap.add_argument("--steps", type=int, default=60); ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--buffer", type=int, default=8_192); ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2); ap.add_argument("--device", default="cpu")
    main(ap.parse_args())
