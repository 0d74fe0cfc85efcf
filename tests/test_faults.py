"""The fault suite: bad input and faults on the command line. Each case asserts one clear line on stderr (no traceback),
the exit code (2: bad input, 1: failed, 130: Ctrl-C), and that nothing outside the case's own runs folder was written.
A batch killed with SIGKILL in the middle is finished by `finsight jobs resume`, every job completed exactly once.
`docs/reliability.md` is the table of these cases and what happens."""
import json, os, signal, sqlite3, subprocess, sys, time
from pathlib import Path
import pytest
from finsight.cli import main
from finsight.settings import ConfigError, get_settings

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cretT0ken"
CLI = [sys.executable, "-c", "import sys; from finsight.cli import main; sys.exit(main())"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    "A fresh runs folder and data root for one case (the settings reread)."
    runs, data = tmp_path / "runs", tmp_path / "data"; runs.mkdir(); data.mkdir()
    monkeypatch.setenv("FINSIGHT_RUNS_DIR", str(runs)); monkeypatch.setenv("FINSIGHT_DATA_ROOT", str(data))
    get_settings(refresh=True)
    yield tmp_path
    monkeypatch.undo(); get_settings(refresh=True)


def _bars_csv(n: int = 300) -> str:
    from finsight.data.sources import synthetic_ohlcv
    df = synthetic_ohlcv(n, timeframe="1d", seed=1); df.index.name = "timestamp"
    return df.reset_index().to_csv(index=False)


def _setup(case: str, tmp: Path):
    "What a case needs on disk before it runs."
    data, runs = tmp / "data", tmp / "runs"
    if case == "nan_timestamp":
        (data / "BAD").mkdir(); t = _bars_csv().splitlines(); t[5] = "," + t[5].split(",", 1)[1]; (data / "BAD" / "1d.csv").write_text("\n".join(t))
    if case == "two_date_columns":
        (data / "BAD").mkdir(); t = _bars_csv().splitlines(); (data / "BAD" / "1d.csv").write_text("\n".join(["date," + t[0]] + [r.split(",")[0] + "," + r for r in t[1:]]))
    if case == "no_close":
        (data / "BAD").mkdir(); (data / "BAD" / "1d.csv").write_text("timestamp,open,high,low,volume\n2024-01-01,1,2,0.5,10\n")
    if case == "empty_file":
        (data / "BAD").mkdir(); (data / "BAD" / "1d.csv").write_text("")
    if case == "corrupt_jobs_db": (runs / "jobs.db").write_bytes(b"not a database " * 64)
    if case == "bad_space": (tmp / "space.yaml").write_text("lerning_rate: {low: 0.001, high: 0.01}\n")
    if case == "space_out_of_bounds": (tmp / "space.yaml").write_text("learning_rate: {low: -1.0, high: 0.01}\n")
    if case == "space_wrong_type": (tmp / "space.yaml").write_text("d_model: {choices: [64, 'big']}\n")
    if case == "bad_settings": (tmp / "settings.ini").write_text("[finsight]\nthis line has no equals sign\n")
    if case == "settings_bad_value": (tmp / "settings.ini").write_text("[finsight]\ndefault_batch_size = many\n")


# (case, argv, extra environment, exit code, words the one line must hold)
CASES = [
    ("unknown_symbol", ["train", "NOPE"], {}, 2, "unknown symbol 'NOPE'"),
    ("symbol_with_newline", ["train", "SP500\n"], {}, 2, "symbol"),
    ("symbol_path", ["train", "../../etc"], {}, 2, "symbol"),
    ("bad_timeframe", ["train", "SP500", "--timeframe", "7m"], {}, 2, "7m"),
    ("unknown_config_field", ["train", "SP500", "--set", "epochs=3"], {}, 2, "epochs"),
    ("negative_epochs", ["train", "SP500", "--set", "num_epochs=-1"], {}, 2, "num_epochs"),
    ("misspelt_param", ["train", "SP500", "--param", "export_formts=[]"], {}, 2, "export_formts"),
    ("param_clashes_with_option", ["train", "SP500", "--param", "symbol=NASDAQ"], {}, 2, "clashes with the option SYMBOL"),
    ("negative_threads", ["train", "SP500", "--param", "torch_threads=-1"], {}, 2, "torch_threads"),
    ("set_without_equals", ["train", "SP500", "--set", "num_epochs"], {}, 2, "key=value"),
    ("unknown_task", ["train", "SP500", "--task", "weather"], {}, 2, "unknown task 'weather'"),
    ("unknown_model", ["train", "SP500", "--model", "lstm"], {}, 2, "lstm"),
    ("run_misspelt_param", ["run", "SP500", "--param", "export_formts=[]"], {}, 2, "export_formts"),
    ("batch_bad_timeframe", ["batch", "--symbols", "SP500", "--timeframes", "7m"], {}, 2, "7m"),
    ("batch_reserved_param", ["batch", "--symbols", "SP500", "--param", "job_id=x"], {}, 2, "job_id"),
    ("backtest_no_folds", ["backtest", "SP500", "--folds", "0"], {}, 2, "folds"),
    ("backtest_too_many_folds", ["backtest", "SP500", "--model", "dlinear", "--folds", "8", "--param", "test_size=1000"], {}, 2, "folds"),
    ("backtest_no_workers", ["backtest", "SP500", "--workers", "0"], {}, 2, "workers"),
    ("backtest_exports", ["backtest", "SP500", "--param", "export_formats=[\"onnx\"]"], {}, 2, "exports no model"),
    ("tune_no_trials", ["tune", "SP500", "--trials", "0"], {}, 2, "trials"),
    ("tune_bad_timeout", ["tune", "SP500", "--timeout", "soon"], {}, 2, "duration"),
    ("bad_space", ["tune", "SP500", "--model", "dlinear", "--space", "{tmp}/space.yaml"], {}, 2, "lerning_rate"),
    ("space_out_of_bounds", ["tune", "SP500", "--model", "dlinear", "--space", "{tmp}/space.yaml"], {}, 2, "learning_rate"),
    ("space_wrong_type", ["tune", "SP500", "--model", "dlinear", "--space", "{tmp}/space.yaml"], {}, 2, "d_model"),
    ("missing_space_file", ["tune", "SP500", "--space", "{tmp}/nope.yaml"], {}, 2, "does not exist"),
    ("nan_timestamp", ["train", "BAD"], {}, 2, "missing value(s), first at rows [4]"),
    ("two_date_columns", ["train", "BAD"], {}, 2, "all name the 'timestamp' column"),
    ("no_close", ["train", "BAD"], {}, 2, "close"),
    ("empty_file", ["train", "BAD"], {}, 2, "empty"),
    ("report_unknown_symbol", ["data", "report", "NOPE"], {}, 2, "NOPE"),
    ("device_not_there", ["train", "SP500", "--set", "num_epochs=1"], {"FINSIGHT_DEVICE": "cuda"}, 2, "FINSIGHT_DEVICE"),
    ("bad_settings", ["info"], {"FINSIGHT_SETTINGS": "{tmp}/settings.ini"}, 2, "settings"),
    ("settings_bad_value", ["info"], {"FINSIGHT_SETTINGS": "{tmp}/settings.ini"}, 2, "default_batch_size"),
    ("tracking_uri_with_secret", ["train", "SP500", "--param", f"tracking_uri=ftp://bob:{SECRET}@host/x"], {}, 2, "tracking"),
    ("corrupt_jobs_db", ["jobs", "list"], {}, 1, "cannot be used: file is not a database"),
    ("job_unknown", ["jobs", "status", "abc"], {}, 2, "no job with an id starting 'abc'"),
    ("resume_nothing", ["jobs", "resume"], {}, 2, "no batch"),
    ("resume_unknown_batch", ["jobs", "resume", "batch-nope"], {}, 2, "no batch 'batch-nope'"),
    ("cluster_embedded_tracking", ["batch", "--symbols", "SP500", "--scheduler", "tcp://127.0.0.1:9"], {}, 2, "needs an MLflow tracking server"),
    ("cluster_tracking_credentials", ["batch", "--symbols", "SP500", "--scheduler", "tcp://127.0.0.1:9"],
     {"MLFLOW_TRACKING_URI": f"http://bob:{SECRET}@127.0.0.1:9"}, 2, "MLFLOW_TRACKING_USERNAME"),
]


@pytest.mark.parametrize("case,argv,extra,code,words", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_clear_line(case, argv, extra, code, words, env, capsys, monkeypatch):
    if case == "device_not_there":
        import torch
        if torch.cuda.is_available(): pytest.skip("this machine has a GPU: FINSIGHT_DEVICE=cuda is not a fault here")
    _setup(case, env)
    for k, v in extra.items(): monkeypatch.setenv(k, v.format(tmp=env))
    try: get_settings(refresh=True)
    except ConfigError: pass                                                    # a bad settings file: the command itself must say so
    before = {p: p.stat().st_mtime_ns for p in env.rglob("*") if p.is_file()}
    rc = main([a.format(tmp=env) for a in argv])
    err = capsys.readouterr().err
    assert rc == code, (rc, err)
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("finsight: error: "), err          # one line, no traceback
    assert words in lines[0], lines[0]
    assert SECRET not in err
    assert {p: p.stat().st_mtime_ns for p in before if p.exists()} == before          # nothing that was there changed


def _finsight(*args, env=None, **kw):
    "`finsight ARGS` in a process group of its own, with Ctrl-C's default (a test runner started in the background inherits SIGINT ignored)."
    return subprocess.Popen([*CLI, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    env = os.environ | {"FINSIGHT_RUNS_DIR": str(tmp_path / "runs")}
    p = _finsight("train", "SP500", "--model", "dlinear", "--set", "num_epochs=200", "early_stopping_patience=200", env=env)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not list((tmp_path / "runs").rglob("epoch_*.pt")): time.sleep(0.3)   # an epoch is done
    assert p.poll() is None, p.communicate()[1][-2000:]
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert "Traceback" not in err and "finsight: interrupted; a batch's unfinished jobs stay in the job store" in err, err[-2000:]


def test_a_batch_killed_in_the_middle_is_finished_by_resume(tmp_path):
    """SIGKILL to the batch process and its kernels once the first job has completed; `finsight jobs resume` runs the rest,
    and the job that had completed is not run again (same attempt count, same notebook)."""
    env = os.environ | {"FINSIGHT_RUNS_DIR": str(tmp_path / "runs")}
    db = tmp_path / "runs" / "jobs.db"
    p = _finsight("batch", "--symbols", "SP500", "NASDAQ", "--models", "dlinear", "--max-concurrent", "1", "--set", "num_epochs=2",
                  "--param", "export_formats=[]", env=env)
    def rows():
        try:
            with sqlite3.connect(db, timeout=10) as c: return c.execute("SELECT id, status, attempts, output_notebook FROM jobs ORDER BY seq").fetchall()
        except sqlite3.Error: return []
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not any(r[1] == "completed" for r in rows()): time.sleep(0.5)
    assert p.poll() is None, p.communicate()[1][-2000:]            # still running the second job
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    first = {r[0]: r for r in rows()}
    done = [r for r in first.values() if r[1] == "completed"]
    assert len(first) == 2 and len(done) == 1, first
    nb_time = Path(done[0][3]).stat().st_mtime_ns
    r = subprocess.run([*CLI, "jobs", "resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    after = {x[0]: x for x in rows()}
    assert all(x[1] == "completed" for x in after.values()), after
    assert after[done[0][0]][2] == done[0][2] and Path(done[0][3]).stat().st_mtime_ns == nb_time   # not run again
    assert "SP500" in r.stdout and "NASDAQ" in r.stdout                                               # the whole batch's leaderboard


def _table() -> str:
    "The markdown table of `docs/reliability.md`: every case run as the test runs it, with the line and exit code it gave."
    import contextlib, io, tempfile
    rows = ["| case | command | exit | what the user reads |", "|---|---|---|---|"]
    for case, argv, extra, code, words in CASES:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d); (tmp / "runs").mkdir(); (tmp / "data").mkdir(); _setup(case, tmp)
            env = {"FINSIGHT_RUNS_DIR": str(tmp / "runs"), "FINSIGHT_DATA_ROOT": str(tmp / "data")} | {k: v.format(tmp=tmp) for k, v in extra.items()}
            old = {k: os.environ.get(k) for k in env}; os.environ.update(env)
            try:
                with contextlib.suppress(ConfigError): get_settings(refresh=True)
                err = io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()): rc = main([a.format(tmp=tmp) for a in argv])
            finally:
                for k, v in old.items():
                    if v is None: os.environ.pop(k, None)
                    else: os.environ[k] = v
                get_settings(refresh=True)
            line = err.getvalue().strip().replace(d, "<tmp>").replace("|", "\\|")
            cmd = " ".join(["finsight", *[a.format(tmp="<tmp>").replace("\n", "\\n") for a in argv]]).replace("|", "\\|")
            rows.append(f"| {case} | `{cmd}` | {rc} | {line} |")
    return "\n".join(rows)


if __name__ == "__main__":   # python tests/test_faults.py: the table of docs/reliability.md
    print(_table())


def test_ctrl_c_stops_a_batch_within_seconds_and_resume_finishes_it(tmp_path):
    """SIGINT to `finsight batch` while its first job trains: within seconds the kernel is killed, the process exits 130
    with one line, and the job is back in the queue (not failed); `finsight jobs resume` then completes the batch, the
    interrupted job going on from its last checkpoint instead of epoch 0."""
    env = os.environ | {"FINSIGHT_RUNS_DIR": str(tmp_path / "runs")}
    db = tmp_path / "runs" / "jobs.db"
    p = _finsight("batch", "--symbols", "SP500", "NASDAQ", "--models", "dlinear", "--max-concurrent", "1", "--set", "num_epochs=40",
                  "early_stopping_patience=40", "--param", "export_formats=[]", env=env)
    def rows():
        try:
            with sqlite3.connect(db, timeout=10) as c: return c.execute("SELECT status, epoch, failures, interruptions FROM jobs ORDER BY seq").fetchall()
        except sqlite3.Error: return []
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not any(r[0] == "running" and (r[1] or 0) >= 2 for r in rows()): time.sleep(0.3)   # 2 epochs done
    assert p.poll() is None, p.communicate()[1][-2000:]
    t0 = time.time(); os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and time.time() - t0 < 20, (p.returncode, time.time() - t0, err[-2000:])
    assert "Traceback" not in err and "finsight: interrupted; a batch's unfinished jobs stay in the job store" in err, err[-2000:]
    assert [r[0] for r in rows()] == ["queued", "queued"] and rows()[0][2:] == (0, 1), rows()      # interrupted, not failed
    r = subprocess.run([*CLI, "jobs", "resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and [x[0] for x in rows()] == ["completed", "completed"], (r.stderr[-2000:], rows())
    with sqlite3.connect(db) as c:
        first = c.execute("SELECT MIN(p.epoch) FROM progress p JOIN jobs j ON j.id = p.job_id WHERE j.seq = 1 AND p.attempt = 2").fetchone()[0]
    assert first >= 2, first                                                                         # resumed, not restarted


def test_two_runs_of_one_job_at_once_each_get_their_own_folder(tmp_path):
    """`finsight train` of the same symbol, timeframe and model twice at the same time: two folders, both complete, each
    with its own checkpoints, plots, export and metrics (nothing shared, nothing overwritten)."""
    env = os.environ | {"FINSIGHT_RUNS_DIR": str(tmp_path / "runs")}
    ps = [_finsight("train", "SP500", "--model", "dlinear", "--set", "num_epochs=3", "--param", 'export_formats=["pt"]', env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in ps]
    assert [p.returncode for p in ps] == [0, 0], [o[1][-1500:] for o in outs]
    dirs = [Path(json.loads(o[0][o[0].index("{"):])["output_dir"]) for o in outs]
    assert dirs[0] != dirs[1] and dirs[0].parent == dirs[1].parent == tmp_path / "runs" / "jobs" / "SP500_1d_dlinear", dirs
    for d in dirs:
        m = json.loads((d / "metrics.json").read_text())
        assert m["output_dir"] == str(d) and (d / "model" / "export.json").is_file() and list((d / "checkpoints").rglob("epoch_*.pt"))


def _file_size_limit(limit: int):
    "preexec_fn: Ctrl-C's default, and no file may grow past `limit` bytes (the write fails with EFBIG, as on a full disk)."
    import resource
    def pre():
        signal.signal(signal.SIGINT, signal.SIG_DFL); signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def test_a_job_that_cannot_write_fails_in_one_line_and_keeps_what_it_finished(tmp_path):
    """Every file write of `finsight train` fails past 100 KB (RLIMIT_FSIZE: EFBIG, the same OSError path as a full disk):
    one line naming the step and the folder, exit 1; the checkpoints written before stay loadable, no half-written
    export is left; run again with room in the same folder (the job's own, by its marker), the job completes."""
    from finsight.training import load_checkpoint
    env = os.environ | {"FINSIGHT_RUNS_DIR": str(tmp_path / "runs")}
    args = ["train", "SP500", "--model", "dlinear", "--set", "num_epochs=2", "--param", 'export_formats=["pt"]']
    p = subprocess.run([*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(100_000))
    lines = [l for l in p.stderr.splitlines() if l.startswith("finsight:")]
    assert p.returncode == 1 and len(lines) == 1 and "Traceback" not in p.stderr, (p.returncode, p.stderr[-2000:])
    assert "exporting the model: cannot write in" in lines[0] and "File too large" in lines[0], lines[0]
    folder = Path(lines[0].split("cannot write in ")[1].split(" (")[0])
    assert folder.parent == tmp_path / "runs" / "jobs" / "SP500_1d_dlinear" and (folder / ".finsight-job.json").is_file()
    ckpts = sorted(folder.rglob("epoch_*.pt"))
    assert ckpts and all(load_checkpoint(c)["epoch"] >= 1 for c in ckpts)                  # finished checkpoints are whole
    assert not (folder / "model").exists() and not list(folder.glob(".model*")), sorted(f.name for f in folder.iterdir())   # no half export
    r = subprocess.run([*CLI, *args, "--param", f"output_dir={folder}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (folder / "model" / "export.json").is_file() and json.loads((folder / "metrics.json").read_text())["output_dir"] == str(folder)


def test_two_batches_at_once_on_one_runs_folder(tmp_path):
    """Two `finsight batch` processes at the same time on one runs folder (one job store): each runs its own batch's jobs,
    every job completes exactly once, and the two batches' folders and notebooks are apart."""
    env = os.environ | {"FINSIGHT_RUNS_DIR": str(tmp_path / "runs")}
    common = ["--symbols", "SP500", "NASDAQ", "--models", "dlinear", "--max-concurrent", "1", "--set", "num_epochs=1", "--param", "export_formats=[]"]
    ps = [_finsight("batch", *common, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in ps]
    assert [p.returncode for p in ps] == [0, 0], [o[1][-1500:] for o in outs]
    with sqlite3.connect(tmp_path / "runs" / "jobs.db") as c:
        rows = c.execute("SELECT batch_id, status, attempts, output_notebook, request FROM jobs ORDER BY seq").fetchall()
    batches = sorted({r[0] for r in rows})
    assert len(batches) == 2 and sorted((r[0], json.loads(r[4])["symbol"]) for r in rows) == sorted((b, s) for b in batches for s in ("NASDAQ", "SP500"))
    assert all(r[1] == "completed" and r[2] == 1 for r in rows), rows                      # each job ran once, by its own batch
    for r in rows:
        assert Path(r[3]).is_file() and Path(r[3]).parent == tmp_path / "runs" / r[0]
    assert all("SP500" in o[0] and "NASDAQ" in o[0] for o in outs)                          # each prints its own leaderboard


def test_a_read_only_output_folder_is_one_line_and_nothing_is_written(tmp_path):
    """`output_dir` a folder the job may not write (mode 0555; as root, the job's process drops the capabilities that
    let root ignore modes, so the mode holds): exit 1, one line naming the step, the folder and the permission;
    nothing is written in it."""
    import ctypes
    runs, out = tmp_path / "runs", tmp_path / "runs" / "jobs" / "mine"
    out.mkdir(parents=True); out.chmod(0o555)
    env = os.environ | {"FINSIGHT_RUNS_DIR": str(runs)}
    def pre():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if os.geteuid() == 0:   # PR_CAPBSET_DROP (24) of CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2): gone after exec
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (1, 2):
                if libc.prctl(24, cap, 0, 0, 0) != 0: raise OSError(ctypes.get_errno(), "cannot drop CAP_DAC_OVERRIDE")
    r = subprocess.run([*CLI, "train", "SP500", "--model", "dlinear", "--set", "num_epochs=1", "--param", f"output_dir={out}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, preexec_fn=pre)
    lines = [l for l in r.stderr.splitlines() if l.startswith("finsight:")]
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
    assert f"creating the job folder: cannot write in {out} (Permission denied" in lines[0], lines[0]
    assert list(out.iterdir()) == []
