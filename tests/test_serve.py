"""finsight.serve and its commands against a real MLflow sqlite store and MLflow's scoring server on 127.0.0.1.

A tiny DLinear is trained twice on the bundled S&P 500, both runs are logged and registered (`log_training_run`), the
better one promoted; then every model URI form resolves to the model that was trained; `finsight predict`, `export`,
`models list|show|promote` run in process; `finsight serve models:/<name>@champion` runs as a subprocess and answers
raw bars over HTTP exactly as `predict` does in process, with `every_window`; bad URIs exit 2 with one line, and bad
request bodies get HTTP 400 with a message, never 500. Tracking URIs are passed explicitly (never
`mlflow.set_tracking_uri`, which would leak MLFLOW_TRACKING_URI into later notebook kernels).
"""
import contextlib, io, json, os, subprocess, sys, tempfile, urllib.error, urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from finsight.cli import main
from finsight.data.sources import load_bundled
from finsight.features import BasicFeatureEngineering
from finsight.models import ModelConfig
from finsight.pipeline import log_training_run
from finsight.serve import bars_payload, model_dir, promote, resolve_model, wait_for_server
from finsight.testing import free_port
from finsight.tracking import MLflowExperimentTracker
from finsight.training import ModelTrainingFacade, predict

NAME = "finsight-SP500-1d-dlinear"
CLI = [sys.executable, "-c", "import sys; from finsight.cli import main; sys.exit(main())"]


def _train(sp, seed):
    n = len(sp); tr, va, te = sp.iloc[:int(n * .7)], sp.iloc[int(n * .7):int(n * .85)], sp.iloc[int(n * .85):]
    cfg = ModelConfig(context_length=32, prediction_length=2, num_epochs=1, batch_size=128, seed=seed)
    f = ModelTrainingFacade(checkpoint_root=tempfile.mkdtemp(prefix="ckpt-"), progress=False)
    return f.train_model_sync("SP500", "1d", "dlinear", tr, va, BasicFeatureEngineering(), cfg, test_data=te, run_id=f"serve-{seed}-{os.getpid()}")


def _cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def sp():
    return load_bundled("SP500")


@pytest.fixture(scope="module")
def store(tmp_path_factory, sp):
    "Two versions of one registered model in a temporary sqlite store, the better validation rel_mae promoted to champion."
    d = tmp_path_factory.mktemp("store"); uri = f"sqlite:///{d / 'mlflow.db'}"
    tracker = MLflowExperimentTracker(uri, fallback=False, runs_dir=d, experiment_name="serve")
    models = {}
    for seed in (0, 1):
        out = _train(sp, seed); models[log_training_run(tracker, out, sp)] = out
    best = promote(NAME, tracking_uri=uri)
    return SimpleNamespace(uri=uri, dir=d, models=models, best=best, champion=models[best["run_id"]].model)


def test_every_uri_form_resolves_to_the_trained_model(store, sp, tmp_path):
    bars = sp.iloc[-300:]
    assert store.best["candidates"] == 2 and store.best["val_rel_mae"] == pytest.approx(min(o.metrics.val.rel_mae for o in store.models.values()))
    champion = predict(store.champion, bars)
    for uri in (f"models:/{NAME}@champion", f"models:/{NAME}/{store.best['version']}", f"runs:/{store.best['run_id']}/model", store.best["run_id"],
                model_dir(f"models:/{NAME}@champion", tmp_path / "dl", store.uri)):
        pd.testing.assert_frame_equal(predict(resolve_model(uri, store.uri), bars), champion, obj=str(uri))
    other = next(r for r in store.models if r != store.best["run_id"])
    pd.testing.assert_frame_equal(predict(resolve_model(other, store.uri), bars), predict(store.models[other].model, bars))


def test_bad_model_uris_exit_2_with_one_line(store):
    run = store.best["run_id"]
    cases = {f"models:/nope@champion": "does not exist", f"models:/{NAME}@nosuchalias": "does not exist", f"models:/{NAME}/9": "does not exist",
             "runs:/0123456789abcdef0123456789abcdef/model": "does not exist", f"runs:/{run}/plots": "not an MLflow model",
             f"runs:/{run}/nothing": "does not exist", "models:/a/b/c": "malformed", "no/such/model.pt": "does not exist"}
    for uri, why in cases.items():
        for cmd in (["predict", uri], ["export", uri], ["serve", uri, "--port", free_port()]):
            rc, out, err = _cli(*cmd, "--tracking-uri", store.uri)
            assert rc == 2 and err.count("\n") == 1 and uri in err and why in err, (cmd, rc, err)


def test_predict_command(store, sp, tmp_path):
    rc, out, err = _cli("predict", f"models:/{NAME}@champion", "--tracking-uri", store.uri, "--symbol", "SP500")
    want = predict(store.champion, sp)
    assert rc == 0 and f"{want['forecast'].iloc[-1]:.4f}" in out and "2019-01-02" in out, (out, err)
    rc, out, err = _cli("predict", store.best["run_id"], "--tracking-uri", store.uri, "--every-window", "--out", tmp_path / "f.parquet")
    got, want = pd.read_parquet(tmp_path / "f.parquet"), predict(store.champion, sp, every_window=True)
    assert rc == 0 and len(got) == len(want) > 1000, err
    np.testing.assert_allclose(got[["h1", "h2"]].to_numpy(), want[["h1", "h2"]].to_numpy())
    assert _cli("predict", store.best["run_id"], "--tracking-uri", store.uri, "--timeframe", "1h")[0] == 2


def test_export_command(store, sp, tmp_path):
    rc, out, err = _cli("export", f"runs:/{store.best['run_id']}/model", "--formats", "pt", "onnx", "--out", tmp_path / "ex", "--tracking-uri", store.uri)
    assert rc == 0 and "onnx" in out and str(tmp_path / "ex") in out, (out, err)
    assert json.loads((tmp_path / "ex" / "export.json").read_text())["formats"]["onnx"]["passed"]
    pd.testing.assert_frame_equal(predict(resolve_model(tmp_path / "ex"), sp.iloc[-300:]), predict(store.champion, sp.iloc[-300:]))
    assert _cli("export", store.best["run_id"], "--formats", "gif", "--tracking-uri", store.uri)[0] == 2


def test_models_commands(store):
    rc, out, _ = _cli("models", "list", "--tracking-uri", store.uri)
    assert rc == 0 and NAME in out and f"champion=v{store.best['version']}" in out
    assert "no registered models" in _cli("models", "list", "--name-contains", "NASDAQ", "--tracking-uri", store.uri)[1]
    rc, out, _ = _cli("models", "show", NAME, "--tracking-uri", store.uri)
    rows = [l.split() for l in out.splitlines()[1:]]
    assert rc == 0 and "val_rel_mae" in out and [r[0] for r in rows] == ["2", "1"]
    assert next(r for r in rows if r[0] == store.best["version"])[1] == "champion"
    for argv in (["models", "promote", NAME], ["models", "promote", "--symbol", "SP500", "--model", "dlinear"]):
        rc, out, _ = _cli(*argv, "--alias", "best", "--tracking-uri", store.uri)
        assert rc == 0 and f"best -> version {store.best['version']}" in out, out
    assert _cli("models", "show", "finsight-NOPE-1d-dlinear", "--tracking-uri", store.uri)[0] == 2
    assert _cli("models", "promote", "finsight-NOPE-1d-dlinear", "--tracking-uri", store.uri)[0] == 2


# ---- MLflow's scoring server, started by `finsight serve` ----

@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    "`finsight serve models:/<name>@champion` on a free port of 127.0.0.1, stopped after the module."
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    env = os.environ | {"MLFLOW_TRACKING_URI": store.uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log, "w") as f:
        proc = subprocess.Popen(CLI + ["serve", f"models:/{NAME}@champion", "--port", str(port), "--host", "127.0.0.1"], env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        try: wait_for_server(url, proc, timeout=120)
        except Exception: pytest.fail(f"finsight serve did not start: {log.read_text()[-3000:]}")
        yield SimpleNamespace(url=url, proc=proc, log=log)
    finally:
        proc.terminate()
        try: proc.wait(30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()


def _post(url: str, body, content_type="application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read() or b"{}")


def _frame(answer: dict) -> pd.DataFrame:
    return pd.DataFrame(answer["predictions"])


def test_served_model_answers_raw_bars_like_predict(server, store, sp):
    assert server.url in server.log.read_text() and "curl" in server.log.read_text()
    bars = sp.iloc[-200:]
    status, answer = _post(server.url, bars_payload(bars))
    want = predict(store.champion, bars)
    assert status == 200, answer
    got = _frame(answer)
    np.testing.assert_allclose(got["forecast"].to_numpy(), want["forecast"].to_numpy(), rtol=1e-6)
    if "timestamp" in got: assert list(pd.to_datetime(got["timestamp"], utc=True)) == list(want.index)


def test_served_model_every_window(server, store, sp, tmp_path):
    import mlflow.models
    sig = mlflow.models.Model.load(str(model_dir(f"models:/{NAME}@champion", tmp_path, store.uri) / "MLmodel")).signature
    assert [p.name for p in sig.params.params] == ["every_window", "horizon", "calendar"]   # without a params schema MLflow drops them silently
    bars = sp.iloc[-200:]
    status, answer = _post(server.url, bars_payload(bars, every_window=True))
    want = predict(store.champion, bars, every_window=True)
    assert status == 200, answer
    got = _frame(answer)
    assert len(got) == len(want) > 1
    np.testing.assert_allclose(got[["h1", "h2"]].to_numpy(), want[["h1", "h2"]].to_numpy(), rtol=1e-6)


def test_bad_requests_get_400_with_a_message(server, sp):
    bars = sp.iloc[-200:]
    cases = [(b"this is not JSON {", "JSON"), ({"foo": [1, 2]}, "dataframe_split"), ([1, 2, 3], "list"),
             (bars_payload(bars.drop(columns="close")), "close"), (bars_payload(bars.iloc[-10:]), "10 bars are too few to predict"),
             ({"dataframe_split": {"columns": ["timestamp", "open"], "data": [["not a time", "x"]]}}, "")]
    for body, hint in cases:
        status, answer = _post(server.url, body)
        assert status == 400 and answer.get("message"), (body if isinstance(body, bytes) else str(body)[:200], status, answer)
        assert hint in answer["message"], (hint, answer)   # the workbench's own message, not only in a stack trace
    assert server.proc.poll() is None   # still serving
