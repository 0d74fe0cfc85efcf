"""`finsight batch` end to end: papermill jobs on the job service, one MLflow store, the leaderboard and failures."""
import json, os, subprocess, sys
from pathlib import Path
import mlflow
import pandas as pd
import pytest

FINSIGHT = str(Path(sys.executable).parent / "finsight")
TINY = ["context_length=32", "d_model=64", "n_heads=4", "num_layers=1", "num_epochs=1", "batch_size=256"]


def cli(tmp_path, *args, timeout=600):
    env = {**os.environ, "FINSIGHT_RUNS_DIR": str(tmp_path / "runs"), "MLFLOW_TRACKING_URI": "", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([FINSIGHT, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    out = cli(tmp, "batch", "--symbols", "SP500", "NASDAQ", "--models", "patchtst", "--max-concurrent", "2", "--set", *TINY)
    return tmp, out


def test_batch_runs_jobs_in_parallel_into_one_mlflow_store(batch):
    tmp, out = batch
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    folder = next((tmp / "runs").glob("batch-*"))
    board = pd.read_csv(folder / "leaderboard.csv")
    assert sorted(board.symbol) == ["NASDAQ", "SP500"] and (board.status == "completed").all()
    assert board.val_rel_mae.notna().all() and board.val_naive_mae.gt(0).all()           # every model beside naive
    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'runs' / 'mlflow.db'}")
    runs = {r: client.get_run(r) for r in board.mlflow_run_id}
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs.values())  # both concurrent jobs kept their runs
    for rid, run in runs.items():
        assert run.data.metrics["val_rel_mae"] == pytest.approx(board.set_index("mlflow_run_id").loc[rid, "val_rel_mae"])
        arts = [a.path for a in client.list_artifacts(rid)]
        assert "notebook" in arts and "exports" in arts                                    # executed notebook and exports logged
    html = (folder / "leaderboard.html").read_text()
    assert html.count("data:image/png;base64") == 6 and "rel_mae" in html          # curves, validation and test forecasts per job
    for nb in board.notebook: assert Path(nb).exists() and Path(nb).parent == folder


def test_jobs_list_shows_the_batch(batch):
    tmp, _ = batch
    out = cli(tmp, "jobs", "list")
    assert out.returncode == 0 and out.stdout.count("completed") == 2


def test_failed_job_gives_nonzero_exit_listing_it_and_keeps_its_notebook(tmp_path):
    out = cli(tmp_path, "batch", "--symbols", "SP500", "--models", "dlinear", "--retries", "0", "--set", *TINY, "target_column=vwap")
    assert out.returncode == 1
    assert "FAILED SP500_1d_dlinear" in out.stderr and "target column 'vwap' is not among the features" in out.stderr
    nb = next((tmp_path / "runs").glob("batch-*/SP500_1d_dlinear_*.ipynb"))
    assert any(o.get("output_type") == "error" for c in json.loads(nb.read_text())["cells"] for o in c.get("outputs", []))
    [run] = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").search_runs(["1"])   # the crashed job is in MLflow, with its error
    assert run.info.status == "FAILED" and "target column 'vwap' is not among the features" in run.data.tags["finsight.error"]


@pytest.mark.parametrize("args,says", [(["--symbols", "../../x"], "not a plain name"), (["--symbols", "NOPE"], "unknown symbol 'NOPE'"),
                                       (["--symbols", "SP500", "--timeframes", "7m"], "unknown timeframe '7m'"),
                                       (["--symbols", "SP500", "--models", "lstm"], "lstm")])
def test_bad_batch_is_refused_before_anything_starts(tmp_path, args, says):
    out = cli(tmp_path, "batch", *args)
    assert out.returncode == 2 and says in out.stderr
    assert not list((tmp_path / "runs").glob("batch-*")) and not (tmp_path / "x").exists()


def test_batch_backtest_gives_a_leaderboard_of_backtests(tmp_path):
    "`finsight batch --backtest`: papermill backtest jobs, a leaderboard with intervals and p-values, a parent run with a child per fold."
    out = cli(tmp_path, "batch", "--symbols", "SP500", "--models", "dlinear", "--backtest", "--set", "context_length=32", "num_epochs=1",
              "--param", "folds=2", "bootstrap_reps=100")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    folder = next((tmp_path / "runs").glob("batch-*")); board = pd.read_csv(folder / "leaderboard.csv")
    row = board.iloc[0]
    assert row.task == "backtest" and row.status == "completed" and row.folds == 2 and row.rel_mae_low <= row.rel_mae <= row.rel_mae_high
    assert 0 <= row.dm_p_naive <= 1 and row.best_baseline in ("drift", "seasonal_naive", "ar") and "beats_naive" in board.columns
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    parent = client.get_run(row.mlflow_run_id)
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{row.mlflow_run_id}'")
    assert len(kids) == 2 and parent.data.metrics["rel_mae"] == pytest.approx(row.rel_mae)
    assert "forecasts.parquet" in [a.path for a in client.list_artifacts(row.mlflow_run_id)]
    assert "dm_p_naive" in (folder / "leaderboard.html").read_text()
