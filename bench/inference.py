"""Inference speed of the exported models: latency per window at batch 1 and throughput at batch 256, for eager
PyTorch, TorchScript, torch.export and onnxruntime, for PatchTST and PatchTSMixer.

Each model is trained for one epoch on the bundled S&P 500 (speed does not depend on how well it is trained) with
the workbench's default architecture (context 64, d_model 128, 2 layers, 8 heads, patch 8, horizon 1, 16 feature
channels), exported with `finsight.export.export_model` (which also checks parity), and every runtime is loaded from
the exported file the way its runtime loads it. Inputs are real test windows, made before timing.

    python bench/inference.py [--models patchtst patchtsmixer] [--seconds 3] [--threads 2]
"""
from __future__ import annotations
import argparse, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, str(Path(__file__).parent))
from _report import table, write_section, timings
from finsight.data.sources import load_bundled
from finsight.features import BasicFeatureEngineering
from finsight.models import ModelConfig
from finsight.training import ModelTrainingFacade
from finsight.export import export_model, load_exported
from finsight.hardware import resolve_device

RUNTIMES = [("eager PyTorch", None), ("TorchScript (torch.jit.load)", "torchscript"), ("torch.export (.pt2)", "torch_export"),
            ("onnxruntime (CPU EP)", "onnx")]


def train(model: str):
    sp = load_bundled("SP500"); n = len(sp)
    cfg = ModelConfig(context_length=64, prediction_length=1, d_model=128, n_heads=8, num_layers=2, patch_length=8, num_epochs=1, batch_size=64, seed=0)
    f = ModelTrainingFacade(checkpoint_root=tempfile.mkdtemp(), progress=False)
    return f.train_model_sync("SP500", "1d", model, sp.iloc[:int(n * .7)], sp.iloc[int(n * .7):int(n * .85)], BasicFeatureEngineering(), cfg,
                              test_data=sp.iloc[int(n * .85):]).model


DEVICE = torch.device("cpu")


def runner(tm, res, fmt):
    "(call on a prepared input, prepare an input, seconds to load) for one runtime (torch runtimes on DEVICE, onnxruntime on the CPU)."
    t = time.perf_counter()
    if fmt is None: m = tm.adapter.module.eval().to(DEVICE)
    elif fmt == "onnx":
        s = load_exported(res.path("onnx"), "onnx").runtime
        return (lambda x: s.run(None, {"past_values": x})), (lambda x: np.ascontiguousarray(x.numpy())), time.perf_counter() - t
    else:
        m = load_exported(res.path(fmt), fmt).runtime
        if DEVICE.type != "cpu": m = m.to(DEVICE)
    load = time.perf_counter() - t
    def call(x):
        with torch.inference_mode(): y = m(x)
        if DEVICE.type == "cuda": torch.cuda.synchronize()
        return y
    return call, (lambda x: x.contiguous().to(DEVICE)), load


def bench_model(model: str, seconds: float) -> list[dict]:
    t = time.perf_counter(); tm = train(model); train_s = time.perf_counter() - t
    res = export_model(tm, "all", Path(tempfile.mkdtemp()) / model)
    print(f"{model}: trained in {train_s:.1f} s; export + check seconds: " + ", ".join(f"{f} {r.seconds:.2f}" for f, r in res.formats.items()), flush=True)
    ds = tm.windows.test
    w1 = [ds.batch(torch.tensor([i]))[0] for i in range(0, min(len(ds), 64))]
    w256 = [ds.batch(torch.arange(s, s + 256))[0] for s in range(0, len(ds) - 256, 97)][:4]
    rows, base = [], {}
    for label, fmt in RUNTIMES:
        if DEVICE.type != "cpu" and fmt == "torch_export": continue   # an exported program moves devices only through a pass: CPU numbers only
        call, prep, load_s = runner(tm, res, fmt)
        t1 = timings(call, [prep(x) for x in w1], seconds, 200, 20) * 1e3
        t256 = timings(call, [prep(x) for x in w256], seconds, 10, 3)
        lat, tput = float(np.median(t1)), 256 / float(np.median(t256))
        if fmt is None: base = {"lat": lat, "tput": tput}
        r = res.formats[fmt] if fmt else None
        rows.append({"model": model, "runtime": label, "batch 1 ms/window (median)": lat, "batch 1 p90 ms": float(np.percentile(t1, 90)),
                     "batch 256 windows/s": tput, "speed-up b1 / b256 vs eager": f"{base['lat'] / lat:.2f}x / {tput / base['tput']:.2f}x",
                     "export + check s": f"{r.seconds:.2f}" if r else "-", "load s": load_s, "max rel error": f"{r.max_rel_error:.1e}" if r else "-"})
        print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["patchtst", "patchtsmixer"]); ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where the torch runtimes run: cpu, or cuda (bench/gpu_check.sh); onnxruntime stays on the CPU")
    a = ap.parse_args()
    global DEVICE
    DEVICE = resolve_device(a.device)
    torch.set_num_threads(a.threads); warnings.filterwarnings("ignore")
    rows = [r for m in a.models for r in bench_model(m, a.seconds)]
    body = table(rows) + (
        f"\n\nPatchTST and PatchTSMixer with the default architecture (context 64, 16 channels, d_model 128, 2 layers, horizon 1), one epoch "
        f"on the bundled S&P 500. Batch 1: median and 90th percentile of single-window calls over >= {a.seconds:g} s (>= 200 calls, "
        f"after 20 warm-up calls); batch 256: 256 / median call time over >= {a.seconds:g} s (>= 10 calls). {a.threads} intra-op threads "
        "for torch; onnxruntime with its defaults (all graph optimisations, one thread per core). Inputs are prepared before timing "
        "(tensors for torch, contiguous float32 arrays for onnxruntime). *export + check s*: writing the format and loading it back "
        "for the parity check at batch 128 and 1 (the Triton repository reuses the ONNX and TorchScript files). *load s*: loading the "
        "exported file as its runtime does. *max rel error*: max |exported - trained| / max |trained| on 128 test windows. "
        "The time MLflow logging adds to a run is measured by the tracking benchmark.")
    gpu = f" on {torch.cuda.get_device_name(DEVICE)}" if DEVICE.type == "cuda" else ""
    write_section(f"Inference{gpu}", body, "python bench/inference.py" + (f" --device {a.device} --seconds {a.seconds:g}" if gpu else ""))


if __name__ == "__main__":
    main()
