"""Backtests on known answers: a random walk that nothing beats, and a forecast at origin t that never changes when the
bars after t change (features, scaling, refits, baselines and all)."""
import numpy as np
import pytest
from finsight.backtest import backtest
from finsight.data.sources import ar1_returns, ohlcv_from_returns
from finsight.models import ModelConfig

LIN = dict(context_length=16, prediction_length=3, num_epochs=15, learning_rate=1e-2, batch_size=128, patch_length=4, patch_stride=4,
           target_column="log_returns", model_params={"kernel_size": 1})


def test_on_a_random_walk_nothing_beats_naive():
    """Over 4 seeds: the AR's and drift's rel_mae intervals contain 1, no forecaster's interval lies below 1, and the DM
    test finds no forecaster better than naive at 5% (a trained model that fits noise may come out slightly worse)."""
    contains = below = rejected = 0
    for seed in range(4):
        bars = ohlcv_from_returns(ar1_returns(2000, phi=0.0, seed=100 + seed), seed=seed)
        s = backtest(bars, "dlinear", ModelConfig(**LIN), folds=3, progress=False, reps=200, seed=seed).summary()
        contains += sum(s.loc[m, "rel_mae_low"] <= 1 <= s.loc[m, "rel_mae_high"] for m in ("ar", "drift"))
        below += sum(s.loc[m, "rel_mae_high"] < 1 for m in ("model", "ar", "drift"))
        rejected += sum(bool(s.loc[m, "beats_naive"]) for m in ("model", "ar", "drift"))
    assert contains >= 7 and below == 0 and rejected <= 1, (contains, below, rejected)


@pytest.mark.parametrize("mode,refit_every,warm_start", [("expanding", 1, False), ("sliding", 2, True)])
def test_a_forecast_never_changes_when_later_bars_change(mode, refit_every, warm_start):
    bars = ohlcv_from_returns(ar1_returns(1500, phi=0.3, seed=3))
    kw = dict(folds=3, mode=mode, refit_every=refit_every, warm_start=warm_start, embargo=2, progress=False, reps=50,
              train_size=300 if mode == "sliding" else None)
    cfg = ModelConfig(**(LIN | {"num_epochs": 4}))
    a = backtest(bars, "dlinear", cfg, **kw).forecasts
    t = a["origin"].sort_values().unique()[len(a["origin"].unique()) // 2]          # an origin in the middle of the test blocks
    later = bars.copy(); cols = ["open", "high", "low", "close"]
    later.loc[later.index > t, cols] *= 1.5; later.loc[later.index > t, "volume"] *= 3    # every bar after t changes
    b = backtest(later, "dlinear", cfg, **kw).forecasts
    keep = a["origin"] <= t
    for c in ("model", "naive", "drift", "seasonal_naive", "ar", "last", "scale"):
        np.testing.assert_array_equal(a.loc[keep, c].to_numpy(), b.loc[keep, c].to_numpy(), err_msg=c)
    assert not np.allclose(a.loc[~keep, "model"].to_numpy(), b.loc[~keep, "model"].to_numpy())   # later origins do see the change


def test_folds_on_two_worker_processes_give_the_forecasts_of_one_process():
    """The folds that share no model run on the workers of a Dask scheduler (here a 2-process cluster started by the
    test, as `finsight` jobs would use): the same forecasts, folds and kept models as in process."""
    from distributed import LocalCluster
    bars = ohlcv_from_returns(ar1_returns(1500, phi=0.3, seed=4))
    kw = dict(folds=4, refit_every=2, progress=False, reps=50)
    cfg = ModelConfig(**(LIN | {"num_epochs": 3}))
    a = backtest(bars, "dlinear", cfg, **kw)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        b = backtest(bars, "dlinear", cfg, scheduler_address=cluster.scheduler_address, keep_models=True, **kw)
    np.testing.assert_allclose(b.forecasts["model"], a.forecasts["model"], rtol=1e-5)
    assert b.forecasts.drop(columns="model").equals(a.forecasts.drop(columns="model"))
    assert b.folds["refit"].tolist() == [True, False, True, False] and sorted(b.models) == [0, 1, 2, 3]
    assert b.models[0] is b.models[1] and b.models[2] is not b.models[0]           # the folds between refits reuse the model
