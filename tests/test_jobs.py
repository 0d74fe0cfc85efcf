"Job service end to end: real papermill kernels on the embedded Dask cluster, a real SQLite store, real process kills."
import asyncio, os, signal, subprocess, sys, time
from collections import Counter
from pathlib import Path
import nbformat
import psutil
import pytest
import torch
from finsight.settings import get_settings
from finsight.training import TrainingJobStatus
from finsight.jobs import AsyncTrainingRequest, JobRequestError, TrainingService, plan_workers
from finsight.job_store import JobStore, process_token
from finsight.runner import notebook_error

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def _notebook(path, params, *cells):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]})] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return str(path)


@pytest.fixture(scope="module")
def nbs(tmp_path_factory):
    "The job notebooks the tests run: they sleep, append to files, raise, report progress."
    d = tmp_path_factory.mktemp("templates")
    ok = _notebook(d / "ok.ipynb", 'symbol = ""\njob_id = ""\nmetrics_path = ""\ndevice = ""\ntorch_threads = 0\nsleep = 0.0\nlog = ""\nstarted = ""',
                   'import json, os, time\nif started: open(started, "a").write(job_id + "\\n")\ntime.sleep(sleep)',
                   'import psutil\nparent = psutil.Process(os.getppid())   # the service, or the warm zygote it started\n'
                   'service = parent.ppid() if "_zygote_main" in " ".join(parent.cmdline()) else parent.pid\n'
                   'if log: open(log, "a").write(f"{job_id} {service} {time.time()}\\n")\n'
                   'json.dump({"val_mae": 1.0, "omp": os.environ.get("OMP_NUM_THREADS"), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),'
                   ' "finsight_device": os.environ.get("FINSIGHT_DEVICE"), "device": device, "torch_threads": torch_threads, "cwd": os.getcwd(), "mlflow_run_id": "run-" + job_id[:8]}, open(metrics_path, "w"))')
    boom = _notebook(d / "boom.ipynb", 'symbol = ""\nmetrics_path = ""',
                     'raise ValueError(f"boom for {symbol}")', 'open(metrics_path, "w").write("{}")')
    progress = _notebook(d / "progress.ipynb", 'job_id = ""\njob_store = ""\nmetrics_path = ""\nrelease = ""',
                         "import time\nfrom pathlib import Path\nfrom finsight.job_store import progress_callback, report_result\n"
                         "from finsight.training import TrainingProgressUpdate\ncb = progress_callback(job_id, job_store)",
                         'cb(TrainingProgressUpdate(job_id=job_id, status="running", progress=1/3, current_epoch=1, total_epochs=3,'
                         ' current_loss=0.5, validation_loss=0.6, eta_seconds=7))\n'
                         "t0 = time.time()\nwhile not Path(release).exists() and time.time() - t0 < 60: time.sleep(0.05)",
                         'cb(TrainingProgressUpdate(job_id=job_id, status="completed", progress=1.0, current_epoch=3, total_epochs=3, current_loss=0.2))\n'
                         'report_result(metrics_path, {"val_mae": 0.25}, mlflow_run_id="abc123")')
    wait = _notebook(d / "wait.ipynb", 'job_id = ""\nstarted = ""',
                     'import time\nopen(started, "a").write(job_id + "\\n")\ntime.sleep(120)')
    notag = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})   # as nbdev-clean leaves a template: no cell tags
    notag.cells = [nbformat.v4.new_markdown_cell("# A template"), nbformat.v4.new_code_cell('symbol = ""\nmetrics_path = ""'),
                   nbformat.v4.new_code_cell('import json\njson.dump({"symbol": symbol}, open(metrics_path, "w"))')]
    nbformat.write(notag, d / "notag.ipynb")
    return {"ok": ok, "boom": boom, "progress": progress, "wait": wait, "notag": str(d / "notag.ipynb")}


@pytest.fixture
def runs(tmp_path, monkeypatch):
    "Every job file of a test goes under tmp_path/runs."
    monkeypatch.setenv("FINSIGHT_RUNS_DIR", str(tmp_path / "runs"))
    get_settings(refresh=True)
    yield tmp_path / "runs"
    monkeypatch.undo()
    get_settings(refresh=True)


def _req(nbs, kind="ok", symbol="SP500", **kw):
    return {"symbol": symbol, "template": nbs[kind], **kw}


def _lines(path):
    return Path(path).read_text().split() if Path(path).exists() else []


def _wait_for(cond, timeout=60, every=0.05):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout: raise AssertionError("timed out waiting")
        time.sleep(every)


# ---------------------------------------------------------------- bad input: refused before anything starts
BAD = [
    ({"symbol": "../../x"}, "'../../x' is not a plain name"),
    ({"symbol": "a/b"}, "'a/b' is not a plain name"),
    ({"timeframe": "7m"}, "unknown timeframe '7m'"),
    ({"model_type": "lstm"}, "unknown model type 'lstm'"),
    ({"symbol": "NOPE"}, "unknown symbol 'NOPE'"),
    ({"config": {"context_lenght": 32}}, "unknown key 'context_lenght'"),
    ({"config": {"num_epochs": 0}}, "num_epochs=0 is invalid"),
    ({"parameters": {"job_store": "/tmp/x.db"}}, "parameter 'job_store' is set by the job service"),
    ({"batch_id": "../../b"}, "batch_id '../../b' is not a plain name"),
    ({"template": "/nonexistent/train.ipynb"}, "template notebook /nonexistent/train.ipynb does not exist"),
    ({"gpu": True}, "gpu=True but this service has no GPU"),
    ({"priority": 10**6}, "priority=1000000 is invalid"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[m for _, m in BAD])
def test_bad_request_refuses_whole_batch(nbs, runs, tmp_path, bad, message):
    svc = TrainingService(gpus=[])
    batch = [_req(nbs, symbol="SP500"), {**_req(nbs), **bad}, _req(nbs, symbol="NASDAQ")]
    with pytest.raises(JobRequestError, match="request 2 of 3") as e:
        svc.submit_batch(batch)
    assert message in str(e.value)
    assert svc.store.counts() == {}
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(runs)]
    assert outside == [] and not list(tmp_path.parent.glob("x*")), outside   # nothing written outside runs/, which holds only the store
    assert {p.name for p in runs.iterdir()} <= {"jobs.db", "jobs.db-shm", "jobs.db-wal"}


def test_job_files_stay_inside_runs(nbs, runs):
    svc = TrainingService(gpus=[])
    with pytest.raises(JobRequestError, match="batch_id '..' is not a plain name"):
        svc.submit_batch([_req(nbs)], batch_id="..")
    r = svc.submit(_req(nbs, batch_id="b1"))
    row = svc.store.get(r.job_id)
    for k in ("output_notebook", "metrics_path"):
        assert Path(row[k]).resolve().is_relative_to(runs / "b1")
    assert r.name.startswith("SP500_1d_patchtst_") and r.queue_position == 1


# ---------------------------------------------------------------- ordering, retries, progress, cancel, health
def test_priority_order_and_queue_positions(nbs, runs, tmp_path):
    log = tmp_path / "order.log"
    svc = TrainingService(max_concurrent=1)
    resp = svc.submit_batch([_req(nbs, priority=p, parameters={"log": str(log)}) for p in (1, 5, 3, 1)], batch_id="prio", check_data=False)
    assert [r.queue_position for r in resp] == [3, 1, 2, 4]
    with svc:
        out = svc.run_pending(batch_id="prio", timeout=120)
    assert all(j.status == TrainingJobStatus.COMPLETED for j in out)
    ran = [line.split()[0] for line in Path(log).read_text().splitlines()]
    assert ran == [resp[i].job_id for i in (1, 2, 0, 3)]   # priority 5, 3, then the two 1s in submission order
    assert out[0].metrics["val_mae"] == 1.0 and out[0].mlflow_run_id == "run-" + out[0].job_id[:8]


def test_untagged_template_takes_parameters_in_its_first_code_cell(nbs, runs):
    with TrainingService() as svc:
        [job] = svc.run_batch([_req(nbs, "notag", symbol="NASDAQ", max_retries=0)], batch_id="notag", check_data=False, timeout=60)
    assert (job.status, job.metrics) == (TrainingJobStatus.COMPLETED, {"symbol": "NASDAQ"}), job.error


def test_failing_notebook_retries_with_backoff_then_fails(nbs, runs):
    with TrainingService(backoff=0.3, backoff_max=10) as svc:
        [job] = svc.run_batch([_req(nbs, "boom", max_retries=2)], batch_id="boom", check_data=False, timeout=120)
    assert job.status == TrainingJobStatus.FAILED and job.attempts == 3
    assert job.error == "attempt 3: ValueError: boom for SP500"
    assert [h["outcome"] for h in job.history] == ["failed"] * 3
    for k in (1, 2):   # the k-th retry waited at least backoff * 2**(k-1)
        assert job.history[k]["started"] - job.history[k - 1]["finished"] >= 0.3 * 2 ** (k - 1) * 0.95
    out = Path(job.output_notebook)
    assert notebook_error(out) == "ValueError: boom for SP500"   # the executed notebook, error cells included, is kept
    assert [notebook_error(out.with_name(f"{out.stem}.attempt{k}.ipynb")) for k in (1, 2)] == ["ValueError: boom for SP500"] * 2
    assert not Path(svc.store.get(job.job_id)["metrics_path"]).exists() and job.metrics == {}


def test_progress_from_inside_the_notebook(nbs, runs, tmp_path):
    release = tmp_path / "release"
    svc = TrainingService()

    async def flow():
        resp = await svc.start_async_training(AsyncTrainingRequest(**_req(nbs, "progress", parameters={"release": str(release)})))
        assert resp.status == TrainingJobStatus.QUEUED or resp.status == TrainingJobStatus.RUNNING
        t0 = time.time()
        while (st := await svc.get_training_status(resp.job_id)).current_epoch != 1:
            assert time.time() - t0 < 60 and not st.done, st
            await asyncio.sleep(0.05)
        assert (st.status, st.total_epochs, st.current_loss, st.validation_loss, st.eta_seconds) == (TrainingJobStatus.RUNNING, 3, 0.5, 0.6, 7)
        assert abs(st.progress - 1 / 3) < 1e-9 and st.device == "cpu"
        release.touch()
        while not (st := await svc.get_training_status(resp.job_id)).done:
            assert time.time() - t0 < 60
            await asyncio.sleep(0.05)
        return st

    with svc:
        st = asyncio.run(flow())
    assert (st.status, st.progress, st.current_epoch, st.metrics, st.mlflow_run_id) == (TrainingJobStatus.COMPLETED, 1.0, 3, {"val_mae": 0.25}, "abc123")
    assert [p["epoch"] for p in svc.store.progress_history(st.job_id)] == [1, 3]


def test_cancel_queued_and_running(nbs, runs, tmp_path):
    started = tmp_path / "started"
    svc = TrainingService(max_concurrent=1)
    a = svc.submit(_req(nbs, "wait", priority=1, parameters={"started": str(started)}), check_data=False)
    b = svc.submit(_req(nbs, "ok"), check_data=False)
    with svc:
        svc.start()
        _wait_for(lambda: _lines(started) == [a.job_id])
        assert svc.cancel(b.job_id).status == TrainingJobStatus.CANCELLED   # queued: cancelled at once, never starts
        t0 = time.time()
        assert svc.cancel(a.job_id).status == TrainingJobStatus.RUNNING     # running: its kernel is killed
        _wait_for(lambda: svc.status(a.job_id).done, timeout=15)
        took = time.time() - t0
    sa, sb = svc.status(a.job_id), svc.status(b.job_id)
    assert sa.status == TrainingJobStatus.CANCELLED and took < 5, (sa, took)
    assert (sb.status, sb.attempts, Path(sb.output_notebook).exists()) == (TrainingJobStatus.CANCELLED, 0, False)
    kernels = [p for p in psutil.Process().children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]
    assert kernels == []


def test_health_counts_and_lost_jobs(nbs, runs):
    svc = TrainingService(gpus=[])
    with svc:
        svc.run_batch([_req(nbs, "boom", max_retries=0)], batch_id="h", check_data=False, timeout=60)
        svc.submit_batch([_req(nbs), _req(nbs)], batch_id="later", check_data=False)
        h = svc.health()
    assert (h.is_healthy, h.failed_jobs, h.queued_jobs, h.active_jobs, h.problems) == (True, 1, 2, 0, [])
    r = h.system_resources
    assert r["cpu_count"] == len(os.sched_getaffinity(0)) and 0 <= r["cpu_percent"] <= 100
    assert r["memory"]["total_gb"] > 0 and 0 < r["memory"]["percent"] < 100
    assert len(r["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); token = process_token(dead.pid); dead.wait()
    lost = svc.store.claim(token, batch_id="later")   # a job whose service died
    h = svc.health()
    assert not h.is_healthy and h.active_jobs == 1 and lost["name"] in h.problems[0]


def test_torch_threads_and_gpu_assignment(nbs, runs, tmp_path):
    "CPU jobs get their share of the cores and no GPU; each GPU job gets a device of its own (ids handed down, no GPU needed to check)."
    log = tmp_path / "gpu.log"
    with TrainingService(max_concurrent=2, gpus=[0]) as svc:
        jobs = svc.run_batch([_req(nbs), _req(nbs, gpu=True, parameters={"sleep": 0.5, "log": str(log)}),
                              _req(nbs, gpu=True, parameters={"sleep": 0.5, "log": str(log)})], batch_id="dev", check_data=False, timeout=120)
    cpu, g1, g2 = jobs
    threads = plan_workers(2)["torch_threads"]
    want = {"omp": str(threads), "torch_threads": threads, "cuda": "", "finsight_device": "cpu", "device": "cpu"}
    assert {k: cpu.metrics[k] for k in want} == want and cpu.device == "cpu"
    assert all(g.metrics["cuda"] == "0" and g.metrics["finsight_device"] == "cuda" and g.device == "cuda:0" for g in (g1, g2))
    (s1, e1), (s2, e2) = sorted((g.history[0]["started"], g.history[0]["finished"]) for g in (g1, g2))
    assert e1 <= s2   # one device: the two GPU jobs never overlapped


# ---------------------------------------------------------------- restarts and concurrent services
SERVICE = "from finsight.jobs import TrainingService\nTrainingService(max_concurrent={n}, backoff=0.2).run_pending(batch_id='{b}', timeout=300)"


def test_killed_service_restarts_and_finishes_batch_exactly_once(nbs, runs, tmp_path):
    log, started = tmp_path / "done.log", tmp_path / "started.log"
    params = {"sleep": 3.0, "log": str(log), "started": str(started)}
    ids = [r.job_id for r in TrainingService().submit_batch([_req(nbs, parameters=params) for _ in range(4)], batch_id="b", check_data=False)]
    proc = subprocess.Popen([sys.executable, "-c", SERVICE.format(n=2, b="b")], env=os.environ.copy())
    try:
        _wait_for(lambda: len(_lines(log)) >= 2 * 3 and len(_lines(started)) >= 3, timeout=90)   # two done, the next one or two running
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait()
    store = JobStore(runs / "jobs.db")
    running = [r["id"] for r in store.rows(status="running")]
    assert running and store.counts()["completed"] >= 1
    with TrainingService(max_concurrent=2, backoff=0.2) as svc:
        out = svc.run_pending(batch_id="b", timeout=120)
    assert [j.status for j in out] == [TrainingJobStatus.COMPLETED] * 4
    done = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert done == Counter(ids), done   # every job ran to completion exactly once
    hist = {j.job_id: [h["outcome"] for h in j.history] for j in out}
    assert all(hist[i] == ["completed"] for i in ids if i not in running)
    assert all(hist[i] in (["interrupted", "completed"], ["completed"]) for i in running)   # retried, or finished before the kill
    assert any(hist[i] == ["interrupted", "completed"] for i in running)


def test_two_services_share_one_store(nbs, runs, tmp_path):
    log = tmp_path / "done.log"
    ids = [r.job_id for r in TrainingService().submit_batch([_req(nbs, parameters={"sleep": 1.0, "log": str(log)}) for _ in range(8)],
                                                            batch_id="s", check_data=False)]
    proc = subprocess.Popen([sys.executable, "-c", SERVICE.format(n=1, b="s")], env=os.environ.copy())
    try:
        with TrainingService(max_concurrent=1) as svc:
            out = svc.run_pending(batch_id="s", timeout=120)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert [j.status for j in out] == [TrainingJobStatus.COMPLETED] * 8
    rows = [line.split() for line in log.read_text().splitlines()]
    assert Counter(r[0] for r in rows) == Counter(ids)             # no job ran twice
    assert {int(r[1]) for r in rows} == {os.getpid(), proc.pid}   # and both services ran some


def test_jobs_in_threads_leave_the_service_working_directory_alone(nbs, runs):
    "Each kernel starts in its template's folder; the service process (jobs run in its threads) keeps its own cwd."
    before = os.getcwd()
    with TrainingService(max_concurrent=2) as svc:
        out = svc.run_batch([_req(nbs, symbol=s) for s in ("SP500", "NASDAQ", "SP500", "NASDAQ")], max_concurrent=2)
    assert os.getcwd() == before
    assert [s.status.value for s in out] == ["completed"] * 4
    assert {s.metrics["cwd"] for s in out} == {str(Path(nbs["ok"]).parent)}


SITECUSTOMIZE = """
import os, sys
_log = os.environ.get("FINSIGHT_TEST_SQLITE_LOG")
if _log:
    def _hook(event, args, _log=_log):
        if event == "sqlite3.connect":
            with open(_log, "a") as f: f.write(f"{os.getpid()} {args[0]}\\n")
    sys.addaudithook(_hook)
"""


def test_cluster_mode_over_tls_without_the_job_store_on_workers(nbs, runs, tmp_path, monkeypatch):
    """Cluster mode: a TLS `dask scheduler` and `dask worker` in their own processes, a real `mlflow server`. Jobs run,
    report progress and are cancelled through Dask; an audit hook in every worker process (the worker, its zygote and
    the kernels it forks) records each SQLite file opened: none is."""
    from distributed import Security
    from mlflow.tracking import MlflowClient
    from finsight.testing import LocalMlflowServer, free_port
    tracked = _notebook(tmp_path / "tracked.ipynb", 'job_id = ""\nmetrics_path = ""',
                        'import json, os, mlflow\nmlflow.set_experiment("cluster")\n'
                        'with mlflow.start_run() as r: mlflow.log_metric("val_mae", 0.5)\n'
                        'json.dump({"val_mae": 0.5, "worker_uri": os.environ.get("MLFLOW_TRACKING_URI"), "mlflow_run_id": r.info.run_id}, open(metrics_path, "w"))')
    tmp = Security.temporary()
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.write_text(tmp.tls_ca_file); cert.write_text(tmp.tls_scheduler_cert); key.write_text(tmp.tls_scheduler_key)
    tls = ["--tls-ca-file", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]
    site, log = tmp_path / "site", tmp_path / "sqlite.log"; site.mkdir(); (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    port, bin_ = free_port(), Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "FINSIGHT_TEST_SQLITE_LOG": str(log)}
    sched = subprocess.Popen([str(bin_ / "dask"), "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard", *tls],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([str(bin_ / "dask"), "worker", f"tls://127.0.0.1:{port}", "--nthreads", "3", "--no-dashboard", *tls],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv = LocalMlflowServer(tmp_path / "mlflow").start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri); get_settings(refresh=True)
    security = Security(tls_ca_file=str(ca), tls_client_cert=str(cert), tls_client_key=str(key), require_encryption=True)
    release, started = tmp_path / "release", tmp_path / "started"
    try:
        with TrainingService(scheduler_address=f"tls://127.0.0.1:{port}", security=security, torch_threads=1, poll_interval=0.1) as svc:
            _wait_for(lambda: len(svc._dask().scheduler_info()["workers"]) == 1, timeout=60)
            svc._dask().run(lambda: __import__("sqlite3").connect(":memory:").close())   # the hook works: this one is logged
            jobs = svc.submit_batch([_req(nbs, "progress", parameters={"release": str(release)}), _req(nbs, "wait", parameters={"started": str(started)}),
                                     {"symbol": "SP500", "template": tracked}], batch_id="cluster", check_data=False)
            prog, wait, track = (j.job_id for j in jobs)
            svc.start()
            _wait_for(lambda: svc.status(prog).current_epoch == 1, timeout=90)   # progress from a kernel on the worker, through Dask
            assert svc.status(prog).validation_loss == 0.6 and svc.status(prog).status.value == "running"
            _wait_for(lambda: started.exists(), timeout=60); svc.cancel(wait)
            release.touch()
            _wait_for(lambda: all(svc.status(j.job_id).done for j in jobs), timeout=90)
            out = {j: svc.status(j) for j in (prog, wait, track)}
            assert svc.health().is_healthy
        logged = MlflowClient(srv.uri).get_run(out[track].mlflow_run_id).data.metrics
    finally:
        for p in (worker, sched): p.terminate()
        for p in (worker, sched): p.wait(timeout=30)
        srv.stop(); get_settings(refresh=True)
    assert [out[j].status.value for j in (prog, wait, track)] == ["completed", "cancelled", "completed"], {j: (o.status, o.error) for j, o in out.items()}
    assert out[prog].metrics == {"val_mae": 0.25} and out[prog].current_epoch == 3 and out[prog].device == "cpu"
    assert "cancelled while running" in out[wait].error
    assert out[track].metrics["worker_uri"] == srv.uri   # the worker had no MLFLOW_TRACKING_URI: the service passed its own
    assert logged["val_mae"] == 0.5   # the kernel's run is on the server
    opened = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    assert ":memory:" in opened and [f for f in opened if f != ":memory:"] == [], opened   # no worker process opened a SQLite file
