"""Data-parallel training on 2 CPU ranks (gloo, launched by torchrun): the same weights and losses as one process with the
same global batch and seed, checkpoints from rank 0 only, and runs that resume on another number of ranks."""
import json, os
from pathlib import Path
import pytest
import torch
from finsight.data.sources import synthetic_ohlcv
from finsight.distributed import DistributedError, init_distributed, launch, train_distributed, train_spec
from finsight.training import TrainedModel

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two CPU ranks need two cores")

# 370 training windows in batches of 41: the last batch holds 1 window, so rank 1 has none of it (weight 0)
CFG = {"context_length": 16, "prediction_length": 2, "patch_length": 4, "batch_size": 41, "num_epochs": 4, "dropout": 0.0, "seed": 5,
       "learning_rate": 3e-3, "early_stopping_patience": 10}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    synthetic_ohlcv(600, "1h", seed=1).to_parquet(root / "bars.parquet")
    spec = lambda out, epochs=4, **kw: {"symbol": "SYN", "timeframe": "1h", "model_type": "dlinear", "bars": str(root / "bars.parquet"),
                                        "output_dir": str(root / out), "config": CFG | {"num_epochs": epochs}, "device": "cpu", **kw}
    single = train_spec(spec("single"))   # the reference: one process, all 4 epochs (checkpoints of epochs 2-4 kept)
    return root, spec, single


def _weights(path) -> dict: return TrainedModel.load(path).adapter.module.state_dict()


def _same_history(got: list[dict], want: list[dict]):
    "Same losses, validation losses, learning rates and steps in every epoch, within float tolerance."
    row = lambda h: [h[k] for k in ("loss", "val_loss", "learning_rate", "batches")]
    assert len(got) == len(want)
    for g, w in zip(got, want): assert row(g) == pytest.approx(row(w), rel=1e-5, abs=1e-7), (got, want)


def _same(res: dict, ref: dict, model: Path, ref_model: Path):
    "The same history and the same final weights, within float tolerance."
    _same_history(res["history"], ref["history"])
    a, b = _weights(model), _weights(ref_model)
    for k in b: torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_two_ranks_equal_one_process_and_resume_in_one(base):
    root, spec, single = base
    t = train_distributed(spec("ddp", epochs=2), nproc=2)   # python -m torch.distributed.run --standalone --nproc-per-node 2 -m finsight.distributed
    assert t["world_size"] == 2 and len(t["history"]) == 2
    _same_history(t["history"], single["history"][:2])
    assert t["history"][0]["batches"] == 10   # 9 full batches and the 1-window one
    ck = root / "ddp" / "checkpoints" / "ddp"
    assert sorted(p.name for p in ck.glob("epoch_*.pt")) == ["epoch_001.pt", "epoch_002.pt"]
    # the 2-rank checkpoint goes on in one process, to the uninterrupted single-process result
    r = train_spec(spec("resumed_one", resume_from=str(ck)))
    _same(r, single, root / "resumed_one" / "model.pt", root / "single" / "model.pt")


def _rank(spec: dict) -> dict:
    "One rank of `launch`: its own output folder (so a checkpoint written by rank 1 would show), resumed from a 1-process checkpoint."
    par, dev = init_distributed("cpu")
    try: return train_spec(spec | {"output_dir": f"{spec['output_dir']}/rank{par.rank}"}, par, dev)
    finally: torch.distributed.destroy_process_group()


def test_one_process_checkpoint_resumes_on_two_ranks_and_only_rank0_writes(base):
    root, spec, single = base
    ck = root / "single" / "checkpoints" / "ddp" / "epoch_002.pt"
    out = launch(2, _rank, spec("two", resume_from=str(ck)))   # torch's elastic_launch: {rank: result}
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert set(out) == {0, 1} and strip(out[0]["history"]) == strip(out[1]["history"])   # the same numbers and decisions on both ranks
    _same(out[0], single, root / "two" / "rank0" / "model.pt", root / "single" / "model.pt")
    assert sorted(p.name for p in (root / "two" / "rank0" / "checkpoints" / "ddp").glob("*.pt")) == ["epoch_003.pt", "epoch_004.pt"]
    assert not list((root / "two" / "rank1").rglob("*.pt"))   # rank 1 trained silently: no checkpoints, no model


def test_too_many_ranks_is_refused(base):
    root, spec, _ = base
    with pytest.raises(DistributedError, match="--nproc 2 is more than the batch_size 1"): train_distributed(spec("x", config=CFG | {"batch_size": 1}), nproc=2)
    with pytest.raises(DistributedError, match="CPU cores"): train_distributed(spec("x"), nproc=len(os.sched_getaffinity(0)) + 1)


def test_two_ranks_on_dask_workers_equal_one_process(base):
    "The job service's engine: two Dask worker processes as the two ranks (`launch_dask`), the same history as one process."
    from distributed import Client, LocalCluster
    from finsight.distributed import launch_dask
    root, spec, single = base
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        out = launch_dask(2, _rank, spec("dask", epochs=2), client=client)
        assert set(out) == {0, 1} and out[0]["world_size"] == 2
        _same_history(out[0]["history"], single["history"][:2])
        with pytest.raises(DistributedError, match="--nproc 3 needs 3 Dask workers"): launch_dask(3, _rank, spec("x"), client=client)
