"""finsight.tracking against a real `mlflow server` on 127.0.0.1 and the embedded sqlite store.

Covers a whole training run (parameters, per-epoch metrics with steps, final metrics beside the naive forecast, data
fingerprint, git, versions, plots, config, model, exports) in the server, the embedded store and the JSON tracker;
run statuses; the registry (register, promote the best validation rel_mae, load by alias, identical predictions);
an unreachable server (fallback with a warning, then `sync_to_mlflow` replays the run, once); a server that dies
mid-run; malformed URIs; two processes creating and writing one sqlite store at once; secrets kept out of runs;
the JSON tracker where MLflow is not importable; the async twins and the sync command.
"""
import asyncio, dataclasses, json, logging, os, shutil, subprocess, sys, tempfile, textwrap, threading, warnings
from pathlib import Path

import numpy as np
import pytest

from finsight.data.sources import data_fingerprint, load_bundled
from finsight.features import BasicFeatureEngineering
from finsight.models import ModelConfig
from finsight.settings import ConfigError, get_settings
from finsight.tracking import (MLflowExperimentTracker, RunStatus, SimpleExperimentTracker, TrackingError, TrackingFallbackWarning,
                               clean_params, get_tracker)
from finsight.registry import load_model_by_alias, promote_best, register_run_model, registered_name
from finsight.tracking_sync import pending_runs, sync_to_mlflow, tracking_sync_main
from finsight.pipeline import log_training_run
from finsight.testing import LocalMlflowServer, free_port
from finsight.training import ModelTrainingFacade, predict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_tracking_env(monkeypatch):
    "Runs go where each test says, whatever the machine's MLFLOW_TRACKING_URI."
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False); get_settings(refresh=True)
    yield
    monkeypatch.undo(); get_settings(refresh=True)


@pytest.fixture(scope="session")
def template_db(tmp_path_factory):
    "An empty MLflow sqlite store, made once (MLflow's migrations take seconds) and copied wherever a store is needed."
    from mlflow import MlflowClient
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
    return db


def _store_from(template: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True); shutil.copy(template, folder / "mlflow.db"); return folder


@pytest.fixture(scope="session")
def server(tmp_path_factory, template_db):
    "One real `mlflow server` for the session."
    with LocalMlflowServer(_store_from(template_db, tmp_path_factory.mktemp("server"))) as srv: yield srv


@pytest.fixture(scope="session")
def sp():
    return load_bundled("SP500")


def _train(sp, seed=0, lr=1e-3, epochs=3, run_id="t"):
    n = len(sp); tr, va, te = sp.iloc[:int(n * .7)], sp.iloc[int(n * .7):int(n * .85)], sp.iloc[int(n * .85):]
    cfg = ModelConfig(context_length=32, prediction_length=2, num_epochs=epochs, batch_size=128, learning_rate=lr, seed=seed)
    facade = ModelTrainingFacade(checkpoint_root=tempfile.mkdtemp(prefix="ckpt-"), progress=False)
    return facade.train_model_sync("SP500", "1d", "dlinear", tr, va, BasicFeatureEngineering(), cfg, test_data=te, run_id=f"{run_id}-{os.getpid()}")


@pytest.fixture(scope="session")
def result(sp):
    return _train(sp)


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory, result):
    "A folder shaped like 41_export's output (tracking only logs it)."
    d = tmp_path_factory.mktemp("export") / "SP500_1d_dlinear"
    (d / "onnx").mkdir(parents=True); result.model.save(d / "model.pt")
    (d / "onnx" / "model.onnx").write_bytes(b"\x08\x07onnx-bytes"); (d / "export.json").write_text(json.dumps({"formats": ["pt", "onnx"]}))
    return d


def _tracker(kind, server, tmp_path, template_db, **kw):
    if kind == "server": return MLflowExperimentTracker(server.uri, fallback_dir=tmp_path / "experiments", experiment_name=tmp_path.name, **kw)
    if kind == "embedded":
        runs = _store_from(template_db, tmp_path / "runs")
        return MLflowExperimentTracker(runs_dir=runs, fallback_dir=tmp_path / "experiments", experiment_name="emb", **kw)
    return SimpleExperimentTracker(tmp_path / "experiments", "json")


def _read_artifact(tracker, run_id, path) -> bytes:
    if isinstance(tracker, SimpleExperimentTracker): return (tracker.run_dir(run_id) / "artifacts" / path).read_bytes()
    return Path(tracker.client.download_artifacts(run_id, path, tempfile.mkdtemp(prefix="dl-"))).read_bytes()


def _find(tracker, run_name) -> dict:
    "The run called `run_name` (one only)."
    if isinstance(tracker, SimpleExperimentTracker):
        recs = [json.loads(p.read_text()) for p in tracker.base_dir.glob("*/*/run.json")]
        [rid] = [r["run_id"] for r in recs if r["run_name"] == run_name]
    else: [rid] = [r.info.run_id for r in tracker.client.search_runs([tracker.experiment_id()], f"attributes.run_name = '{run_name}'")]
    return tracker.get_run(rid)


def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------------------------------------------------- a training run
@pytest.mark.parametrize("kind", ["server", "embedded", "json"])
def test_training_run_is_recorded(kind, server, tmp_path, template_db, result, export_dir, sp):
    tracker = _tracker(kind, server, tmp_path, template_db)
    (tmp_path / "notes.md").write_text("why this run")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingFallbackWarning)  # the server and the store are up: no fallback
        rid = log_training_run(tracker, result, bars=sp, export_dir=export_dir, extra_artifacts=[tmp_path / "notes.md"], tags={"team": "quant"})
    r = tracker.get_run(rid)
    assert r["status"] == "finished" and r["where"] == ("local" if kind == "json" else "mlflow") and r["run_name"] == result.run_id
    # every hyperparameter, the set-up and the data fingerprint
    assert {k: r["params"][k] for k in result.config.to_dict()} == clean_params(result.config.to_dict())
    fp = data_fingerprint(sp, "SP500", "1d")
    assert {k: r["params"][f"data.{k}"] for k in fp} == {k: str(v) for k, v in fp.items()} and fp["rows"] == len(sp)
    assert (r["params"]["symbol"], r["params"]["model_type"], r["params"]["features.normalize_features"]) == ("SP500", "dlinear", "True")
    assert json.loads(r["params"]["features.columns"]) == result.model.features.state()["columns"]
    # per-epoch metrics with their epoch as step; final metrics beside the naive forecast
    for key, rec in (("loss", "loss"), ("val_loss", "val_loss"), ("learning_rate", "learning_rate"), ("epoch_seconds", "seconds")):
        assert tracker.metric_history(rid, key) == [(h["epoch"], pytest.approx(h[rec])) for h in result.history]
    for k in ("val_mae", "val_naive_mae", "val_rel_mae", "val_mase", "val_skill", "test_rel_mae", "test_mase", "test_naive_rmse", "best_epoch"):
        assert r["metrics"][k] == pytest.approx(result.metrics.to_dict()[k], rel=1e-12), k
    # environment: seed, git commit and dirty flag, versions
    import torch, transformers, finsight
    t = r["tags"]
    assert (t["git.commit"], t["git.dirty"]) == (_git("rev-parse", "HEAD"), str(bool(_git("status", "--porcelain"))))
    assert (t["version.torch"].split("+")[0], t["version.transformers"], t["version.finsight"]) == (torch.__version__.split("+")[0], transformers.__version__, finsight.__version__)
    assert (t["finsight.seed"], t["finsight.data_hash"], t["team"], t["finsight.registered_name"]) == ("0", fp["hash"], "quant", "finsight-SP500-1d-dlinear")
    # artifacts: plots, config, features with the fitted scaler, model, exports
    arts = set(tracker.list_artifacts(rid))
    assert {"config.json", "features.json", "metrics.json", "history.json", "environment.json", "data.json", "target.json", "notes.md",
            "plots/training_curve.png", "plots/forecast_val.png", "plots/forecast_test.png",
            "exports/model.pt", "exports/onnx/model.onnx", "exports/export.json", "exports_manifest.json"} <= arts, arts
    model_files = {"MLmodel", "requirements.txt", "artifacts/trained_model.pt", "code/finsight/training.py", "input_example.json"}
    if kind == "json": assert {f"model/{f}" for f in model_files - {"input_example.json"}} <= arts   # a folder among the artifacts
    else:   # MLflow: the run's logged model (mlflow.pyfunc.log_model), and the bars as its input dataset
        [out] = tracker.client.get_run(rid).outputs.model_outputs
        lm = tracker.client.get_logged_model(out.model_id)
        assert lm.name == "model" and lm.source_run_id == rid and lm.status.to_proto() == 2   # READY
        import mlflow.artifacts
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=lm.artifact_location, dst_path=str(tmp_path / "lm"), tracking_uri=tracker.tracking_uri))
        assert all((local / f).is_file() for f in model_files), sorted(p.relative_to(local).as_posix() for p in local.rglob("*"))[:20]
        [ds] = tracker.client.get_run(rid).inputs.dataset_inputs
        assert (ds.dataset.name, ds.dataset.digest, ds.tags[0].value) == ("SP500_1d", fp["hash"], "training")
    assert _read_artifact(tracker, rid, "plots/forecast_test.png")[:8] == b"\x89PNG\r\n\x1a\n"
    feats = json.loads(_read_artifact(tracker, rid, "features.json"))
    assert feats["mean"] == result.model.features.state()["mean"] and feats["std"] == result.model.features.state()["std"] and feats["config"] == result.model.features.state()["config"]
    assert json.loads(_read_artifact(tracker, rid, "config.json"))["config"] == result.config.to_dict()
    manifest = json.loads(_read_artifact(tracker, rid, "exports_manifest.json"))
    assert manifest["manifest"] == {"formats": ["pt", "onnx"]} and "onnx" in manifest["formats"] and len(manifest["files"]) == 3
    reqs = (local / "requirements.txt").read_text() if kind != "json" else _read_artifact(tracker, rid, "model/requirements.txt").decode()
    assert "torch==" in reqs and "finsight" not in reqs   # explicit requirements, nothing inferred; the package travels as code/
    if kind != "json":  # registered as a new version of the symbol's model
        versions = tracker.client.search_model_versions("name = 'finsight-SP500-1d-dlinear'")
        assert rid in {v.run_id for v in versions}


@pytest.mark.parametrize("kind", ["server", "embedded", "json"])
def test_run_statuses(kind, server, tmp_path, template_db, result):
    tracker = _tracker(kind, server, tmp_path, template_db)
    with pytest.raises(ValueError), tracker.run("fails") as failed: raise ValueError("bad batch")
    with pytest.raises(KeyboardInterrupt), tracker.run("interrupted") as killed: raise KeyboardInterrupt
    with tracker.run("ok") as ok: tracker.log_metrics_sync({"x": 1.0}, step=3)
    explicit = tracker.start_run_sync(run_name="stopped by the user"); tracker.end_run_sync("KILLED", explicit)
    broken = dataclasses.replace(result, result=dataclasses.replace(result.result, history=[{"epoch": 1}]))  # logging itself fails: the run it started ends failed
    with pytest.raises(Exception): log_training_run(tracker, broken, run_name="broken result")
    assert _find(tracker, "broken result")["status"] == "failed"
    runs = {tracker.get_run(r)["run_name"]: tracker.get_run(r) for r in (failed, killed, ok, explicit)}
    assert [runs[n]["status"] for n in ("fails", "interrupted", "ok", "stopped by the user")] == ["failed", "killed", "finished", "killed"]
    assert runs["fails"]["tags"]["finsight.error"] == "ValueError: bad batch"
    assert tracker.metric_history(ok, "x") == [(3, 1.0)]
    # the job service's way: it opens the run, training logs into it, the run stays open until the job ends it
    rid = tracker.start_run_sync(run_name="job")
    tracker.log_history_sync(result.history, run_id=rid)
    assert log_training_run(tracker, result, run_id=rid, log_history=False, register=False) == rid and tracker.get_run(rid)["status"] == "running"
    tracker.end_run_sync(RunStatus.FINISHED, rid)
    assert len(tracker.metric_history(rid, "loss")) == len(result.history) and tracker.get_run(rid)["status"] == "finished"
    with pytest.raises(TrackingError, match="unknown run status"): tracker.end_run_sync("done", rid)


def test_async_twins(server, tmp_path):
    tracker = MLflowExperimentTracker(server.uri, experiment_name="async", fallback_dir=tmp_path)
    async def job():
        rid = await tracker.start_run(run_name="async", tags={"k": "v"})
        await tracker.log_params({"a": 1}); await tracker.log_metrics({"loss": 0.5}, step=1); await tracker.set_tags({"k2": "v2"})
        (tmp_path / "f.txt").write_text("x"); await tracker.log_artifact(tmp_path / "f.txt")
        await tracker.end_run()
        return rid
    rid = asyncio.run(job())
    r = tracker.get_run(rid)
    assert (r["status"], r["params"], r["metrics"], r["tags"]["k2"], tracker.list_artifacts(rid)) == ("finished", {"a": "1"}, {"loss": 0.5}, "v2", ["f.txt"])


# ---------------------------------------------------------------------------------------------------------- registry
def test_registry_promotes_best_val_rel_mae_and_loads_by_alias(server, tmp_path, sp):
    tracker = MLflowExperimentTracker(server.uri, experiment_name="registry", fallback_dir=tmp_path)
    good, bad = _train(sp, seed=1, run_id="good"), _train(sp, seed=2, lr=0.05, epochs=1, run_id="bad")
    good, bad = (dataclasses.replace(r, model=dataclasses.replace(r.model, symbol="REGTEST")) for r in (good, bad))
    assert good.metrics.val.rel_mae != bad.metrics.val.rel_mae
    ids = {n: log_training_run(tracker, r, run_name=n) for n, r in (("good", good), ("bad", bad))}
    name = registered_name("REGTEST", "1d", "dlinear")
    best_key = min(ids, key=lambda n: {"good": good, "bad": bad}[n].metrics.val.rel_mae)
    best = promote_best("REGTEST", "1d", "dlinear", tracker=tracker)
    assert (best["name"], best["alias"], best["run_id"], best["candidates"]) == (name, "champion", ids[best_key], 2)
    assert best["val_rel_mae"] == pytest.approx({"good": good, "bad": bad}[best_key].metrics.val.rel_mae)
    mv = tracker.client.get_model_version_by_alias(name, "champion")
    assert mv.run_id == ids[best_key] and float(mv.tags["val_rel_mae"]) == pytest.approx(best["val_rel_mae"])
    model = load_model_by_alias(name, tracker=tracker)
    original = {"good": good, "bad": bad}[best_key].model
    assert np.array_equal(predict(model, sp).to_numpy(), predict(original, sp).to_numpy())
    assert np.array_equal(predict(model, sp, every_window=True).to_numpy(), predict(original, sp, every_window=True).to_numpy())
    # the same model through MLflow's own pyfunc loader, from a frame with a timestamp column (as a REST call sends it)
    import mlflow.pyfunc
    from finsight.registry import _fluent_uri
    with _fluent_uri(tracker.tracking_uri): pf = mlflow.pyfunc.load_model(f"models:/{name}@champion")   # as MLflow users load it
    request = sp.reset_index().assign(timestamp=lambda d: d.timestamp.dt.tz_localize(None))   # naive UTC times: MLflow's datetime type refuses zoned ones
    assert np.array_equal(pf.predict(request).drop(columns="timestamp").to_numpy(), predict(original, sp).to_numpy())
    assert np.array_equal(pf.predict(request, params={"every_window": True}).drop(columns="origin").to_numpy(), predict(original, sp, every_window=True).to_numpy())
    assert [c.name for c in pf.metadata.get_params_schema().params] == ["every_window", "horizon", "calendar"]
    # skill: higher is better, a second alias
    by_skill = promote_best("REGTEST", "1d", "dlinear", metric="val_skill", alias="skilled", tracker=tracker)
    assert by_skill["val_skill"] == max(r.metrics.val.skill for r in (good, bad))
    with pytest.raises(TrackingError, match="has no alias 'missing'"): load_model_by_alias(name, "missing", tracker=tracker)
    with pytest.raises(TrackingError, match="no registered version of finsight-NOPE-1d-dlinear"): promote_best("NOPE", "1d", "dlinear", tracker=tracker)
    with pytest.raises(TrackingError, match="needs an MLflowExperimentTracker"): promote_best("REGTEST", "1d", "dlinear", tracker=SimpleExperimentTracker(tmp_path))


# ---------------------------------------------------------------------------------------------------------- no lost runs
def test_unreachable_server_falls_back_and_sync_replays_once(server, tmp_path, result, export_dir, sp):
    dead = f"http://127.0.0.1:{free_port()}"
    tracker = MLflowExperimentTracker(dead, fallback_dir=tmp_path / "experiments", experiment_name="offline")
    with pytest.warns(TrackingFallbackWarning, match=rf"MLflow at {dead} cannot be reached .*pending_sync.*finsight tracking sync"):
        lid = log_training_run(tracker, result, bars=sp, export_dir=export_dir, run_name="offline run")
    local = tracker.get_run(lid)
    assert local["where"] == "local" and local["pending_sync"] and local["status"] == "finished" and local["tracking_uri"] == dead
    assert Path(local["path"]).is_relative_to(tmp_path / "experiments" / "offline")
    with pytest.raises(TrackingError, match="is in the local tracker"): register_run_model(lid, tracker=tracker)
    rows = sync_to_mlflow(tmp_path / "experiments", server.uri)
    assert [r["action"] for r in rows] == ["synced"] and rows[0]["registered_version"]
    ml = MLflowExperimentTracker(server.uri, experiment_name="offline", fallback=False)
    rid = rows[0]["mlflow_run_id"]; r = ml.get_run(rid)
    assert (r["status"], r["run_name"], r["params"], r["start_time"]) == ("finished", "offline run", local["params"], local["start_time"])
    mine = lambda tags: {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
    assert mine(r["tags"]) == mine(local["tags"]) | {"finsight.local_run_id": lid, "finsight.sync_complete": "true"}
    assert r["tags"]["mlflow.source.git.commit"] == local["tags"]["mlflow.source.git.commit"]
    for key in ("loss", "val_loss", "learning_rate", "epoch_seconds", "val_rel_mae"):
        assert ml.metric_history(rid, key) == tracker.metric_history(lid, key), key
    assert ml.list_artifacts(rid) == tracker.list_artifacts(lid)
    assert json.loads((Path(local["path"]) / "run.json").read_text())["synced"]["mlflow_run_id"] == rid
    # idempotent: nothing pending; a run marked pending again (a crash before the mark) is found, not copied
    assert sync_to_mlflow(tmp_path / "experiments", server.uri) == []
    tracker.local._update(lid, pending_sync=True)
    assert [r["action"] for r in sync_to_mlflow(tmp_path / "experiments", server.uri)] == ["already synced"]
    # a sync that stopped half-way (no sync_complete tag) is redone: still exactly one run
    half = ml.client.create_run(ml.experiment_id("offline"), tags={"finsight.local_run_id": lid}).info.run_id
    ml.client.delete_run(rid); tracker.local._update(lid, pending_sync=True)
    again = sync_to_mlflow(tmp_path / "experiments", server.uri)
    runs = ml.client.search_runs([ml.experiment_id("offline")], f"tags.`finsight.local_run_id` = '{lid}'")
    assert [r["action"] for r in again] == ["synced"] and [x.info.run_id for x in runs] == [again[0]["mlflow_run_id"]]
    assert ml.client.get_run(half).info.lifecycle_stage == "deleted" and pending_runs(tmp_path / "experiments") == []


def test_server_dying_mid_run_keeps_the_run(tmp_path, template_db, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"); monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    folder = _store_from(template_db, tmp_path / "srv")
    srv = LocalMlflowServer(folder).start()
    try:
        tracker = MLflowExperimentTracker(srv.uri, experiment_name="midrun", fallback_dir=tmp_path / "experiments")
        rid = tracker.start_run_sync(run_name="long training", tags={"symbol": "SP500"})
        tracker.log_params_sync({"lr": 0.01})
        for e in (1, 2): tracker.log_metrics_sync({"loss": 1.0 / e}, step=e)
        (tmp_path / "curve.txt").write_text("epochs 1-2"); tracker.log_artifact_sync(tmp_path / "curve.txt", "notes")
        srv.stop()
        with pytest.warns(TrackingFallbackWarning, match="continues in"):
            tracker.log_metrics_sync({"loss": 0.25}, step=3)
        tracker.log_metrics_sync({"loss": 0.2}, step=4); tracker.end_run_sync("finished")
        local = tracker.get_run(rid)
        assert local["where"] == "local" and local["tags"]["finsight.partial_mlflow_run_id"] == rid and local["params"] == {"lr": "0.01"}
        assert tracker.metric_history(rid, "loss") == [(1, 1.0), (2, 0.5), (3, 0.25), (4, 0.2)] and tracker.list_artifacts(rid) == ["notes/curve.txt"]
        srv = LocalMlflowServer(folder, port=srv.port).start()  # the server is back, same store
        rows = sync_to_mlflow(tmp_path / "experiments", srv.uri)
        ml = MLflowExperimentTracker(srv.uri, fallback=False)
        new = rows[0]["mlflow_run_id"]
        assert ml.client.get_run(rid).info.lifecycle_stage == "deleted"   # the partial run is replaced
        assert ml.metric_history(new, "loss") == [(1, 1.0), (2, 0.5), (3, 0.25), (4, 0.2)] and ml.get_run(new)["params"] == {"lr": "0.01"}
        assert ml.list_artifacts(new) == ["notes/curve.txt"] and ml.get_run(new)["status"] == "finished"
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("uri,why", [("htp:/x", "unknown scheme 'htp'"), ("http//host", "no scheme"), ("http:/host:5000", "must be followed by a host"),
                                     ("http://", "must be followed by a host"), ("http://host:70000", "port"), ("sqlite://mlflow.db", "sqlite:////absolute"),
                                     ("http://host name:5000", "contains spaces"), ("", None)])
def test_malformed_tracking_uri(uri, why, monkeypatch, tmp_path):
    if why is None:  # empty means the embedded store, not an error
        assert MLflowExperimentTracker(uri or None, runs_dir=tmp_path).tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"; return
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI=.*is malformed: .*" + why.replace("(", r"\(")): MLflowExperimentTracker(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri); get_settings(refresh=True)
    with pytest.raises(ConfigError, match=r"\(environment variable\) is malformed"): get_tracker()
    with pytest.raises(ConfigError, match="is malformed"): sync_to_mlflow(tmp_path)


def test_sync_command(server, tmp_path, capsys):
    st = SimpleExperimentTracker(tmp_path, "cli", pending_sync=True)
    with st.run("from a laptop") as parent:
        st.log_metrics_sync({"loss": 0.1}, step=1)
        with st.run("child", nested=True) as child: pass
    with st.run("still open elsewhere") as other: pass
    st._update(other, status="running", host="another-host")   # a run another machine is still writing
    with st.run("crashed here") as crashed: pass
    dead = subprocess.Popen(["true"]); dead.wait()
    st._update(crashed, status="running", pid=dead.pid)        # its process on this host is gone
    assert tracking_sync_main(tmp_path, f"http://127.0.0.1:{free_port()}") == 1
    assert "cannot be reached" in capsys.readouterr().err and len(pending_runs(tmp_path)) == 4
    assert tracking_sync_main(tmp_path, "htp:/x") == 2 and "MLFLOW_TRACKING_URI='htp:/x'" in capsys.readouterr().err
    assert tracking_sync_main(tmp_path, server.uri) == 0
    out = capsys.readouterr().out
    assert "3 synced, 1 skipped" in out and "still running" in out and [r["run_id"] for r in pending_runs(tmp_path)] == [other]
    ml = MLflowExperimentTracker(server.uri, experiment_name="cli", fallback=False)
    new = {r.data.tags["finsight.local_run_id"]: r for r in ml.client.search_runs([ml.experiment_id()])}
    assert new[child].data.tags["mlflow.parentRunId"] == new[parent].info.run_id   # the nesting survives the replay
    assert (new[crashed].info.status, new[parent].info.status) == ("KILLED", "FINISHED")
    assert tracking_sync_main(tmp_path, server.uri) == 0 and "1 skipped" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------- concurrency
_WRITER = textwrap.dedent("""
    import json, sys, warnings
    from finsight.tracking import MLflowExperimentTracker, TrackingFallbackWarning
    warnings.simplefilter("error", TrackingFallbackWarning)
    t = MLflowExperimentTracker(runs_dir=sys.argv[1], fallback_dir=sys.argv[1] + "/experiments", experiment_name="shared")
    ids = []
    for j in range(3):
        with t.run(f"{sys.argv[2]}-{j}") as rid:
            t.log_params_sync({f"p{i}": i for i in range(30)})
            for e in range(20): t.log_metrics_sync({"loss": 1 / (e + 1), "val_loss": 2 / (e + 1)}, step=e)
        ids.append(rid)
    print(json.dumps([t.get_run(i)["where"] for i in ids] + ids))
""")


def test_two_processes_create_and_share_one_sqlite_store(tmp_path):
    "Two jobs start at once on a store that does not exist yet (MLflow's migrations race without the lock); both keep every run."
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}; env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for name in ("A", "B")]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    ids = [i for out, _ in outs for i in json.loads(out.strip().splitlines()[-1])]
    assert ids.count("mlflow") == 6 and not (tmp_path / "experiments").exists()   # nothing fell back
    ml = MLflowExperimentTracker(runs_dir=tmp_path, experiment_name="shared", fallback=False)
    runs = ml.client.search_runs([ml.experiment_id("shared")])
    assert sorted(r.info.run_name for r in runs) == ["A-0", "A-1", "A-2", "B-0", "B-1", "B-2"]
    assert all(len(ml.metric_history(r.info.run_id, "loss")) == 20 and len(r.data.params) == 30 and r.info.status == "FINISHED" for r in runs)


def test_two_jobs_in_one_process(tmp_path, template_db):
    runs = _store_from(template_db, tmp_path / "runs"); out, errors = {}, []
    def job(name):
        try:
            t = MLflowExperimentTracker(runs_dir=runs, experiment_name="threads", fallback=False)
            with t.run(name) as rid:
                for e in range(15): t.log_metrics_sync({"loss": e}, step=e)
            out[name] = rid
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=job, args=(n,)) for n in ("x", "y")]
    for t in threads: t.start()
    for t in threads: t.join()
    assert not errors and len(set(out.values())) == 2
    ml = MLflowExperimentTracker(runs_dir=runs, fallback=False)
    assert all([s for s, _ in ml.metric_history(r, "loss")] == list(range(15)) and ml.get_run(r)["run_name"] == n for n, r in out.items())


def test_a_job_run_is_live_while_it_trains_and_failed_when_it_raises(tmp_path, template_db):
    """`Task.run` opens the job's MLflow run before training: RUNNING, each epoch's losses there while the next epoch trains;
    the same run gets the record and ends FINISHED. A job that raises leaves a FAILED run with its error."""
    from mlflow import MlflowClient
    from finsight.tasks import get_task
    uri = f"sqlite:///{_store_from(template_db, tmp_path / 'store') / 'mlflow.db'}"; client = MlflowClient(uri)
    seen = []
    def peek(u):   # a callback before the job's own epoch logger: what MLflow shows while epoch u.current_epoch + 1 is still to come
        [r] = client.search_runs([client.get_experiment_by_name("live").experiment_id])
        seen.append((r.info.status, [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")]))
    task = get_task("forecast")
    s = task.run(dict(symbol="SP500", model_type="dlinear", config={"context_length": 32, "num_epochs": 3, "early_stopping_patience": 10},
                      export_formats=[], tracking_uri=uri, experiment_name="live"), callbacks=[peek], progress=False)
    assert seen == [("RUNNING", []), ("RUNNING", [1]), ("RUNNING", [1, 2])]
    run = client.get_run(s.mlflow_run_id)
    assert run.info.status == "FINISHED" and [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]   # each epoch once
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_seconds")] == [1, 2, 3] and len(run.outputs.model_outputs) == 1
    with pytest.raises(Exception, match="target column 'vwap' is not among the features"):   # raised in training, after the run started
        task.run(dict(symbol="SP500", model_type="dlinear", config={"target_column": "vwap", "num_epochs": 1}, export_formats=[], tracking_uri=uri, experiment_name="live"), progress=False)
    failed = [r for r in client.search_runs([client.get_experiment_by_name("live").experiment_id]) if r.info.run_id != run.info.run_id]
    assert [r.info.status for r in failed] == ["FAILED"] and "target column 'vwap' is not among the features" in failed[0].data.tags["finsight.error"]


# ---------------------------------------------------------------------------------------------------------- secrets
def test_no_secrets_in_runs(server, tmp_path, monkeypatch, capsys, caplog, result):
    caplog.set_level(logging.INFO)
    secrets = {"AWS_SECRET_ACCESS_KEY": "aws-secret-Zq81/xx", "AWS_ACCESS_KEY_ID": "AKIAFINSIGHT0042", "MLFLOW_TRACKING_PASSWORD": "trk-pass-991",
               "HF_TOKEN": "hf_tokenvalue123"}
    for k, v in secrets.items(): monkeypatch.setenv(k, v)
    uri = server.uri.replace("http://", "http://alice:uri-pass-77@")
    leaked = [*secrets.values(), "uri-pass-77"]
    tracker = MLflowExperimentTracker(uri, experiment_name="secrets", fallback_dir=tmp_path / "experiments")
    rid = log_training_run(tracker, result, run_name=f"run with {secrets['AWS_SECRET_ACCESS_KEY']}",
                           tags={"endpoint": uri, "note": f"key={secrets['AWS_ACCESS_KEY_ID']}", secrets["HF_TOKEN"]: "x"})
    tracker.log_params_sync({"token": secrets["MLFLOW_TRACKING_PASSWORD"], "source": uri}, rid)
    r = MLflowExperimentTracker(server.uri, fallback=False).get_run(rid)
    text = json.dumps([r["run_name"], r["tags"], r["params"]])
    assert not [s for s in leaked if s in text], text
    assert r["tags"]["endpoint"] == server.uri.replace("http://", "http://***@") and r["params"]["token"] == "***" and r["run_name"] == "run with ***"
    # the same through the fallback: warning, run.json, params
    dead = MLflowExperimentTracker(f"http://alice:uri-pass-77@127.0.0.1:{free_port()}", fallback_dir=tmp_path / "experiments")
    with pytest.warns(TrackingFallbackWarning) as w:
        lid = dead.start_run_sync(run_name=secrets["HF_TOKEN"], tags={"k": secrets["AWS_SECRET_ACCESS_KEY"]})
    dead.log_params_sync({"p": f"{uri}/x"}, lid); dead.end_run_sync()
    files = "".join(p.read_text() for p in Path(dead.get_run(lid)["path"]).glob("*.json*"))
    cap = capsys.readouterr()
    shown = files + str(w[0].message) + repr(dead) + repr(tracker) + cap.out + cap.err + caplog.text
    assert not [s for s in leaked if s in shown], shown
    with pytest.raises(TrackingError) as e: MLflowExperimentTracker(uri.replace(str(server.port), str(free_port())), fallback=False).start_run_sync()
    assert "uri-pass-77" not in str(e.value) and "***@" in str(e.value)


def test_a_job_leaves_no_secret_anywhere(server, tmp_path):
    """A papermill job (`finsight run`) with credentials in MLFLOW_TRACKING_URI and secrets in its environment: no file
    it leaves (job store, executed notebook, kernel log, leaderboard, checkpoints, export, the MLflow server's store
    and artifacts) and nothing it prints holds any of them."""
    secrets = {"AWS_SECRET_ACCESS_KEY": "aws-secret-Q7/zz", "MLFLOW_TRACKING_PASSWORD": "trk-pass-5521", "HF_TOKEN": "hf_jobtoken987"}
    env = os.environ | secrets | {"FINSIGHT_RUNS_DIR": str(tmp_path / "runs"), "MLFLOW_TRACKING_URI": server.uri.replace("http://", "http://bob:uri-pass-4242@")}
    r = subprocess.run([sys.executable, "-c", "import sys; from finsight.cli import main; sys.exit(main())", "run", "SP500", "--model", "dlinear",
                        "--set", "num_epochs=1", "--param", 'export_formats=["pt"]'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    leaked = [*secrets.values(), "uri-pass-4242"]
    files = [p for top in (tmp_path / "runs", server.folder) for p in top.rglob("*") if p.is_file()]
    hits = [(str(p), s) for p in files for s in leaked if s.encode() in p.read_bytes()] + [("stdout/stderr", s) for s in leaked if s in r.stdout + r.stderr]
    assert not hits, hits
    assert any(p.suffix == ".ipynb" for p in files) and any(p.name == "jobs.db" for p in files), files   # the job's own files were searched


# ---------------------------------------------------------------------------------------------------------- without mlflow
_NO_MLFLOW = textwrap.dedent("""
    import sys, json, warnings
    sys.modules["mlflow"] = None  # import mlflow raises ImportError
    from finsight.tracking import get_tracker, SimpleExperimentTracker
    from finsight.pipeline import log_training_run
    from finsight.training import ModelTrainingFacade
    from finsight.models import ModelConfig
    from finsight.data.sources import synthetic_ohlcv
    bars = synthetic_ohlcv(900, "1h", seed=1)
    res = ModelTrainingFacade(checkpoint_root=sys.argv[1] + "/ckpt", progress=False).train_model_sync(
        "SYN", "1h", "dlinear", bars.iloc[:600], bars.iloc[600:], None, ModelConfig(context_length=40, num_epochs=2, seed=0))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t = get_tracker(fallback_dir=sys.argv[1] + "/experiments")
    rid = log_training_run(t, res, bars=bars)
    print(json.dumps({"kind": type(t).__name__, "warning": str(w[0].message), "artifacts": t.list_artifacts(rid), "run": t.get_run(rid),
                      "mlflow_loaded": sys.modules["mlflow"] is not None}))
""")


def test_json_tracker_needs_no_mlflow_and_syncs_later(server, tmp_path):
    p = subprocess.run([sys.executable, "-c", _NO_MLFLOW, str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["kind"] == "SimpleExperimentTracker" and "mlflow is not installed" in out["warning"] and not out["mlflow_loaded"]
    assert "model/artifacts/trained_model.pt" in out["artifacts"] and "model/MLmodel" not in out["artifacts"] and "plots/training_curve.png" in out["artifacts"]
    assert out["run"]["pending_sync"] and out["run"]["status"] == "finished" and out["run"]["metrics"]["val_rel_mae"] > 0
    rows = sync_to_mlflow(tmp_path / "experiments", server.uri)   # later, on a machine with MLflow
    assert rows[0]["action"] == "synced" and rows[0]["registered_version"]
    tracker = MLflowExperimentTracker(server.uri, fallback=False)
    model = load_model_by_alias("finsight-SYN-1h-dlinear", promote_best("SYN", "1h", "dlinear", tracker=tracker)["alias"], tracker=tracker)
    assert model.symbol == "SYN" and model.config.context_length == 40


def test_pending_runs_put_parents_before_children_started_in_the_same_millisecond(tmp_path):
    st = SimpleExperimentTracker(tmp_path, "order", pending_sync=True)
    with st.run("zz-parent") as parent:
        with st.run("aa-child", nested=True) as child: pass
    for rid in (parent, child): st._update(rid, start_time=1000)   # same start: only the nesting can order them
    assert [r["run_id"] for r in pending_runs(tmp_path)] == [parent, child]
