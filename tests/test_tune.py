"""A configuration search whose winner must show an edge on data it never saw: an AR(1) of returns, held-out last block."""
from finsight.data.sources import ar1_returns, ohlcv_from_returns
from finsight.tune import tune


def test_the_best_configuration_beats_naive_on_the_held_out_block(tmp_path):
    bars = ohlcv_from_returns(ar1_returns(4000, phi=0.3, seed=2))
    base = dict(prediction_length=3, num_epochs=20, batch_size=128, patch_length=4, patch_stride=4, target_column="log_returns", model_params={"kernel_size": 1})
    space = {"learning_rate": {"low": 3e-3, "high": 3e-2, "log": True}, "context_length": {"choices": [16, 32]}}
    r = tune(bars, "dlinear", base, trials=4, space=space, folds=2, storage=f"sqlite:///{tmp_path}/o.db", study_name="ar1", progress=False)
    m = r.metrics()
    assert m["completed"] >= 2 and m["cv_rel_mae"] < 1, m                            # the search folds find the AR structure
    assert m["holdout_rel_mae"] < 1 and m["holdout_origins"] == r.info["holdout"] - 3 + 1, m   # and it holds on the unseen block
    assert r.holdout.forecasts["origin"].min() == bars.index[len(bars) - r.info["holdout"] - 1]
