"""Serving speed, from raw bars to a price forecast, per request: the MLflow pyfunc model in process
(`mlflow.pyfunc.load_model` of the folder `finsight.registry.save_model_dir` writes), MLflow's scoring server over
HTTP on 127.0.0.1 (what `finsight serve` starts: one uvicorn worker), and the `finsight.serving` reader of an ONNX
export with onnxruntime (`load_export(folder, "onnx").predict(bars)`).

Each request carries the bars one forecast needs (warm-up + context, the last ones of the bundled S&P 500), as a
client sends them: a frame with a `timestamp` column in process, a JSON `dataframe_split` body over HTTP, a
DataFrame for the reader. Batch 1 is one request at a time, timed one by one (latency); the throughput row sends 64
requests at once from 64 client threads and divides 64 by the wall time until the last answer (repeated, best
round). Models: DLinear and a tiny PatchTST (d_model 64, the smallest allowed, one layer), one epoch on the last 1,500 days (speed does not depend
on how well a model is trained). The forecasts of every path are checked against `predict` before timing.

    python bench/serving.py [--models dlinear patchtst] [--seconds 2]
"""
from __future__ import annotations
import argparse, json, subprocess, sys, tempfile, time, urllib.request, warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
import pandas as pd
sys.path.insert(0, str(Path(__file__).parent))
from _report import table, write_section, timings
from finsight.data.sources import load_bundled
from finsight.export import export_model
from finsight.features import BasicFeatureEngineering
from finsight.models import ModelConfig
from finsight.registry import save_model_dir
from finsight.serve import bars_payload, serve_command, wait_for_server
from finsight.testing import free_port
from finsight.training import ModelTrainingFacade, predict

CONFIGS = {"dlinear": dict(), "patchtst": dict(d_model=64, n_heads=4, num_layers=1, patch_length=8)}


def train(model: str, sp: pd.DataFrame):
    sp = sp.iloc[-1500:]; n = len(sp)   # the last 1,500 days: training time is not what this measures
    cfg = ModelConfig(context_length=64, prediction_length=1, num_epochs=1, batch_size=64, seed=0, **CONFIGS[model])
    f = ModelTrainingFacade(checkpoint_root=tempfile.mkdtemp(), progress=False)
    return f.train_model_sync("SP500", "1d", model, sp.iloc[:int(n * .7)], sp.iloc[int(n * .7):int(n * .85)], BasicFeatureEngineering(), cfg,
                              test_data=sp.iloc[int(n * .85):]).model


def post(url: str, body: bytes) -> list:
    req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r: return json.loads(r.read())["predictions"]


def throughput(url: str, bodies: list[bytes], n: int = 64, rounds: int = 2) -> float:
    "Requests per second for `n` requests sent at once from `n` client threads (the best of `rounds`)."
    best = 0.0
    with ThreadPoolExecutor(n) as ex:
        list(ex.map(lambda b: post(url, b), bodies[:n]))   # warm the server's threads
        for _ in range(rounds):
            t = time.perf_counter(); list(ex.map(lambda i: post(url, bodies[i % len(bodies)]), range(n))); best = max(best, n / (time.perf_counter() - t))
    return best


def bench_model(name: str, sp: pd.DataFrame, seconds: float, tmp: Path) -> list[dict]:
    import mlflow.pyfunc
    from finsight.serving import load_export
    tm = train(name, sp); need = tm.features.warmup_ + tm.config.context_length
    folder = save_model_dir(tm, tmp / name / "pyfunc", bars=sp)
    pyf = mlflow.pyfunc.load_model(str(folder))
    schema = pyf.metadata.get_input_schema()
    cols = [c for c in (schema.input_names() if schema else sp.columns) if c != "timestamp"]   # the columns the model reads (no extra ones: MLflow warns per request)
    bars = [sp[cols].iloc[o - need:o] for o in range(len(sp) - 64, len(sp))]   # 64 different requests: the bars before each of the last 64 days
    want = [predict(tm, b)["forecast"].to_numpy() for b in bars[:8]]
    frames = [b.tz_convert(None).rename_axis("timestamp").reset_index() for b in bars]   # naive UTC times: what the signature's datetime column takes
    bodies = [json.dumps(bars_payload(b)).encode() for b in bars]
    for f, w in zip(frames, want): np.testing.assert_allclose(pyf.predict(f)["forecast"].to_numpy(), w, rtol=1e-5)
    export_model(tm, ["onnx"], tmp / name / "export", windows=sp.iloc[-1000:])
    reader = load_export(tmp / name / "export", "onnx")
    for b, w in zip(bars, want): np.testing.assert_allclose(np.ravel(reader.predict(b))[:len(w)], w, rtol=1e-4)

    rows, t_pyfunc = [], timings(lambda f: pyf.predict(f), frames, seconds)
    port = free_port(); argv, env = serve_command(folder, port=port)
    proc = subprocess.Popen(argv, env=env | {"MLFLOW_DISABLE_TELEMETRY": "true"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"; start = wait_for_server(url, proc)
        for b, w in zip(bodies, want): np.testing.assert_allclose([r["forecast"] for r in post(url, b)], w, rtol=1e-6)
        t_http = timings(lambda b: post(url, b), bodies, seconds); rps = throughput(url, bodies)
    finally:
        proc.terminate(); proc.wait(30)
    t_onnx = timings(lambda b: reader.predict(b), bars, seconds)
    base = np.median(t_pyfunc)
    for path, t in (("pyfunc in process (mlflow.pyfunc.load_model)", t_pyfunc), ("MLflow scoring server, HTTP, one request at a time", t_http),
                    ("finsight.serving reader, onnxruntime", t_onnx)):
        rows.append({"model": name, "path": path, "batch": 1, "p50 ms": 1e3 * np.median(t), "p90 ms": 1e3 * np.percentile(t, 90),
                     "requests/s": 1 / np.median(t), "speed-up vs pyfunc": base / np.median(t)})
    rows.append({"model": name, "path": f"MLflow scoring server, HTTP, 64 requests at once (64 client threads; server up in {start:.1f} s)", "batch": "64 concurrent",
                 "p50 ms": "", "p90 ms": "", "requests/s": rps, "speed-up vs pyfunc": ""})
    return rows


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--models", nargs="+", default=["dlinear", "patchtst"]); ap.add_argument("--seconds", type=float, default=2)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    sp, rows = load_bundled("SP500"), []
    with tempfile.TemporaryDirectory() as t:
        for m in args.models: rows += bench_model(m, sp, args.seconds, Path(t))
    ratios = {r["model"]: r["speed-up vs pyfunc"] for r in rows if r["path"].startswith("finsight.serving")}
    note = ("Goal: the onnxruntime reader at batch 1 at least 3x faster than the pyfunc path: "
            + ", ".join(f"{m} {v:.1f}x ({'met' if v >= 3 else 'not met'})" for m, v in ratios.items()) + ". "
            "Every path starts from raw bars (features computed per request) and its forecasts were checked against `predict` first.")
    write_section("Serving: raw bars to forecast", table(rows, "{:.3g}") + "\n\n" + note, "python bench/serving.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
