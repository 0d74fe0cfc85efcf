"""The CUDA paths: the precision plan on this card (bf16 autocast on compute capability 8.0+, fp16 with the gradient
scaler before), both trained through `fit`; fused AdamW; CUDA_DEVICE_MEMORY_FRACTION on a device passed in (the job
service's path), cache release; a GPU job on the job service gets one GPU and records it."""
import numpy as np
import pytest
import torch
from finsight.data.windows import WindowDataset
from finsight.hardware import gpus, plan_precision, release_device_memory, resolve_device
from finsight.models import ModelConfig, ModelFactory
from finsight.settings import load_settings
from finsight.training import _epoch, fit, make_optimizer

CTX = 32


def _data(n=700, c=4):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c)).astype("float32"); y = np.convolve(x[:, 0], np.ones(4) / 4, "same").astype("float32")
    cut = 560
    return (WindowDataset(x[:cut], y[:cut], np.ones(cut), CTX, 1),
            WindowDataset(x[cut - CTX:], y[cut - CTX:], np.ones(n - cut + CTX), CTX, 1))


def _cfg(**kw):
    return ModelConfig(context_length=CTX, prediction_length=1, d_model=32, n_heads=4, num_layers=1, patch_length=8, num_epochs=2, batch_size=64, **kw)


def test_the_machine_reports_its_gpus():
    g = gpus()
    assert g and g[0]["memory_gib"] > 0 and g[0]["capability"] == "{}.{}".format(*torch.cuda.get_device_capability(0))


@pytest.mark.parametrize("model", ["patchtst", "patchtsmixer"])
def test_mixed_precision_trains_as_the_plan_says(model):
    plan = plan_precision("cuda", True, warn=False)
    assert plan.name == ("bf16" if torch.cuda.get_device_capability(0)[0] >= 8 else "fp16+scaler")
    ad = ModelFactory.create(model, _cfg(mixed_precision=True), 4, 0); tr, va = _data()
    res = fit(ad, tr, va, progress=False, device=torch.device("cuda"))
    assert res.precision == plan.name and np.isfinite(res.best_val_loss)
    assert res.plan["precision.device"] == "cuda:0" and next(ad.module.parameters()).is_cuda


def test_fp16_with_the_gradient_scaler_trains():
    "The branch of pre-Ampere cards, run on any card: fp16 autocast, an enabled scaler, finite losses that fall."
    plan = plan_precision("cuda", True, bf16=(False, "as on a card before compute capability 8.0"), warn=False)
    assert plan.scaler and plan.grad_scaler().is_enabled() and plan.name == "fp16+scaler"
    cfg, dev = _cfg(), torch.device("cuda")
    ad = ModelFactory.create("patchtst", cfg, 4, 0); m = ad.module.to(dev); tr, _ = _data()
    opt, scaler = make_optimizer(m, cfg, dev), plan.grad_scaler()
    losses = [_epoch(m, tr, opt, scaler, plan.autocast(), cfg, dev, torch.Generator().manual_seed(e), torch.nn.functional.mse_loss)[0] for e in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] and scaler.get_scale() > 0


def test_fused_adamw_on_cuda():
    opt = make_optimizer(torch.nn.Linear(4, 2).cuda(), _cfg(), torch.device("cuda"))
    assert opt.defaults["fused"]


def test_memory_fraction_applies_to_a_device_passed_in():
    total = torch.cuda.get_device_properties(0).total_memory
    dev = resolve_device("cuda:0", settings=load_settings(env={"CUDA_DEVICE_MEMORY_FRACTION": "0.05"}))
    try:
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(total * 0.1), dtype=torch.uint8, device=dev)
    finally:
        resolve_device("cuda:0", settings=load_settings(env={"CUDA_DEVICE_MEMORY_FRACTION": "1.0"}))
    x = torch.empty(int(total * 0.1), dtype=torch.uint8, device=dev)
    del x; release_device_memory(dev)
    assert torch.cuda.memory_reserved(0) < total * 0.05   # the cache went back to the driver
