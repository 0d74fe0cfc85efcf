"""The panel task end to end: `finsight train --panel ... --nproc 2` (DDP on 2 CPU processes) gives the single-process result, records one MLflow run
with per-symbol metrics; bad panel options are refused in one line."""
import json, os, subprocess, sys
from pathlib import Path
import mlflow
import pytest
from finsight.panel_task import PanelTask

FINSIGHT = str(Path(sys.executable).parent / "finsight")
SET = ["--set", "context_length=32", "prediction_length=1", "num_epochs=2", "batch_size=128", "channel_mixing=true", "early_stopping_patience=5"]


def cli(tmp_path, *args, timeout=600):
    env = {**os.environ, "FINSIGHT_RUNS_DIR": str(tmp_path / "runs"), "MLFLOW_TRACKING_URI": "", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([FINSIGHT, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_panel_on_two_processes_matches_one_and_is_tracked(tmp_path):
    out = cli(tmp_path, "train", "--panel", "SP500", "NASDAQ", "--model", "dlinear", "--nproc", "2", *SET, "--param", 'past_covariates=["market"]', "compare_local=false")
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads(out.stdout)
    assert (s["world_size"], s["symbols"], s["task"]) == (2, 2, "panel") and "SP500.global_rel_mae" in s
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_run(s["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["NASDAQ.global_rel_mae"] == pytest.approx(s["NASDAQ.global_rel_mae"])
    assert run.data.params["past_covariates"] == '["market"]' and "past_market" in run.data.params["channels"]
    # the same job in one process: DDP split each global batch across the ranks, so the model is the same up to float rounding
    one = PanelTask().run(dict(symbols=["SP500", "NASDAQ"], model_type="dlinear", config=dict(a.split("=") for a in SET[1:]) | {"channel_mixing": True},
                               past_covariates=["market"], compare_local=False, track=False), progress=False)
    for k in ("SP500.global_rel_mae", "NASDAQ.global_rel_mae", "epochs"): assert one.metrics[k] == pytest.approx(s[k], rel=1e-4), k


@pytest.mark.parametrize("args,says", [(["SP500", "--nproc", "2"], "--nproc needs --panel"),
                                       (["--panel", "SP500", "NOPE"], "NOPE"),
                                       (["--panel", "SP500", "NASDAQ", "--nproc", "64"], "--nproc 64"),
                                       (["--panel", "SP500", "NASDAQ", "--model", "patchtst", "--param", 'past_covariates=["market"]'], "channel_mixing=False")])
def test_bad_panel_options_are_refused_in_one_line(tmp_path, args, says):
    out = cli(tmp_path, "train", *args)
    assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
