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


def test_trials_on_two_workers_and_a_worker_that_dies(tmp_path):
    """Trials on a 2-process Dask cluster share one study (pruning sees every worker's trials); a trial whose worker process
    dies is a failed trial with the reason, and the study goes on with the rest."""
    import os
    import optuna
    from finsight.backtest import worker_pool
    from finsight.models import ModelConfig
    from finsight.tune import _open_study, _remote_trial, _search, search_space
    bars = ohlcv_from_returns(ar1_returns(2000, phi=0.3, seed=5))
    base = dict(prediction_length=3, num_epochs=3, batch_size=256, patch_length=4, patch_stride=4, target_column="log_returns", model_params={"kernel_size": 1})
    space = {"learning_rate": {"low": 3e-3, "high": 3e-2, "log": True}, "context_length": {"choices": [16, 32]}}
    db = f"sqlite:///{tmp_path}/o.db"
    r = tune(bars, "dlinear", base, trials=5, space=space, folds=2, storage=db, study_name="par", progress=False, workers=2)
    m = r.metrics()
    assert m["trials"] == 5 and m["completed"] >= 3 and m["failed"] == 0, m
    assert {t.user_attrs.get("folds") is not None for t in r.study.trials if t.state.name == "COMPLETE"} == {True}

    cfg = ModelConfig.from_overrides(base)
    study = _open_study("dies", db, {"objective": "test"}, 0, cfg.num_epochs)
    with worker_pool(2) as client:
        assert set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()) == {None}   # glibc's own thresholds (finsight.hardware)
        b = client.scatter(bars.iloc[:-300], broadcast=True)
        def submit(t):
            if t.number == 1: return client.submit(os._exit, 3, pure=False)      # the worker process running trial 1 dies
            return client.submit(_remote_trial, db, "dies", cfg.num_epochs, t._trial_id, t.params, b, "dlinear", cfg, {"folds": 2}, 1, pure=False)
        _search(study, search_space("dlinear", space, cfg), 4, None, None, submit, slots=2, progress=False)
    states = {t.number: t.state for t in study.trials}
    assert len(states) == 4 and states[1] == optuna.trial.TrialState.FAIL, states
    assert "its worker failed" in study.trials[1].user_attrs["error"]
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in states.values()) >= 2, states
