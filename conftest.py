"""Guards for every test session (tests/ and the notebooks nbval executes): all runs, job stores, MLflow stores and
exports go to a temporary runs folder, never the user's `runs/`; and the session fails when it changed a file under
`runs/` or `data/` all the same (a test that writes there on purpose must use its own folder)."""
import os, shutil, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
GUARDED = (ROOT / "runs", ROOT / "data")


def _snapshot() -> dict:
    "relative path -> (size, mtime in ns) of every file under the guarded folders (None for folders)."
    out = {}
    for top in GUARDED:
        for p in top.rglob("*") if top.exists() else ():
            try: st = p.lstat()
            except FileNotFoundError: continue
            out[str(p.relative_to(ROOT))] = (st.st_size, st.st_mtime_ns) if p.is_file() else None
    return out


def pytest_configure(config):
    config.finsight_runs = tempfile.mkdtemp(prefix="finsight-test-runs-")
    os.environ["FINSIGHT_RUNS_DIR"] = config.finsight_runs   # inherited by nbval's kernels, job services and CLI subprocesses
    os.environ.pop("MLFLOW_TRACKING_URI", None)                # the embedded store under the temporary runs folder
    config.finsight_before = _snapshot()


def pytest_sessionfinish(session, exitstatus):
    cfg = session.config
    before, after = cfg.finsight_before, _snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        rep = cfg.pluginmanager.get_plugin("terminalreporter")
        msg = f"the test session changed {len(changed)} file(s) of the user's runs/ or data/: {', '.join(changed[:10])}"
        rep.write_line(msg, red=True) if rep else print(msg)
        session.exitstatus = 1
    shutil.rmtree(cfg.finsight_runs, ignore_errors=True)
