"""Probabilistic models and the volatility target as jobs: the training template's `target` and `loss` parameters run
through papermill (`finsight run`), and the job's metrics, executed notebook, export and MLflow run follow them."""
import json, os, subprocess, sys
from pathlib import Path
import mlflow
import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parent.parent
FINSIGHT = str(Path(sys.executable).parent / "finsight")
TINY = ["context_length=32", "d_model=64", "n_heads=4", "num_layers=1", "num_epochs=2", "batch_size=128", "prediction_length=3"]


def cli(tmp_path, *args, timeout=400):
    env = {**os.environ, "FINSIGHT_RUNS_DIR": str(tmp_path / "runs"), "MLFLOW_TRACKING_URI": "", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([FINSIGHT, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_a_job_trains_a_distribution_head_on_the_volatility_target(tmp_path):
    """`finsight run SP500 --param target=realized_vol --param loss=nll`: a papermill job of PatchTSMixer with a Student-t
    head forecasting the weekly realised variance. Its metrics hold QLIKE beside naive, its ONNX export outputs every
    quantile (sorted, equal to the model's), and the MLflow run records the config it trained with."""
    r = cli(tmp_path, "run", "SP500", "--model", "patchtsmixer", "--set", *TINY, "vol_window=5", "--param", "target=realized_vol", "loss=nll",
            "--param", 'export_formats=["onnx"]')
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    folder = next((tmp_path / "runs").glob("batch-*/SP500_1d_patchtsmixer"))
    m = json.loads(next(folder.parent.glob("SP500_1d_patchtsmixer_*.metrics.json")).read_text())
    assert (m["config"]["target"], m["config"]["loss"], m["config"]["target_transform"]) == ("realized_vol", "nll", "variance"), m["config"]
    assert {"test_qlike", "test_naive_qlike", "test_rel_qlike", "test_mz_r2"} <= set(m), sorted(m)
    assert m["test_qlike"] > 0 and np.isfinite(m["test_rel_qlike"])
    meta = json.loads(next(folder.rglob("export.json")).read_text())
    assert meta["output_shape"] == ["batch", 3, 5], meta["output_shape"]
    x = np.random.default_rng(0).standard_normal((4, 32, meta["input_shape"][2])).astype("float32")
    y = ort.InferenceSession(str(next(folder.rglob("*.onnx"))), providers=["CPUExecutionProvider"]).run(None, {"past_values": x})[0]
    assert y.shape == (4, 3, 5) and (np.diff(y, axis=-1) >= 0).all() and np.isfinite(y).all()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")   # not mlflow.set_tracking_uri: it sets the variable every later process inherits
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert (run.data.params["target"], run.data.params["loss"], run.data.params["target_transform"]) == ("realized_vol", "nll", "variance"), run.data.params


def test_a_job_refuses_a_head_the_model_lacks(tmp_path):
    "`--param loss=nll` on DLinear: exit 2 with one line naming the loss and the heads DLinear has; nothing trained."
    r = cli(tmp_path, "run", "SP500", "--model", "dlinear", "--param", "loss=nll", timeout=120)
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    assert "loss='nll': DLinearAdapter has no nll head; it is trained with loss in ['mse', 'quantile']" in r.stderr, r.stderr[-2000:]
    assert not list((tmp_path / "runs").rglob("*.pt"))
