"""Panels end to end: a global DLinear trained by the shared `fit` on in-memory and on streamed windows of a synthetic
panel, streamed windows (local and S3 shards) equal to the in-memory ones, and a mid-epoch resume through `fit`'s generator."""
import hashlib
import numpy as np
import pytest
import torch

from finsight.data.panel import synthetic_panel
from finsight.data.streaming import ShardError, StreamingWindowDataset, write_shards
from finsight.features import BasicFeatureEngineering
from finsight.models import ModelConfig, ModelFactory
from finsight.panel_features import PanelWindows, panel_windows
from finsight.testing import LocalS3Server
from finsight.training import fit

CTX, H = 32, 4


@pytest.fixture(scope="module")
def windows() -> PanelWindows:
    return panel_windows(synthetic_panel(12, 600, seed=7), CTX, H, fe=BasicFeatureEngineering(indicators=["log_returns", "rsi"]),
                         train_ratio=0.7, val_ratio=0.15)


def _keys(batches) -> list[str]:
    "One digest per window (inputs, targets, symbol id): the multiset of windows a dataset serves."
    out = []
    for x, y, ids in batches:
        out += [hashlib.sha1(a.numpy().tobytes() + b.numpy().tobytes() + bytes([int(i)])).hexdigest() for a, b, i in zip(x, y, ids)]
    return sorted(out)


def _adapter(w: PanelWindows):
    cfg = ModelConfig(context_length=CTX, prediction_length=H, num_epochs=2, batch_size=64, learning_rate=1e-3, seed=3)
    return ModelFactory.create("dlinear", cfg, len(w.channels), w.target_channel)


def test_global_dlinear_trains_in_memory_and_streaming(windows, tmp_path):
    w = windows
    mem = fit(_adapter(w), w.train, w.val, progress=False)
    write_shards(w.train, tmp_path / "train", rows_per_shard=2_000, row_group_rows=256, channels=w.channels)
    stream = StreamingWindowDataset(tmp_path / "train", buffer_windows=1_024, chunk_windows=128)
    st = fit(_adapter(w), stream, w.val, progress=False)
    for res in (mem, st):
        assert res.epochs_run == 2 and all(np.isfinite(h["loss"]) and np.isfinite(h["val_loss"]) for h in res.history)
        assert res.history[-1]["batches"] == -(-w.train.num_windows // 64)
    # the same windows, another order: first-epoch losses agree to a few percent, not exactly
    assert abs(mem.history[0]["loss"] - st.history[0]["loss"]) < 0.1 * mem.history[0]["loss"]


def test_streamed_windows_equal_in_memory(windows, tmp_path):
    w = windows
    write_shards(w.test, tmp_path / "test", rows_per_shard=1_000, row_group_rows=100)
    mem = _keys(w.test.batches(97, with_ids=True))
    for rank_batches in ([StreamingWindowDataset(tmp_path / "test", buffer_windows=300, chunk_windows=50).batches(64, with_ids=True)],
                         [StreamingWindowDataset(tmp_path / "test", buffer_windows=300, chunk_windows=50, rank=r, world_size=3).batches(10, with_ids=True) for r in range(3)]):
        assert _keys(b for rb in rank_batches for b in rb) == mem


def test_resume_mid_epoch_with_fit_generator(windows, tmp_path):
    "fit seeds a generator per epoch; a dataset resumed from state_dict serves exactly the windows the interrupted pass had left."
    write_shards(windows.train, tmp_path / "tr")
    mk = lambda: StreamingWindowDataset(tmp_path / "tr", buffer_windows=512, chunk_windows=64)
    gen = lambda: torch.Generator().manual_seed(42 * 1000 + 1)
    full = _keys(mk().batches(32, shuffle=True, generator=gen(), with_ids=True))
    a = mk(); it = a.batches(32, shuffle=True, generator=gen(), with_ids=True)
    head = [next(it) for _ in range(5)]; state = a.state_dict()
    b = mk(); b.load_state_dict(state)
    rest = _keys(b.batches(32, with_ids=True))
    assert len(rest) == len(full) - 5 * 32 and sorted(_keys(head) + rest) == full


def test_streaming_from_s3(windows, tmp_path, monkeypatch):
    import boto3
    with LocalS3Server() as s3:
        for k, v in s3.env.items(): monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=s3.endpoint_url).create_bucket(Bucket="panel")
        opts = {"endpoint_url": s3.endpoint_url, "key": "testing", "secret": "testing"}
        write_shards(windows.val, "s3://panel/shards/val", rows_per_shard=500, storage_options=opts)
        ds = StreamingWindowDataset("s3://panel/shards/val", storage_options=opts, buffer_windows=256, chunk_windows=64)
        assert _keys(ds.batches(50, with_ids=True)) == _keys(windows.val.batches(50, with_ids=True))
        with pytest.raises(ShardError, match="no manifest.json"):
            StreamingWindowDataset("s3://panel/shards/nothing", storage_options=opts)
