"""Sentiment models as jobs: `finsight run DATASET --task sentiment` runs the sentiment template as a papermill job on
the job service, tracked in MLflow; `finsight train ... --task sentiment` trains in process; bad requests are refused
before anything starts."""
import json, os, subprocess, sys
os.environ["HF_HUB_OFFLINE"] = "1"      # nothing here may reach the hub: the encoder comes from an installed package
from pathlib import Path
import mlflow
import pandas as pd
import pytest
from finsight.settings import get_settings
from finsight.cli import main
from finsight.job_store import JobStore

FINSIGHT = str(Path(sys.executable).parent / "finsight")
TINY = ["max_seq_len=32", "num_epochs=1", "freeze_encoder=true", "batch_size=32", "learning_rate=0.003"]


def cli(tmp_path, *args, timeout=300):
    env = {**os.environ, "FINSIGHT_RUNS_DIR": str(tmp_path / "runs"), "MLFLOW_TRACKING_URI": "", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([FINSIGHT, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    "In-process CLI calls write under tmp_path/runs."
    monkeypatch.setenv("FINSIGHT_RUNS_DIR", str(tmp_path / "runs")); monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    get_settings(refresh=True)
    yield tmp_path / "runs"
    monkeypatch.undo(); get_settings(refresh=True)


def test_cli_runs_the_sentiment_template_as_a_tracked_job(tmp_path):
    out = cli(tmp_path, "run", "financial_sentences", "--task", "sentiment", "--set", *TINY, "--param", "export=false")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "test_accuracy" in out.stdout and "test_majority_accuracy" in out.stdout and "val_rel_mae" not in out.stdout   # its leaderboard
    folder = next((tmp_path / "runs").glob("batch-*"))
    [row] = pd.read_csv(folder / "leaderboard.csv").to_dict("records")
    assert (row["task"], row["model_type"], row["status"]) == ("sentiment", "text_classifier", "completed")
    nb = Path(row["notebook"])
    assert nb.is_file() and nb.parent == folder and nb.name.startswith("financial_sentences_sentiment_")
    assert not [o for c in json.loads(nb.read_text())["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    m = json.loads(nb.with_suffix(".metrics.json").read_text())                  # the job's metrics JSON (the template's summary)
    assert (m["task"], m["symbol"], m["test_examples"], m["mlflow_run_id"]) == ("sentiment", "financial_sentences", 36, row["mlflow_run_id"])
    assert 0 <= m["test_accuracy"] <= 1 and 0 < m["test_majority_accuracy"] < 1 and row["test_majority_accuracy"] == pytest.approx(m["test_majority_accuracy"])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run = client.get_run(m["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["finsight.kind"] == "sentiment"
    assert run.data.metrics["test_accuracy"] == pytest.approx(m["test_accuracy"]) and run.data.metrics["test_majority_accuracy"] == pytest.approx(m["test_majority_accuracy"])
    assert (run.data.params["dataset"], run.data.params["max_seq_len"], run.data.params["freeze_encoder"]) == ("financial_sentences", "32", "True")
    assert "plots/confusion_test.png" in [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert {"notebook", "model", "metrics.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}   # executed notebook logged too
    assert (folder / "leaderboard.html").read_text().count("data:image/png;base64") == 2                       # training curve, confusion matrix


@pytest.mark.parametrize("args,says", [(["--set", "max_seq_len=4"], "SentimentConfig: max_seq_len=4 is invalid: must be an integer between 8 and 512"),
                                       (["--set", "context_length=32"], "unknown key 'context_length'"),
                                       (["--param", "data_path=data/sentiment/nope.csv"], "data_path 'data/sentiment/nope.csv' is not a file"),
                                       (["--param", "exprt=false"], "unknown parameter(s) ['exprt'] for task 'sentiment'")])
def test_bad_sentiment_job_is_refused_before_anything_starts(runs, capsys, args, says):
    assert main(["run", "financial_sentences", "--task", "sentiment", *args]) == 2
    assert says in capsys.readouterr().err
    assert not list(runs.glob("batch-*"))                                                  # no job folder, no job queued
    assert not (runs / "jobs.db").exists() or JobStore(runs / "jobs.db").rows() == []


def test_unknown_dataset_is_named(runs, capsys):
    assert main(["run", "news", "--task", "sentiment"]) == 2
    assert "no sentiment data set 'news'" in capsys.readouterr().err and not runs.exists()


def test_cli_train_sentiment_in_process(runs, tmp_path, capsys):
    from finsight.text_models import tiny_text_model
    tiny = tiny_text_model(tmp_path / "tiny")
    rc = main(["train", "financial_sentences", "--task", "sentiment", "--set", f"model_path={tiny}", "max_seq_len=32", "num_epochs=1",
               "--param", "export=false", f"output_dir={runs / 'out'}"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["task"], s["symbol"], s["test_examples"]) == ("sentiment", "financial_sentences", 36) and s["mlflow_run_id"]
    run = mlflow.MlflowClient(f"sqlite:///{runs / 'mlflow.db'}").get_run(s["mlflow_run_id"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(s["test_accuracy"]) and (runs / "out" / "confusion_test.png").is_file()
