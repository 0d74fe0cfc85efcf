"""Foundation: every bad input of the data path gets a clear error naming what is wrong, and features never look ahead."""
import os, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from finsight.settings import ConfigError, load_settings
from finsight.data.sources import (DataSourceError, LocalDataLoader, TimeFrame, read_ohlcv_file, resample_ohlcv,
                                   synthetic_ohlcv)
from finsight.data.validation import DataValidationError, validate_ohlcv
from finsight.data.splits import temporal_split, walk_forward_folds
from finsight.features import BasicFeatureEngineering, FeatureError, check_no_lookahead, split_features


@pytest.fixture
def bars():
    return synthetic_ohlcv(600, "1h", seed=11)


@pytest.fixture
def store(tmp_path, bars):
    ld = LocalDataLoader(tmp_path / "data")
    ld.save(bars, "GOOD", "1h")
    return ld


# --- settings -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("var,value,says", [
    ("DEFAULT_BATCH_SIZE", "abc", "an integer between 1 and 512"), ("DEFAULT_BATCH_SIZE", "0", "between 1 and 512"),
    ("DEFAULT_CONTEXT_LENGTH", "1000", "between 10 and 512"), ("DEFAULT_LEARNING_RATE", "2", "between 1e-06 and 1.0"),
    ("FORCE_CPU", "maybe", "true or false"), ("CUDA_DEVICE_MEMORY_FRACTION", "0", "> 0.0"),
    ("FINSIGHT_DATA_LOADER", "ftp", "'local', 'cloud', 'hybrid'")])
def test_bad_environment_value_names_variable_and_range(var, value, says):
    with pytest.raises(ConfigError) as e: load_settings(env={var: value})
    assert var in str(e.value) and says in str(e.value)


def test_settings_ini_read_and_env_wins(tmp_path):
    ini = tmp_path / "settings.ini"
    ini.write_text("[finsight]\ndefault_batch_size = 16\nmlflow_experiment_name = exp\n")
    s = load_settings(ini, env={"MLFLOW_EXPERIMENT_NAME": "from-env"})
    assert (s.default_batch_size, s.mlflow_experiment_name, s.root) == (16, "from-env", str(tmp_path))
    ini.write_text("[finsight]\ndefault_batch_sise = 16\n")
    with pytest.raises(ConfigError, match="unknown key 'default_batch_sise'"): load_settings(ini, env={})


def test_env_override_reaches_a_fresh_process(tmp_path):
    code = "from finsight.settings import get_settings; print(get_settings().default_batch_size)"
    env = {**os.environ, "DEFAULT_BATCH_SIZE": "77"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip() == "77"
    bad = subprocess.run([sys.executable, "-c", code], env={**env, "DEFAULT_BATCH_SIZE": "abc"}, capture_output=True, text=True)
    assert bad.returncode != 0 and "DEFAULT_BATCH_SIZE='abc' is invalid" in bad.stderr


# --- files and loaders ----------------------------------------------------------------------------------------
def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataSourceError, match="e.csv: file is empty"): read_ohlcv_file(tmp_path / "e.csv")


def test_header_only_file(tmp_path):
    (tmp_path / "h.csv").write_text("timestamp,open,high,low,close,volume\n")
    with pytest.raises(DataSourceError, match="h.csv: file has no rows"): read_ohlcv_file(tmp_path / "h.csv")


@pytest.mark.parametrize("name,content", [("x.txt", "a,b\n1,2\n"), ("x.json", "{}"), ("x.gz", "zz")])
def test_not_csv_or_parquet(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataSourceError, match="not a CSV or Parquet file"): read_ohlcv_file(tmp_path / name)


def test_parquet_suffix_but_garbage(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataSourceError, match="bad.parquet: cannot be read as parquet"): read_ohlcv_file(tmp_path / "bad.parquet")


def test_no_timestamp_column(tmp_path):
    (tmp_path / "n.csv").write_text("open,high,low,close,volume\n1,2,0.5,1.5,3\n")
    with pytest.raises(DataSourceError, match="no timestamp column"): read_ohlcv_file(tmp_path / "n.csv")


def test_unparseable_timestamp_names_rows(tmp_path):
    (tmp_path / "t.csv").write_text("date,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,3\nyesterday,1,2,0.5,1.5,3\n")
    with pytest.raises(DataSourceError, match=r"first at rows \[1\]: 'yesterday'"): read_ohlcv_file(tmp_path / "t.csv")


@pytest.mark.parametrize("unit,scale", [("ms", 1_000), ("us", 1_000_000)])
def test_binance_kline_files_with_and_without_header(tmp_path, unit, scale):
    t0 = 1_704_067_200  # 2024-01-01 UTC
    rows = [f"{(t0 + 60 * i) * scale},{100 + i},{101 + i},{99 + i},{100.5 + i},{10 + i},{(t0 + 60 * i + 59) * scale},1,2,3,4,0" for i in range(5)]
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n"
    (tmp_path / "b.csv").write_text(header + "\n".join(rows) + "\n")
    a, b = read_ohlcv_file(tmp_path / "a.csv"), read_ohlcv_file(tmp_path / "b.csv")
    pd.testing.assert_frame_equal(a, b)
    assert a.index[0] == pd.Timestamp("2024-01-01", tz="UTC") and a.index[-1] == pd.Timestamp("2024-01-01 00:04", tz="UTC")
    assert list(a.columns[:5]) == ["open", "high", "low", "close", "volume"] and "close_time" not in a


def test_time_zones_are_normalised_to_utc(tmp_path):
    (tmp_path / "z.csv").write_text("Datetime,Open,High,Low,Close,Volume\n2024-03-01 09:30:00-05:00,1,2,0.5,1.5,3\n")
    assert read_ohlcv_file(tmp_path / "z.csv").index[0] == pd.Timestamp("2024-03-01 14:30", tz="UTC")


def test_unknown_symbol_and_timeframe(store):
    with pytest.raises(DataSourceError, match="unknown symbol 'BAD'.*available: GOOD, NASDAQ, SP500"): store.load("BAD", "1h")
    with pytest.raises(DataSourceError, match="unknown timeframe '2d'"): store.load("GOOD", "2d")
    with pytest.raises(DataSourceError, match="no 30m data and nothing finer"): store.load("GOOD", "30m")
    with pytest.raises(DataSourceError, match="daily bars only"): store.load("SP500", "1h")


@pytest.mark.parametrize("symbol", ["../../x", "../data", "/etc/passwd", "a/../../b", "..", ""])
def test_path_outside_data_root(store, symbol):
    with pytest.raises(DataSourceError): store.load(symbol, "1h")
    with pytest.raises(DataSourceError): store.save(synthetic_ohlcv(5), symbol, "1h")


def test_save_never_overwrites_silently(store, bars):
    before = store.load("GOOD", "1h")
    with pytest.raises(DataSourceError, match="already exists"): store.save(bars * 2, "GOOD", "1h")
    pd.testing.assert_frame_equal(store.load("GOOD", "1h"), before)


def test_resample_matches_hand_aggregation(bars):
    d4 = resample_ohlcv(bars, "4h")
    first = bars.iloc[:4]
    np.testing.assert_allclose(d4.iloc[0][["open", "high", "low", "close", "volume"]].to_numpy(float),
                               [first.open.iloc[0], first.high.max(), first.low.min(), first.close.iloc[-1], first.volume.sum()], rtol=1e-12)
    assert len(d4) == 150 and (d4.index.hour % 4 == 0).all()


# --- validation -----------------------------------------------------------------------------------------------
def _frame_with(bars, fn):
    b = bars.copy(); fn(b); return b


@pytest.mark.parametrize("make,check,says", [
    (lambda b: b.drop(columns=["volume"]), "required_columns", "missing column(s): volume"),
    (lambda b: _frame_with(b.astype({"high": object}), lambda x: x.__setitem__("high", x["high"].where(x.index != x.index[9], "n/a"))), "numeric_types", "column 'high' has 1 non-numeric value(s), e.g. 'n/a'"),
    (lambda b: b.iloc[[*range(10), 12, 11, *range(13, 600)]], "temporal_ordering", "1 timestamp(s) earlier than the row before"),
    (lambda b: pd.concat([b.iloc[:50], b.iloc[49:]]), "temporal_ordering", "1 duplicated timestamp(s)"),
    (lambda b: _frame_with(b, lambda x: x.iloc.__setitem__((30, 2), x.high.iloc[30] + 5)), "bar_consistency", "high < low: 1 row(s), first at row 30"),
    (lambda b: _frame_with(b, lambda x: x.iloc.__setitem__((31, 4), -1.0)), "bar_consistency", "volume < 0: 1 row(s), first at row 31"),
    (lambda b: _frame_with(b, lambda x: x.iloc.__setitem__((slice(40, 47), 3), np.nan)), "completeness", "longest run 7 row(s) from row 40"),
    (lambda b: b.iloc[:40], "min_rows", "40 rows; at least 100 needed"),
])
def test_bad_bars_are_named_in_report_and_strict_error(bars, make, check, says):
    bad = make(bars)
    rep = validate_ohlcv(bad)
    assert not rep.ok and not rep[check].passed and says in rep[check].detail, str(rep)
    with pytest.raises(DataValidationError) as e: validate_ohlcv(bad, strict=True)
    assert check in str(e.value) and says in str(e.value)


def test_strict_error_lists_every_failed_check_with_rows(bars):
    bad = bars.copy(); bad.iloc[5, 3] = np.nan; bad.iloc[7, 4] = -3
    msg = str(pytest.raises(DataValidationError, validate_ohlcv, bad, strict=True).value)
    assert "completeness" in msg and "bar_consistency" in msg and "first rows failing bar_consistency" in msg


def test_report_shows_first_offending_rows(bars):
    bad = bars.copy(); bad.iloc[[3, 8, 9], 4] = -1
    rows = validate_ohlcv(bad)["bar_consistency"].rows
    assert rows["row"].tolist() == [3, 8, 9] and list(rows.index) == list(bars.index[[3, 8, 9]])


# --- splits and features --------------------------------------------------------------------------------------
def test_splits_never_share_targets_and_reach_back_context(bars):
    s = temporal_split(bars, 0.6, 0.2, context_length=24)
    t = [set(s.targets(p).index) for p in ("train", "val", "test")]
    assert not (t[0] & t[1]) and not (t[1] & t[2]) and sum(map(len, t)) == len(bars)
    assert s.val.index[24] == s.targets("val").index[0] and s.val.index[0] < s.targets("val").index[0]
    for f in walk_forward_folds(len(bars), n_folds=3, embargo=4):
        assert f.train.stop + 4 == f.test.start


@pytest.mark.parametrize("seed", range(5))
def test_no_lookahead_random_cut_points(seed):
    rng = np.random.default_rng(seed)
    b = synthetic_ohlcv(1500, "5m", seed=seed)
    fe = BasicFeatureEngineering(add_datetime_features=True).fit(b.iloc[:1000])
    for t in rng.integers(40, 1499, size=4): check_no_lookahead(fe, b, int(t), seed=seed)


def test_scaler_sees_training_rows_only(bars):
    _, fs = split_features(bars, BasicFeatureEngineering(), 0.7, 0.15, context_length=10)
    fe = BasicFeatureEngineering().fit(bars.iloc[:420])
    pd.testing.assert_frame_equal(fs.targets("train"), fe.transform(bars.iloc[:420]), check_freq=False)
    moved = bars.copy(); moved.iloc[420:, :4] *= 10      # changing val/test bars must not move train scaling
    _, fs2 = split_features(moved, BasicFeatureEngineering(), 0.7, 0.15, context_length=10)
    pd.testing.assert_frame_equal(fs.targets("train"), fs2.targets("train"))


def test_nan_after_warmup_is_an_error_naming_columns(bars):
    fe = BasicFeatureEngineering().fit(bars)
    bad = bars.copy(); bad.iloc[200, 4] = np.nan
    with pytest.raises(FeatureError, match=r"column\(s\) \['volume'\]"): fe.transform(bad)


def test_cli_data_report_and_list(tmp_path):
    env = {**os.environ, "FINSIGHT_RUNS_DIR": str(tmp_path)}
    exe = str(Path(sys.executable).parent / "finsight")
    out = subprocess.run([exe, "data", "report", "SP500", "1d"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "5031" in out.stdout and (tmp_path / "reports" / "SP500_1d.png").exists()
    out = subprocess.run([exe, "data", "report", "../../x"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "not a plain name" in out.stderr
    assert "NASDAQ\t1d" in subprocess.run([exe, "data", "list"], env=env, capture_output=True, text=True).stdout
