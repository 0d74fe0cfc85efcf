"""Models and trainer end to end: determinism, exact resume, faults, honest metrics, prediction."""
import warnings
import numpy as np
import pandas as pd
import pytest
import torch
from finsight.settings import ConfigError, load_settings
from finsight.hardware import PrecisionWarning, cpu_bf16, plan_precision, resolve_device
from finsight.data.sources import load_bundled, synthetic_ohlcv
from finsight.data.windows import WindowError
from finsight.features import BasicFeatureEngineering, FeatureError
from finsight.models import ModelConfig
from finsight.training import (CheckpointError, ModelCache, ModelTrainingFacade, TrainedModel, TrainingJobStatus,
                               forecast_windows, load_checkpoint, predict)

TINY = dict(context_length=32, prediction_length=2, d_model=64, n_heads=4, num_layers=1, batch_size=64, patch_length=8, seed=7)


@pytest.fixture(scope="module")
def sp():
    b = load_bundled("SP500").iloc[-1500:]
    return b.iloc[:1000], b.iloc[1000:1250], b.iloc[1250:]


def train(sp, tmp_path, model="patchtst", progress=False, callbacks=(), **cfg):
    f = ModelTrainingFacade(checkpoint_root=tmp_path, progress=progress, callbacks=list(callbacks))
    tr, va, te = sp
    run_id = cfg.pop("run_id", None) or f"r{np.random.randint(1e9)}"
    return f.train_model_sync("SP500", "1d", model, tr, va, BasicFeatureEngineering(), ModelConfig(**{**TINY, "num_epochs": 2, **cfg}),
                              run_id=run_id, test_data=te)


@pytest.mark.parametrize("model", ["patchtst", "patchtsmixer", "dlinear"])
def test_same_seed_same_metrics(sp, tmp_path, model):
    a, b = train(sp, tmp_path, model), train(sp, tmp_path, model)
    assert a.metrics.val.mae == b.metrics.val.mae and a.history[-1]["loss"] == b.history[-1]["loss"]
    c = train(sp, tmp_path, model, seed=8)
    assert c.metrics.val.mae != a.metrics.val.mae


def test_metrics_stand_beside_naive_on_the_same_windows(sp, tmp_path):
    out = train(sp, tmp_path)
    m, model = out.metrics.to_dict(), out.model
    for part in ("val", "test"):
        assert {f"{part}_{k}" for k in ("mae", "mse", "rmse", "mape", "naive_mae", "naive_mse", "rel_mae", "mase", "skill", "dir_acc", "up_rate")} <= set(m)
        f = forecast_windows(model.adapter, getattr(model.windows, part), model.target)
        naive_mae = np.abs(f["future_close"] - f["last_close"][:, None]).mean()
        assert m[f"{part}_naive_mae"] == pytest.approx(naive_mae) and m[f"{part}_rel_mae"] == pytest.approx(m[f"{part}_mae"] / naive_mae)
        scale = np.abs(np.diff(model.windows.train.close)).mean()          # Hyndman: the training part's one-step naive MAE
        assert m[f"{part}_mase"] == pytest.approx(m[f"{part}_mae"] / scale) and m[f"{part}_mase"] != pytest.approx(m[f"{part}_rel_mae"])
    assert m["test_windows"] == len(sp[2]) - TINY["prediction_length"] + 1   # the test part's first bar is a target too
    assert 0 < m["val_naive_mae"] < 200      # price units (index points), not scaled units


def test_resume_after_interruption_equals_uninterrupted(sp, tmp_path):
    full = train(sp, tmp_path / "a", "patchtsmixer", num_epochs=4, run_id="full")
    class Boom(Exception): pass
    def die(u):
        if u.current_epoch == 2: raise Boom()
    with pytest.raises(Boom): train(sp, tmp_path / "b", "patchtsmixer", num_epochs=4, run_id="cut", callbacks=[die])
    ck = tmp_path / "b" / "cut"
    assert load_checkpoint(ck)["epoch"] == 2
    f = ModelTrainingFacade(checkpoint_root=tmp_path / "b", progress=False)
    res = f.train_model_sync("SP500", "1d", "patchtsmixer", *sp[:2], BasicFeatureEngineering(), ModelConfig(**{**TINY, "num_epochs": 4}),
                             run_id="cut", test_data=sp[2], resume_from=ck)
    assert res.metrics.test.mae == full.metrics.test.mae
    sa, sb = full.model.adapter.module.state_dict(), res.model.adapter.module.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_corrupt_checkpoint_fails_cleanly_and_keeps_earlier_good_one(sp, tmp_path):
    train(sp, tmp_path, num_epochs=3, run_id="c")
    files = sorted((tmp_path / "c").glob("epoch_*.pt"))
    files[-1].write_bytes(files[-1].read_bytes()[:1000])          # truncated, as after a crash
    f = ModelTrainingFacade(checkpoint_root=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="corrupt or unreadable checkpoint"):
        f.train_model_sync("SP500", "1d", "patchtst", *sp[:2], None, ModelConfig(**{**TINY, "num_epochs": 3}), run_id="c2", resume_from=files[-1])
    assert files[-2].exists() and load_checkpoint(files[-2])["epoch"] == 2


def test_resume_with_other_config_is_refused(sp, tmp_path):
    train(sp, tmp_path, num_epochs=1, run_id="x")
    f = ModelTrainingFacade(checkpoint_root=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="batch_size"):
        f.train_model_sync("SP500", "1d", "patchtst", *sp[:2], None, ModelConfig(**{**TINY, "batch_size": 32}), resume_from=tmp_path / "x")


def test_fast_dropout_is_deterministic_resumes_exactly_and_gives_the_model_back(sp, tmp_path):
    kw = dict(num_epochs=3, fast_dropout=True)
    a, b = train(sp, tmp_path, "patchtsmixer", run_id="a", **kw), train(sp, tmp_path, "patchtsmixer", run_id="b", **kw)
    plain = train(sp, tmp_path, "patchtsmixer", num_epochs=3)
    assert a.history[-1]["loss"] == b.history[-1]["loss"] and a.metrics.val.mae == b.metrics.val.mae
    assert a.history[0]["loss"] != plain.history[0]["loss"]        # the masks really came from FastDropout
    assert a.history[-1]["val_loss"] == pytest.approx(plain.history[-1]["val_loss"], rel=0.25)
    drops = [type(m) for m in a.model.adapter.module.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and set(drops) == {torch.nn.Dropout}                       # saved and exported models never see it
    class Boom(Exception): pass
    def die(u):
        if u.current_epoch == 2: raise Boom()
    with pytest.raises(Boom): train(sp, tmp_path, "patchtsmixer", run_id="cut", callbacks=[die], **kw)
    f = ModelTrainingFacade(checkpoint_root=tmp_path, progress=False)
    res = f.train_model_sync("SP500", "1d", "patchtsmixer", *sp[:2], BasicFeatureEngineering(), ModelConfig(**{**TINY, **kw}),
                             run_id="cut", test_data=sp[2], resume_from=tmp_path / "cut")
    assert res.history == [{**h, "seconds": r["seconds"]} for h, r in zip(a.history, res.history)]
    sa, sb = a.model.adapter.module.state_dict(), res.model.adapter.module.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cpu_fast_paths_swap_back_when_training_fails(sp):
    from finsight.models import ModelFactory
    from finsight.training import fit, make_optimizer, prepare_windows
    cfg = ModelConfig(**{**TINY, "num_epochs": 3, "fast_dropout": True})
    win, _ = prepare_windows(sp[0], sp[1], None, BasicFeatureEngineering(), cfg)
    ad = ModelFactory.create("patchtsmixer", cfg, len(win.channels), win.target_channel)
    kinds = lambda: {type(m).__name__ for m in ad.module.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Softmax))}
    seen = []
    def die(u): seen.append(kinds()); raise RuntimeError("stop")
    with pytest.raises(RuntimeError, match="stop"): fit(ad, win.train, win.val, callbacks=[die], progress=False, device=torch.device("cpu"))
    assert seen == [{"FastDropout", "NarrowSoftmax"}]
    assert kinds() == {"Dropout", "Softmax"}
    assert make_optimizer(ad.module, cfg, torch.device("cpu")).defaults["fused"] is True


def test_resume_may_switch_fast_dropout_and_compile_but_not_dropout(sp, tmp_path):
    train(sp, tmp_path, num_epochs=1, run_id="y")
    f = ModelTrainingFacade(checkpoint_root=tmp_path, progress=False)
    res = f.train_model_sync("SP500", "1d", "patchtst", *sp[:2], None, ModelConfig(**{**TINY, "num_epochs": 2, "fast_dropout": True}), resume_from=tmp_path / "y")
    assert res.result.epochs_run == 2 and len(res.history) == 2
    with pytest.raises(CheckpointError, match="dropout"):
        f.train_model_sync("SP500", "1d", "patchtst", *sp[:2], None, ModelConfig(**{**TINY, "num_epochs": 2, "dropout": 0.2}), resume_from=tmp_path / "y")


@pytest.mark.parametrize("overrides,says", [({"context_length": 5}, "context_length=5"), ({"contxt_length": 32}, "did you mean 'context_length'"),
                                            ({"d_model": 100, "n_heads": 8}, "d_model"), ({"learning_rate": 2.0}, "learning_rate")])
def test_bad_config_names_the_field(overrides, says):
    with pytest.raises(ConfigError, match=says): ModelConfig.from_overrides(overrides)


def test_bad_training_inputs(sp, tmp_path):
    f = ModelTrainingFacade(checkpoint_root=tmp_path, progress=False)
    tr, va, te = sp
    cfg = ModelConfig(**{**TINY, "num_epochs": 1})
    with pytest.raises(WindowError, match="hold no window"): f.train_model_sync("SP500", "1d", "patchtst", tr.iloc[-50:], va, None, cfg)
    with pytest.raises(WindowError, match="target column 'vwap' is not among the features"):
        f.train_model_sync("SP500", "1d", "patchtst", tr, va, None, cfg.model_copy(update={"target_column": "vwap"}))
    bad = va.copy(); bad.iloc[100, bad.columns.get_loc("volume")] = np.nan
    with pytest.raises(Exception, match="completeness"): f.train_model_sync("SP500", "1d", "patchtst", tr, bad, None, cfg)
    class Holey(BasicFeatureEngineering):
        def _add_custom_features(self, df): return df.assign(hole=df["close"].where(df.index != df.index[500]))
    with pytest.raises(FeatureError, match=r"column\(s\) \['hole'\]"): f.train_model_sync("SP500", "1d", "patchtst", tr, va, Holey(), cfg)


def test_gradient_accumulation_mixed_precision_and_progress(sp, tmp_path):
    ups = []
    out = train(sp, tmp_path, num_epochs=2, gradient_accumulation_steps=2, mixed_precision=True, callbacks=[ups.append])
    n_batches = -(-len(out.model.windows.train) // TINY["batch_size"])
    assert out.history[0]["batches"] == -(-n_batches // 2)            # one optimizer step per two batches
    assert out.result.precision == plan_precision("cpu", True, warn=False).name and np.isfinite(out.metrics.val.mae)   # bf16 where the CPU has bf16 instructions
    assert out.result.plan["precision.asked.mixed_precision"] is True and out.result.plan["precision.dtype"] == out.result.precision
    assert [u.progress for u in ups] == [0.5, 1.0] and ups[0].eta_seconds >= 0 and ups[-1].status == TrainingJobStatus.COMPLETED


def test_early_stopping_restores_best_weights(sp, tmp_path):
    out = train(sp, tmp_path, num_epochs=30, early_stopping_patience=2, learning_rate=0.05)
    h = out.history
    assert out.result.stopped_early and len(h) < 30
    best = min(range(len(h)), key=lambda i: h[i]["val_loss"])
    assert out.result.best_epoch == best + 1 and len(h) == best + 1 + 2


def test_force_cpu(monkeypatch):
    assert resolve_device(settings=load_settings(env={"FORCE_CPU": "true", "FINSIGHT_DEVICE": "cuda"})).type == "cpu"


def test_forced_bf16_trains_on_any_cpu_and_warns_where_it_is_slow(sp, tmp_path):
    native, _ = cpu_bf16()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = train(sp, tmp_path, num_epochs=1, mixed_precision="force")
    assert out.result.precision == "bf16" and np.isfinite(out.metrics.val.mae)
    assert any(issubclass(x.category, PrecisionWarning) for x in w) == (not native)


def test_predict_from_saved_model_through_cache(sp, tmp_path):
    out = train(sp, tmp_path)
    path = out.model.save(tmp_path / "m.pt")
    bars = pd.concat(sp)
    cache = ModelCache(max_size=2, ttl_seconds=60)
    p = predict(cache.get(path), bars)
    assert bars.index[-1] == pd.Timestamp("2018-12-31", tz="UTC")   # a Monday; 1 January is a holiday: the next NYSE sessions are the 2nd and 3rd
    assert list(p.index) == [pd.Timestamp("2019-01-02", tz="UTC"), pd.Timestamp("2019-01-03", tz="UTC")]
    assert (p["forecast"] - bars.close.iloc[-1]).abs().max() < 0.2 * bars.close.iloc[-1]   # prices, near the last close
    assert cache.get(path) is cache.get(path) and cache.hits == 2
    pd.testing.assert_frame_equal(p, predict(out.model, bars))
