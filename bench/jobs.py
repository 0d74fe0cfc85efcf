"""Job service overhead: what the store, papermill and Dask cost per job, measured on trivial notebooks.

    python bench/jobs.py [--jobs 8]

Training time is not in these numbers (bench/batch.py measures real training batches); this is the floor every
job pays: claiming it, starting a kernel, running a papermill notebook, recording the outcome.
"""
from __future__ import annotations
import argparse, os, sys, tempfile, time, uuid
from pathlib import Path
import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import table, write_section  # noqa: E402


def _template(d: Path) -> str:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell('metrics_path = ""', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell('import json\njson.dump({"val_mae": 0.0}, open(metrics_path, "w"))')]
    nbformat.write(nb, d / "trivial.ipynb")
    return str(d / "trivial.ipynb")


def store_ops(n: int = 500) -> dict:
    "Claim + finish cycles per second on a fresh store (the service's own overhead per job)."
    from finsight.job_store import JobStore
    st = JobStore(Path(tempfile.mkdtemp()) / "jobs.db")
    st.add([{"id": uuid.uuid4().hex, "name": f"j{i}", "created": time.time(), "request": "{}", "template": "t.ipynb",
             "output_notebook": f"j{i}.ipynb", "metrics_path": f"j{i}.json"} for i in range(n)])
    t0 = time.perf_counter()
    while (j := st.claim("bench")) is not None: st.finish(j["id"], 1, "completed", metrics={})
    dt = time.perf_counter() - t0
    return {"what": f"store: claim + finish, {n} jobs", "jobs at once": 1, "seconds": dt, "per job (s)": dt / n, "jobs per minute": round(60 * n / dt)}


def batch(template: str, n: int, slots: int) -> dict:
    "Wall time of `n` trivial jobs run `slots` at a time on the embedded cluster (cluster start included)."
    from finsight.jobs import TrainingService
    os.environ["FINSIGHT_RUNS_DIR"] = tempfile.mkdtemp()
    from finsight.settings import get_settings; get_settings(refresh=True)
    t0 = time.perf_counter()
    with TrainingService(max_concurrent=slots) as svc:
        out = svc.run_batch([{"symbol": "SP500", "template": template, "max_retries": 0}] * n, check_data=False)
    dt = time.perf_counter() - t0
    assert all(j.status.value == "completed" for j in out), [j.error for j in out]
    return {"what": f"papermill jobs on the embedded cluster, {n} trivial notebooks", "jobs at once": slots, "seconds": dt,
            "per job (s)": dt / n, "jobs per minute": round(60 * n / dt)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8)
    a = ap.parse_args()
    template = _template(Path(tempfile.mkdtemp()))
    rows = [store_ops()] + [batch(template, a.jobs, s) for s in (1, 2)]
    write_section("Job service overhead", table(rows), f"python bench/jobs.py --jobs {a.jobs}")


if __name__ == "__main__":
    main()
