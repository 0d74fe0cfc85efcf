"Slow checks of finsight.models: every registered model traces, exports and round-trips through a fresh process."
import subprocess, sys, warnings
import numpy as np
import pytest
import torch
from finsight.models import ModelConfig, ModelFactory, ModelType, check_adapter, load_adapter

TINY = dict(context_length=32, prediction_length=3, patch_length=8, d_model=64, n_heads=4, num_layers=1)
TYPES = ["patchtst", "patchtsmixer", "dlinear"]


def _adapter(model_type, **kw):
    return ModelFactory.create(model_type, ModelConfig(**{**TINY, **kw}), n_channels=3, target_index=1)


@pytest.fixture(scope="module", params=TYPES)
def adapter(request):
    a = _adapter(request.param)
    a.module.eval()
    return a


def _inputs(n, seed=0):
    return torch.randn(n, TINY["context_length"], 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type", TYPES)
@pytest.mark.parametrize("overrides", [{}, {"channel_mixing": True}, {"target_transform": "price"}, {"patch_stride": 4}])
def test_contract(model_type, overrides):
    check_adapter(_adapter(model_type, **overrides))


def test_jit_trace(adapter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(adapter.module, (_inputs(4),))
    x = _inputs(7, seed=1)
    torch.testing.assert_close(traced(x), adapter.module(x))


def test_torch_export_dynamic_batch(adapter):
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(adapter.module, (_inputs(4),), dynamic_shapes={"past_values": {0: batch}})
    for n in (1, 9):
        x = _inputs(n, seed=n)
        torch.testing.assert_close(ep.module()(x), adapter.module(x))


def test_onnx_dynamo(adapter, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    f = tmp_path / "m.onnx"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(adapter.module, (_inputs(4),), f, dynamo=True, input_names=["past_values"], output_names=["forecast"],
                      dynamic_shapes={"past_values": {0: batch}}, external_data=False, verbose=False)
    session = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    x = _inputs(5, seed=2)
    out = session.run(None, {"past_values": x.numpy()})[0]
    np.testing.assert_allclose(out, adapter.module(x).detach().numpy(), atol=1e-5, rtol=1e-4)


def test_checkpoint_loads_in_fresh_process(tmp_path):
    "A saved DLinear (a registered custom type) loads where only `import finsight.models` ran, weights_only."
    a = _adapter("dlinear")
    x = _inputs(3).numpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", a.predict(x))
    a.save(tmp_path / "m.pt", extra={"columns": ["open", "close", "rsi"], "mean": np.zeros(3)})
    code = (f"import numpy as np, torch; from finsight.models import load_adapter; p = {str(tmp_path)!r}; "
            "a = load_adapter(p + '/m.pt'); torch.load(p + '/m.pt', weights_only=True); "
            "np.testing.assert_array_equal(a.predict(np.load(p + '/x.npy')), np.load(p + '/y.npy')); "
            "assert a.extra['columns'][1] == 'close' and a.model_type == 'dlinear'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_training_mode_round_trip_keeps_batchnorm_stats(tmp_path):
    "Running statistics (PatchTST batch norm) are part of the checkpoint, so eval forecasts survive a round trip."
    a = _adapter("patchtst")
    a.module.train()
    with torch.no_grad():
        for s in range(3): a.module(_inputs(8, seed=s) * 3 + 1)
    x = _inputs(4, seed=9).numpy()
    b = load_adapter(a.save(tmp_path / "bn.pt"))
    np.testing.assert_array_equal(b.predict(x), a.predict(x))


def test_model_type_members():
    assert ModelType("patchtst") is ModelType.PATCHTST and ModelType.parse("PATCHTSMIXER") is ModelType.PATCHTSMIXER
    assert set(TYPES) <= set(ModelFactory.available())
