"""finsight.data.cloud against a real S3 API: moto's server on 127.0.0.1 (its in-process mock does not work with s3fs).

Covers listing, reading, cache hits, remote changes, interrupted downloads, the store going down with and without a
cache, missing buckets and keys, invalid objects, keys escaping the cache, missing credentials, wrong endpoints,
`sync_to_cloud`, and MLflow run artifacts landing in the same store through a real `mlflow server`.
"""
import io, logging, os, signal, subprocess, sys, time, urllib.request, uuid, warnings
from pathlib import Path

import boto3
import pandas as pd
import pytest

from finsight.data.cloud import (BucketNotFoundError, CacheStats, CloudCredentialsError, CloudDataLoader, HybridDataLoader,
                                 ObjectNotFoundError, StaleCacheWarning, StoreUnreachableError,
                                 mlflow_artifacts_destination, mlflow_s3_env, s3_etag, sync_to_cloud)
from finsight.data.sources import DataSourceError, LocalDataLoader, TimeFrame, synthetic_ohlcv
from finsight.data.loaders import get_data_loader
from finsight.testing import LocalS3Server, free_port
from finsight.settings import load_settings

KEY_ID, SECRET = "AKIAFINSIGHTTEST0042", "finsight-test-secret-must-not-leak"


@pytest.fixture(scope="module")
def s3():
    "One moto S3 server for the module; every test makes its own bucket."
    with LocalS3Server() as srv: yield srv


def _set_test_env(mp, tmp):
    for k in list(os.environ):
        if k.startswith(("AWS_", "FINSIGHT_S3", "FINSIGHT_CACHE", "MLFLOW_S3")): mp.delenv(k)
    mp.setenv("AWS_ACCESS_KEY_ID", KEY_ID); mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1"); mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    mp.setenv("AWS_CONFIG_FILE", str(tmp / "no-aws-config")); mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-aws-credentials"))


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    "Dummy credentials in the standard variables; nothing from the real ~/.aws or environment."
    _set_test_env(monkeypatch, tmp_path)


def _kline_csv(month: str, n: int = 120) -> bytes:
    t0 = int(pd.Timestamp(f"{month}-01", tz="UTC").timestamp() * 1e6)  # Binance spot files: microseconds since 2025
    return "".join(f"{t0 + i * 60_000_000},1,2,0.5,1.5,10,{t0 + i * 60_000_000 + 59_999_999},15,3,5,7,0\n" for i in range(n)).encode()


def _new_bucket(endpoint: str) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def cloud(s3):
    "A fresh bucket with SYN (parquet 1m), BTCUSDT (Binance kline CSVs in 1m/) and ETH (1h.csv.gz) under `data/`."
    c = CloudDataLoader(f"s3://{_new_bucket(s3.endpoint_url)}/data", endpoint_url=s3.endpoint_url)
    c.save(synthetic_ohlcv(600, "1m", seed=2), "SYN", "1m")
    for month in ("2023-11", "2023-12"): c.fs.pipe_file(f"{c.bucket}/data/BTCUSDT/1m/BTCUSDT-1m-{month}.csv", _kline_csv(month))
    gz = io.BytesIO(); synthetic_ohlcv(48, "1h", seed=5).to_csv(gz, index_label="timestamp", compression="gzip")
    c.fs.pipe_file(f"{c.bucket}/data/ETH/1h.csv.gz", gz.getvalue())
    return c


def _hybrid(cloud, tmp_path, **kw):
    return HybridDataLoader(tmp_path / "cache", cloud=CloudDataLoader(f"s3://{cloud.bucket}/data", endpoint_url=cloud.endpoint_url, **kw))


def _cache_state(hy: HybridDataLoader, key: str) -> tuple[bytes, str]:
    data, meta = hy._paths(key)
    return data.read_bytes(), meta.read_text()


def _leftovers(hy: HybridDataLoader) -> list[Path]:
    tmp = hy.cache_dir / ".tmp"
    return sorted(tmp.iterdir()) if tmp.is_dir() else []


# ---------------------------------------------------------------------------------------------------------- listing, reading
def test_listing(cloud):
    assert cloud.list_symbols() == ["BTCUSDT", "ETH", "SYN"]
    assert cloud.list_timeframes("BTCUSDT") == [TimeFrame.MINUTE_1]
    assert cloud.list_timeframes("ETH") == [TimeFrame.HOUR_1]
    with pytest.raises(DataSourceError, match=r"no data for symbol 'NOPE' under s3://t-\w+/data/NOPE/"): cloud.list_timeframes("NOPE")
    assert CloudDataLoader(cloud.bucket, prefix="empty", endpoint_url=cloud.endpoint_url).list_symbols() == []


def test_reading_matches_local_loader(cloud, tmp_path):
    local = LocalDataLoader(tmp_path / "local", bundled=False)
    local.save(synthetic_ohlcv(600, "1m", seed=2), "SYN", "1m")
    for tf, start in (("1m", None), ("1h", None), ("15m", "2020-01-01 02:00")):
        got, want = cloud.load("SYN", tf, start=start), local.load("SYN", tf, start=start)
        pd.testing.assert_frame_equal(got, want)
        assert got.attrs == {"symbol": "SYN", "timeframe": tf}
    btc = cloud.load("BTCUSDT", "1m")  # two monthly kline files, concatenated
    assert len(btc) == 240 and str(btc.index.tz) == "UTC" and btc.index[0] == pd.Timestamp("2023-11-01", tz="UTC")
    assert len(cloud.load("BTCUSDT", "1h")) == 4
    eth = cloud.load("ETH", "4h")  # gzipped CSV, resampled
    assert len(eth) == 12 and eth.attrs["timeframe"] == "4h"


def test_loader_type_switch(cloud, tmp_path, monkeypatch):
    assert load_settings(path=None, env={"FINSIGHT_DATA_LOADER": "hybrid"}).data_loader_type == "hybrid"
    monkeypatch.setenv("FINSIGHT_S3_BUCKET", f"s3://{cloud.bucket}/data")
    monkeypatch.setenv("FINSIGHT_S3_ENDPOINT_URL", cloud.endpoint_url)
    monkeypatch.setenv("FINSIGHT_CACHE_DIR", str(tmp_path / "envcache"))
    c, h = get_data_loader("cloud"), get_data_loader("hybrid")
    assert type(c) is CloudDataLoader and type(h) is HybridDataLoader and h.cache_dir == (tmp_path / "envcache").resolve()
    assert c.list_symbols() == ["BTCUSDT", "ETH", "SYN"]
    pd.testing.assert_frame_equal(h.load("ETH", "1h"), c.load("ETH", "1h"))


# ---------------------------------------------------------------------------------------------------------- the cache
def test_cache_hit_and_stats(cloud, tmp_path, monkeypatch):
    hy = _hybrid(cloud, tmp_path)
    first = hy.load("SYN", "1h")
    size = cloud.info("data/SYN/1m.parquet")["size"]
    assert hy.stats == CacheStats(misses=1, bytes_downloaded=size)
    assert hy._paths("data/SYN/1m.parquet")[0].stat().st_size == size
    with monkeypatch.context() as m:
        m.setattr(hy.cloud, "download", lambda *a, **k: pytest.fail("a checked hit must not download"))
        pd.testing.assert_frame_equal(hy.load("SYN", "1h"), first)
    assert (hy.stats.hits, hy.stats.misses, hy.stats.bytes_from_cache) == (1, 1, size)
    assert hy.usage() == {"files": 1, "bytes": size}
    hy.load("BTCUSDT", "1h")  # two objects, two misses
    assert hy.stats.misses == 3 and hy.usage()["files"] == 3 and _leftovers(hy) == []


def test_remote_change_is_fetched_again(cloud, tmp_path):
    hy = _hybrid(cloud, tmp_path)
    old = hy.load("SYN", "1m")
    cloud.save(synthetic_ohlcv(600, "1m", seed=3), "SYN", "1m", overwrite=True)
    new = hy.load("SYN", "1m")
    assert not new.equals(old) and new.equals(cloud.load("SYN", "1m"))
    assert (hy.stats.misses, hy.stats.changed, hy.stats.hits) == (2, 1, 0)
    assert hy._paths("data/SYN/1m.parquet")[1].read_text().count(cloud.info("data/SYN/1m.parquet")["etag"]) == 1
    hy.load("SYN", "1m"); assert hy.stats.hits == 1
    row = "timestamp,open,high,low,close,volume\n2024-01-01,1,2,0.5,{},10\n"
    cloud.fs.pipe_file(f"{cloud.bucket}/data/ONE/1d.csv", row.format("1.5").encode())
    assert hy.load("ONE", "1d").close.iloc[0] == 1.5
    cloud.fs.pipe_file(f"{cloud.bucket}/data/ONE/1d.csv", row.format("1.6").encode())  # same size: only the ETag tells
    assert hy.load("ONE", "1d").close.iloc[0] == 1.6 and hy.stats.changed == 2


class _CutOff:
    "A remote file that gives `limit` bytes, then raises `exc` (a dropped connection) or ends early (exc=None)."
    def __init__(self, f, limit, exc): self.f, self.limit, self.exc, self.given = f, limit, exc, 0
    details = property(lambda self: self.f.details)
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()
    def read(self, n=-1):
        if self.given >= self.limit:
            if self.exc is not None: raise self.exc
            return b""
        b = self.f.read(min(n, self.limit - self.given)); self.given += len(b)
        return b


class _Killed(BaseException): "The process dying mid-download (not an Exception: nothing may swallow it)."


@pytest.mark.parametrize("exc", [ConnectionResetError("connection reset by peer"), None, _Killed()], ids=["reset", "short", "killed"])
def test_interrupted_download_keeps_good_copy(cloud, tmp_path, monkeypatch, exc):
    hy = _hybrid(cloud, tmp_path)
    good = hy.load("SYN", "1m")
    before = _cache_state(hy, "data/SYN/1m.parquet")
    cloud.save(synthetic_ohlcv(600, "1m", seed=4), "SYN", "1m", overwrite=True)
    real_open = hy.cloud.fs.open
    monkeypatch.setattr(hy.cloud.fs, "open", lambda *a, **k: _CutOff(real_open(*a, **k), 1000, exc))
    if isinstance(exc, _Killed):
        with pytest.raises(_Killed): hy.load("SYN", "1m")
    else:
        with pytest.warns(StaleCacheWarning, match=r"s3://t-\w+/data/SYN/1m.parquet"):
            pd.testing.assert_frame_equal(hy.load("SYN", "1m"), good)
        assert hy.stats.stale == 1
    assert _cache_state(hy, "data/SYN/1m.parquet") == before and _leftovers(hy) == []
    monkeypatch.setattr(hy.cloud.fs, "open", real_open)
    assert hy.load("SYN", "1m").equals(cloud.load("SYN", "1m")) and hy.stats.changed == 1


# ---------------------------------------------------------------------------------------------------------- store down
@pytest.fixture(scope="module")
def dead_store(tmp_path_factory):
    "A cache filled from a store that has since stopped: (cache dir, bucket URL, endpoint, the cached SYN 1h bars)."
    tmp = tmp_path_factory.mktemp("dead")
    with pytest.MonkeyPatch.context() as mp:
        _set_test_env(mp, tmp)
        with LocalS3Server() as srv:
            c = CloudDataLoader(f"s3://{_new_bucket(srv.endpoint_url)}/data", endpoint_url=srv.endpoint_url)
            c.save(synthetic_ohlcv(600, "1m", seed=2), "SYN", "1m"); c.save(synthetic_ohlcv(60, "1h", seed=1), "OTHER", "1h")
            hy = HybridDataLoader(tmp / "cache", cloud=c)
            bars = hy.load("SYN", "1h")
    return tmp / "cache", c.url(c.prefix), srv.endpoint_url, bars


def test_store_down_serves_cache_with_warning(dead_store):
    cache, url, endpoint, bars = dead_store
    hy = HybridDataLoader(cache, bucket=url, endpoint_url=endpoint, retries=1)  # fewer retries: a quicker test
    t = time.perf_counter()
    with pytest.warns(StaleCacheWarning, match=f"cannot be reached.*{endpoint}") as w:
        got = hy.load("SYN", "1h")
    assert time.perf_counter() - t < 10 and len(w) == 1
    pd.testing.assert_frame_equal(got, bars)
    assert "SYN 1m" in str(w[0].message) and "fetched" in str(w[0].message)
    assert hy.stats.stale == 1 and hy.stats.hits == 0
    with pytest.warns(StaleCacheWarning): assert hy.list_symbols() == ["SYN"]
    with pytest.warns(StaleCacheWarning): assert hy.list_timeframes("SYN") == [TimeFrame.MINUTE_1]
    with pytest.warns(StaleCacheWarning): assert hy.fetch("data/SYN/1m.parquet").is_file()


def test_store_down_without_cache_fails_naming_key(dead_store):
    cache, url, endpoint, _ = dead_store
    hy = HybridDataLoader(cache, bucket=url, endpoint_url=endpoint, retries=1)  # fewer retries: a quicker test
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may be served here
        with pytest.raises(DataSourceError, match=f"{url}/OTHER/: nothing is cached for 'OTHER'.*{endpoint} cannot be reached"): hy.load("OTHER", "1h")
        with pytest.raises(DataSourceError, match=f"{url}/OTHER/1h.parquet is not cached"): hy.fetch("data/OTHER/1h.parquet")
    with pytest.raises(StoreUnreachableError, match=f"{url}/SYN/: the S3 endpoint {endpoint} cannot be reached"):
        CloudDataLoader(url, endpoint_url=endpoint).load("SYN", "1h")


# ---------------------------------------------------------------------------------------------------------- bad input
def test_wrong_endpoint(cloud):
    endpoint = f"http://127.0.0.1:{free_port()}"
    t = time.perf_counter()
    with pytest.raises(StoreUnreachableError, match=f"s3://{cloud.bucket}/data: the S3 endpoint {endpoint} cannot be reached"):
        CloudDataLoader(cloud.bucket, prefix="data", endpoint_url=endpoint).list_symbols()
    assert time.perf_counter() - t < 10
    with pytest.raises(DataSourceError, match="endpoint URL 'localhost:9000' is not an http"): CloudDataLoader("b", endpoint_url="localhost:9000")
    with pytest.raises(DataSourceError, match="no bucket"): CloudDataLoader()


def test_missing_bucket(s3, tmp_path):
    c = CloudDataLoader("s3://no-such-bucket/data", endpoint_url=s3.endpoint_url)
    for call in (c.list_symbols, lambda: c.load("SYN", "1h"), lambda: c.info("data/SYN/1m.parquet"), lambda: c.read_bytes("data/SYN/1m.parquet")):
        with pytest.raises(BucketNotFoundError, match=f"bucket 'no-such-bucket' does not exist at {s3.endpoint_url}"): call()
    with pytest.raises(BucketNotFoundError, match="'no-such-bucket'"): HybridDataLoader(tmp_path, cloud=c).load("SYN", "1h")
    (tmp_path / "root" / "SYN").mkdir(parents=True); (tmp_path / "root" / "SYN" / "1m.csv").write_text("timestamp,close\n2024-01-01,1\n")
    with pytest.raises(BucketNotFoundError, match="'no-such-bucket'"): sync_to_cloud(tmp_path / "root", cloud=c)


def test_missing_key_and_deleted_object(cloud, tmp_path):
    with pytest.raises(ObjectNotFoundError, match=f"s3://{cloud.bucket}/data/SYN/9m.parquet does not exist"): cloud.info("data/SYN/9m.parquet")
    hy = _hybrid(cloud, tmp_path)
    with pytest.raises(ObjectNotFoundError, match=f"s3://{cloud.bucket}/data/SYN/2h.parquet does not exist"): hy.fetch("data/SYN/2h.parquet")
    hy.load("ETH", "1h")
    before = _cache_state(hy, "data/ETH/1h.csv.gz")
    cloud.fs.rm(f"{cloud.bucket}/data/ETH/1h.csv.gz")
    with pytest.raises(DataSourceError, match="no data for symbol 'ETH'"): hy.load("ETH", "1h")
    assert _cache_state(hy, "data/ETH/1h.csv.gz") == before


@pytest.mark.parametrize("key,content,message", [
    ("data/SYN/1m.parquet", b"PAR1 this is not parquet", "cannot be read as parquet"),
    ("data/ETH/1h.csv.gz", b"not gzip at all", "cannot be read as csv"),
    ("data/ETH/1h.csv.gz", None, "no timestamp column"),
], ids=["parquet", "gzip", "csv-columns"])
def test_invalid_object_keeps_cached_copy(cloud, tmp_path, key, content, message):
    hy = _hybrid(cloud, tmp_path)
    sym, tf = key.split("/")[1], key.split("/")[2].split(".")[0]
    good = hy.load(sym, tf)
    before = _cache_state(hy, key)
    if content is None:
        gz = io.BytesIO(); pd.DataFrame({"when": [1, 2], "price": [3, 4]}).to_csv(gz, index=False, compression="gzip"); content = gz.getvalue()
    cloud.fs.pipe_file(f"{cloud.bucket}/{key}", content)
    for loader in (hy, cloud):
        with pytest.raises(DataSourceError, match=f"s3://{cloud.bucket}/{key}: {message}"): loader.load(sym, tf)
    assert _cache_state(hy, key) == before and _leftovers(hy) == []
    cloud.fs.rm(f"{cloud.bucket}/{key}"); hy.cloud.fs.pipe_file(f"{cloud.bucket}/{key}", before[0])  # the good object back
    pd.testing.assert_frame_equal(hy.load(sym, tf), good)


def test_key_escaping_the_cache(cloud, tmp_path):
    hy = _hybrid(cloud, tmp_path / "deep" / "er")
    good = hy.load("ETH", "1h")
    before = _cache_state(hy, "data/ETH/1h.csv.gz")
    evil = "data/ETH/1m/../../../../../../escaped.csv"
    boto3.client("s3", endpoint_url=cloud.endpoint_url).put_object(Bucket=cloud.bucket, Key=evil, Body=_kline_csv("2024-01"))
    assert evil in [o["key"] for o in cloud._list("data/ETH")]  # the store keeps the key as written
    for loader in (hy, cloud):
        with pytest.raises(DataSourceError, match=f"object key '{evil}' has '.' or '..' segments"): loader.load("ETH", "1h")
    for key in (evil, "../escaped.csv", "/etc/escaped.csv"):
        with pytest.raises(DataSourceError, match=f"key '{key}' would be cached outside the cache folder"): hy.fetch(key)
    assert not [p for p in tmp_path.rglob("escaped*")] and _cache_state(hy, "data/ETH/1h.csv.gz") == before
    with pytest.raises(DataSourceError, match="could point outside"): hy.load("../ETH", "1h")
    cloud.fs.rm(f"{cloud.bucket}/{evil}")
    pd.testing.assert_frame_equal(hy.load("ETH", "1h"), good); assert hy.stats.hits == 1


def test_missing_credentials(cloud, tmp_path, monkeypatch):
    hy = _hybrid(cloud, tmp_path)
    hy.load("SYN", "1h")
    before = _cache_state(hy, "data/SYN/1m.parquet")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID"); monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CloudCredentialsError, match="no usable AWS credentials.*AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        CloudDataLoader(cloud.bucket, endpoint_url=cloud.endpoint_url).list_symbols()
    with pytest.raises(CloudCredentialsError, match=f"s3://{cloud.bucket}/data/SYN/: no usable AWS credentials"): _hybrid(cloud, tmp_path).load("SYN", "1h")
    assert _cache_state(hy, "data/SYN/1m.parquet") == before
    with pytest.raises(CloudCredentialsError, match="nope"): CloudDataLoader(cloud.bucket, endpoint_url=cloud.endpoint_url, profile="nope").list_symbols()


def test_credentials_never_shown(cloud, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="finsight")
    with pytest.raises(CloudCredentialsError, match=r"'http://\*\*\*@127.0.0.1:9000' carries credentials") as e:
        CloudDataLoader(cloud.bucket, endpoint_url=f"http://{KEY_ID}:{SECRET}@127.0.0.1:9000")
    texts = [str(e.value)]
    hy = _hybrid(cloud, tmp_path); hy.load("SYN", "1h"); hy.load("SYN", "1h")
    down = HybridDataLoader(tmp_path / "cache", bucket=f"s3://{cloud.bucket}/data", endpoint_url=f"http://127.0.0.1:{free_port()}", retries=0)
    with pytest.warns(StaleCacheWarning) as w: down.load("SYN", "1h")
    texts += [str(x.message) for x in w]
    for call in (lambda: down.cloud.list_symbols(), lambda: down.load("ETH", "1h")):
        with pytest.raises(DataSourceError) as e: call()
        texts.append(str(e.value))
    for obj in (cloud, hy, down, down.cloud):
        texts += [repr(obj), str(obj), str(obj.describe())]
    texts += [caplog.text, str(mlflow_s3_env(down.cloud))]
    assert len(caplog.records) >= 2 and any(r.levelname == "WARNING" for r in caplog.records)
    for t in texts: assert KEY_ID not in t and SECRET not in t, t


# ---------------------------------------------------------------------------------------------------------- sync
def test_sync_to_cloud(cloud, tmp_path):
    root = tmp_path / "root"
    local = LocalDataLoader(root, bundled=False)
    local.save(synthetic_ohlcv(300, "1m", seed=7), "SYN2", "1m")
    (root / "BTCUSDT" / "1m").mkdir(parents=True)
    for m in ("2023-11", "2023-12"): (root / "BTCUSDT" / "1m" / f"BTCUSDT-1m-{m}.csv").write_bytes(_kline_csv(m, 60))
    (root / "SYN2" / "README.txt").write_text("not data")
    kw = dict(bucket=cloud.bucket, prefix="synced", endpoint_url=cloud.endpoint_url)
    plan = sync_to_cloud(root, **kw)
    assert [(p["key"], p["action"], p["uploaded"]) for p in plan] == [
        ("synced/BTCUSDT/1m/BTCUSDT-1m-2023-11.csv", "new", True), ("synced/BTCUSDT/1m/BTCUSDT-1m-2023-12.csv", "new", True),
        ("synced/SYN2/1m.parquet", "new", True)]
    remote = CloudDataLoader(cloud.bucket, prefix="synced", endpoint_url=cloud.endpoint_url)
    for sym in ("SYN2", "BTCUSDT"): pd.testing.assert_frame_equal(remote.load(sym, "1h"), local.load(sym, "1h"))
    etag = remote.info("synced/SYN2/1m.parquet")["etag"]
    assert etag == s3_etag(root / "SYN2" / "1m.parquet")
    assert {p["action"] for p in sync_to_cloud(root, **kw)} == {"unchanged"}
    local.save(synthetic_ohlcv(300, "1m", seed=8), "SYN2", "1m", overwrite=True)
    with pytest.raises(DataSourceError, match=f"s3://{cloud.bucket}/synced/SYN2/1m.parquet; nothing was uploaded. Pass overwrite=True"): sync_to_cloud(root, **kw)
    assert [p["action"] for p in sync_to_cloud(root, overwrite=True, dry_run=True, **kw) if not p["uploaded"]] == ["unchanged", "unchanged", "changed"]
    assert remote.info("synced/SYN2/1m.parquet")["etag"] == etag
    sync_to_cloud(root, symbols=["SYN2"], overwrite=True, **kw)
    assert remote.info("synced/SYN2/1m.parquet")["etag"] == s3_etag(root / "SYN2" / "1m.parquet") != etag
    with pytest.raises(DataSourceError, match="no folder for symbol 'NOPE'"): sync_to_cloud(root, symbols=["NOPE"], **kw)


def test_s3_etag_matches_multipart_upload(cloud, tmp_path, monkeypatch):
    import s3fs.core
    small = lambda size, chunksize=None, **k: 5 * 2**20  # parts of 5 MiB, S3's minimum, so that 11 MiB is three parts
    monkeypatch.setattr(s3fs.core, "calculate_chunksize", small)
    f = tmp_path / "big.parquet"; f.write_bytes(os.urandom(11 * 2**20))
    cloud.fs.put_file(str(f), f"{cloud.bucket}/big.parquet")
    etag = cloud.info("big.parquet")["etag"]
    assert etag.endswith("-3") and etag == s3_etag(f)


# ---------------------------------------------------------------------------------------------------------- MLflow
def test_mlflow_artifacts_go_to_the_store(s3, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    store = CloudDataLoader(_new_bucket(s3.endpoint_url), endpoint_url=s3.endpoint_url)
    port, log = free_port(), tmp_path / "mlflow.log"
    env = {**os.environ, **mlflow_s3_env(store), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--artifacts-destination", mlflow_artifacts_destination(store)]
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(600):
            assert server.poll() is None, log.read_text()[-3000:]
            try: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1); break
            except OSError: time.sleep(0.1)
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        run = client.create_run(client.create_experiment("cloud"))
        (tmp_path / "metrics.json").write_text('{"mae": 0.1}')
        client.log_artifact(run.info.run_id, str(tmp_path / "metrics.json"))
        for k, v in store.describe().items(): client.log_param(run.info.run_id, f"data_{k}", v)
        key = f"mlflow/{run.info.experiment_id}/{run.info.run_id}/artifacts/metrics.json"
        assert store.read_bytes(key) == b'{"mae": 0.1}'
        params = client.get_run(run.info.run_id).data.params
        assert params["data_url"] == f"s3://{store.bucket}/" and not any(KEY_ID in v or SECRET in v for v in params.values())
    finally:
        os.killpg(server.pid, signal.SIGTERM); server.wait(20)
    assert SECRET not in log.read_text() and KEY_ID not in log.read_text()


def test_cli_data_sync_then_list_and_train_from_the_bucket(cloud, tmp_path):
    "`finsight data sync` uploads, `finsight data list --source cloud` sees it, and the loader switch serves it to a job."
    import subprocess, sys
    exe = str(Path(sys.executable).parent / "finsight")
    root = tmp_path / "root"
    LocalDataLoader(root, bundled=False).save(synthetic_ohlcv(400, "1h", seed=3), "SYNC", "1h")
    env = {**os.environ, "FINSIGHT_S3_BUCKET": f"s3://{cloud.bucket}/cli", "FINSIGHT_S3_ENDPOINT_URL": cloud.endpoint_url,
           "FINSIGHT_RUNS_DIR": str(tmp_path / "runs")}
    out = subprocess.run([exe, "data", "sync", "--root", str(root)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "cli/SYNC/1h.parquet" in out.stdout and KEY_ID not in out.stdout + out.stderr
    out = subprocess.run([exe, "data", "list", "--source", "cloud"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "SYNC\t1h" in out.stdout, out.stderr
    out = subprocess.run([exe, "data", "report", "SYNC", "4h"], env={**env, "FINSIGHT_DATA_LOADER": "hybrid"}, capture_output=True, text=True)
    assert out.returncode == 0 and "rows: 100" in out.stdout.replace("  ", ""), out.stdout + out.stderr
    out = subprocess.run([exe, "data", "sync", "--root", str(root), "--bucket", "no-such-bucket-x"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "no-such-bucket-x" in out.stderr
