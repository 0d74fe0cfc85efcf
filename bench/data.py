"""Reading one symbol of 1,000,000 one-minute bars: local Parquet, S3 (moto's server on 127.0.0.1), hybrid cache cold/warm.

    python bench/data.py [--bars 1000000] [--repeat 5]

Writes the "Data loading" section of docs/benchmarks.md.
"""
from __future__ import annotations
import argparse, os, shutil, statistics, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import table, write_section  # noqa: E402


def timed(fn, repeat: int) -> list[float]:
    "Wall-clock seconds of `repeat` calls of `fn`."
    out = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return out


def main(bars: int, repeat: int) -> None:
    import boto3
    from finsight.data.cloud import CloudDataLoader, HybridDataLoader
    from finsight.testing import LocalS3Server
    from finsight.data.sources import LocalDataLoader, synthetic_ohlcv

    tmp = Path(tempfile.mkdtemp(prefix="finsight-bench-data-"))
    df = synthetic_ohlcv(bars, "1m", seed=0)
    local = LocalDataLoader(tmp / "local", bundled=False)
    path = local.save(df, "BTCUSDT", "1m")
    size_mb = path.stat().st_size / 2**20
    with LocalS3Server() as s3:
        os.environ.update(s3.env)  # moto's dummy credentials
        boto3.client("s3", endpoint_url=s3.endpoint_url).create_bucket(Bucket="bench")
        cloud = CloudDataLoader("s3://bench/data", endpoint_url=s3.endpoint_url)
        cloud.save(df, "BTCUSDT", "1m")
        check = lambda got: got.shape == df.shape or sys.exit(f"wrong shape {got.shape}")

        results = {"local Parquet (LocalDataLoader)": timed(lambda: check(local.load("BTCUSDT", "1m")), repeat),
                   "S3 (CloudDataLoader, moto server)": timed(lambda: check(cloud.load("BTCUSDT", "1m")), repeat)}
        cold_dirs = iter(tmp / f"cold{i}" for i in range(repeat))
        results["hybrid, cache cold (list + download + parse + move)"] = timed(
            lambda: check(HybridDataLoader(next(cold_dirs), cloud=cloud).load("BTCUSDT", "1m")), repeat)
        warm = HybridDataLoader(tmp / "warm", cloud=cloud); warm.load("BTCUSDT", "1m")
        results["hybrid, cache warm (list + ETag check + local read)"] = timed(lambda: check(warm.load("BTCUSDT", "1m")), repeat)
        assert warm.stats.hits == repeat and warm.stats.misses == 1, warm.stats
    shutil.rmtree(tmp, ignore_errors=True)

    base = statistics.median(results["local Parquet (LocalDataLoader)"])
    rows = [{"path": name, "median s": statistics.median(ts), "best s": min(ts),
             "M bars/s": bars / statistics.median(ts) / 1e6, "time vs local": f"{statistics.median(ts) / base:.1f}x"}
            for name, ts in results.items()]
    note = (f"{bars:,} one-minute bars of one symbol ({df.shape[1]} columns, Parquet object of {size_mb:.1f} MiB), "
            f"median and best of {repeat} reads, each returning the full frame. The S3 server is moto's, in a child process "
            "on the same machine (a Python werkzeug server): it measures our overhead against a slow store, not a real S3 or MinIO. "
            "A warm hybrid read costs one listing request plus the local Parquet read; a cold one adds the download, "
            "the parse that validates it and the atomic move into the cache.")
    write_section("Data loading", table(rows) + "\n\n" + note, "python bench/data.py")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    main(a.bars, a.repeat)
