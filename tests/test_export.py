"""Export end to end: every format of PatchTST and PatchTSMixer, loaded from disk the way its runtime loads it, matches
the trained model on real windows; Triton configurations parse with Triton's own schema and fit their model files; an
export is checked again from its folder alone in a fresh process; every bad input is refused and nothing is lost."""
import copy, json, shutil, subprocess, sys
import numpy as np
import pytest
import torch
from torch import nn
from finsight.data.sources import synthetic_ohlcv
from finsight.data.windows import TargetTransform
from finsight.features import BasicFeatureEngineering
from finsight.models import BaseTimeSeriesAdapter, ModelConfig, ModelFactory
from finsight.training import ModelTrainingFacade, TrainedModel
from finsight.export import (FORMATS, ExportError, ExportResult, ExportValidationError, check_export, check_triton_config,
                             export_model, load_exported, model_fingerprint, onnx_io, parity)

TYPES = ["patchtst", "patchtsmixer"]
CFG = dict(context_length=32, prediction_length=3, patch_length=8, d_model=64, n_heads=4, num_layers=1, num_epochs=1, batch_size=64, seed=0)


@pytest.fixture(scope="session")
def bars():
    return synthetic_ohlcv(900, "1h", seed=21)


@pytest.fixture(scope="session")
def models(bars, tmp_path_factory):
    "A tiny PatchTST and PatchTSMixer, trained one epoch each (a few seconds)."
    f = ModelTrainingFacade(checkpoint_root=tmp_path_factory.mktemp("ckpt"), progress=False)
    return {mt: f.train_model_sync("SYN", "1h", mt, bars.iloc[:600], bars.iloc[600:750], BasicFeatureEngineering(), ModelConfig(**CFG),
                                   test_data=bars.iloc[750:]).model for mt in TYPES}


@pytest.fixture(scope="session", params=TYPES)
def exported(request, models, tmp_path_factory):
    tm = models[request.param]
    return tm, export_model(tm, "all", tmp_path_factory.mktemp("export") / request.param)


def _windows(tm, n, seed=0):
    ds = tm.windows.test
    return ds.batch(torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n])[0]


def _perturbed(tm):
    "Another model: the same architecture and pipeline, other weights."
    other = TrainedModel(copy.deepcopy(tm.adapter), tm.features, tm.target, tm.symbol, tm.timeframe, history=tm.history, windows=tm.windows)
    with torch.no_grad(): next(other.adapter.module.parameters()).add_(0.01)
    return other


# --- every format, from disk -----------------------------------------------------------------------------------
def test_every_format_passes_and_metadata_says_so(exported):
    tm, res = exported
    assert res.passed and tuple(res.formats) == FORMATS, res.table()
    assert all(r.max_rel_error <= 1e-4 for r in res.formats.values())
    assert res.formats["pt"].max_abs_error == 0.0  # TrainedModel.load reproduces the forecasts bit for bit
    meta = json.loads((res.folder / "export.json").read_text())
    assert meta["fingerprint"] == model_fingerprint(tm) and meta["model_type"] == tm.model_type
    assert (meta["input_name"], meta["output_name"], meta["input_shape"], meta["output_shape"]) == ("past_values", "forecast", ["batch", 32, 16], ["batch", 3])
    assert isinstance(meta["opset"], int) and meta["opset"] >= 18 and meta["tolerance"] == 1e-4 and meta["n_windows"] == 128
    assert meta["channels"][meta["target_index"]] == "close" and meta["target"]["kind"] == "log_return"
    assert meta["format_version"] == "finsight.export/2" and meta["serving"] == {"supported": True, "why": None}   # what a client needs from raw bars
    assert (meta["context_length"], meta["prediction_length"], meta["levels"], meta["features"]["columns"]) == (32, 3, [], meta["channels"])
    assert meta["features"]["mean"].keys() == meta["features"]["std"].keys() == set(meta["channels"]) and meta["features"]["warmup"] == 33
    for f, r in meta["formats"].items():
        assert r["passed"] and r["error"] is None and r["seconds"] > 0 and r["runtime"]
        assert r["size_bytes"] == sum((res.folder / p).stat().st_size for p in r["files"]) > 0 and set(r["sha256"]) == set(r["files"])
    assert all(p.is_file() for p in res.files) and {"export_onnx_max_rel_error", "export_triton_passed"} <= set(res.as_metrics())
    assert not list(res.folder.glob("*.data")) and not list(res.folder.parent.glob(".*"))  # one-file ONNX, no temp folders left


@pytest.mark.parametrize("fmt", ["pt", "torchscript", "torch_export", "onnx"])
def test_loaded_from_disk_matches_at_batch_1_and_7(exported, fmt):
    tm, res = exported
    m = load_exported(res.path(fmt), fmt)
    for n in (1, 7):
        x = _windows(tm, n, seed=n)
        assert parity(tm.adapter.predict(x), m(x))[1] <= 1e-4


def test_onnx_graph_has_clean_names_and_dynamic_batch(exported):
    tm, res = exported
    import onnx, onnxruntime as ort
    onnx.checker.check_model(str(res.path("onnx")), full_check=True)
    assert onnx_io(res.path("onnx")) == ({"past_values": ("TYPE_FP32", [-1, 32, 16])}, {"forecast": ("TYPE_FP32", [-1, 3])})
    s = ort.InferenceSession(str(res.path("onnx")), providers=["CPUExecutionProvider"])
    assert [i.name for i in s.get_inputs()] == ["past_values"] and [o.name for o in s.get_outputs()] == ["forecast"]
    assert s.run(None, {"past_values": _windows(tm, 7).numpy()})[0].shape == (7, 3)


def test_pt_loads_weights_only_with_pipeline(exported):
    tm, res = exported
    raw = torch.load(res.path("pt"), weights_only=True)
    assert raw["extra"]["features"]["columns"] == tm.features.columns_ and raw["model_type"] == tm.model_type
    back = TrainedModel.load(res.path("pt"))
    x = _windows(tm, 9)
    np.testing.assert_array_equal(back.adapter.predict(x), tm.adapter.predict(x))


# --- Triton ----------------------------------------------------------------------------------------------------
def test_triton_configs_parse_with_tritons_schema_and_fit_the_models(exported):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc
    tm, res = exported
    repo, n = res.path("triton"), res.name
    assert sorted(p.name for p in repo.iterdir()) == [n, f"{n}_libtorch", f"{n}_onnx", f"{n}_postprocess", f"{n}_preprocess"]
    for d in repo.iterdir(): text_format.Parse((d / "config.pbtxt").read_text(), mc.ModelConfig())   # every config, the ensemble's and the Python backend's included
    onnx_cfg = text_format.Parse((repo / f"{n}_onnx" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert (onnx_cfg.name, onnx_cfg.platform, onnx_cfg.backend, onnx_cfg.max_batch_size) == (f"{n}_onnx", "onnxruntime_onnx", "onnxruntime", 256)
    assert onnx_cfg.HasField("dynamic_batching")
    ins, outs = onnx_io(repo / f"{n}_onnx" / "1" / "model.onnx")
    for cfg_io, graph_io in ((onnx_cfg.input, ins), (onnx_cfg.output, outs)):
        assert {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in cfg_io} == {k: (dt, d[1:]) for k, (dt, d) in graph_io.items()}
    pt_cfg = text_format.Parse((repo / f"{res.name}_libtorch" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert (pt_cfg.platform, pt_cfg.backend, [i.name for i in pt_cfg.input], [o.name for o in pt_cfg.output]) == ("pytorch_libtorch", "pytorch", ["past_values"], ["forecast__0"])
    ts = torch.jit.load(str(repo / f"{res.name}_libtorch" / "1" / "model.pt"))
    assert [a.name for a in ts.forward.schema.arguments[1:]] == ["past_values"]  # the backend binds the input by forward argument name
    assert list(ts(_windows(tm, 7)).shape) == [7, *pt_cfg.output[0].dims]
    for d in repo.iterdir(): check_triton_config(d)
    for d in (repo / f"{n}_onnx", repo / f"{n}_libtorch"):
        assert parity(tm.adapter.predict(_windows(tm, 7)), load_exported(d, "triton")(_windows(tm, 7)))[1] <= 1e-4


def test_triton_check_refuses_configs_that_do_not_fit(exported, tmp_path):
    _, res = exported
    repo = shutil.copytree(res.path("triton"), tmp_path / "triton")
    cfg = repo / f"{res.name}_onnx" / "config.pbtxt"
    good = cfg.read_text()
    for bad, says in [(good.replace('name: "past_values"', 'name: "x"'), "input names ['x'] differ from the ONNX graph's ['past_values']"),
                      (good.replace("TYPE_FP32", "TYPE_FP16", 1), "input 'past_values' is TYPE_FP16, the ONNX graph has TYPE_FP32"),
                      (good.replace("dims: [ 32, 16 ]", "dims: [ 64, 16 ]"), "has dims [64, 16], the ONNX graph [-1, 32, 16]"),
                      (good.replace("max_batch_size: 256", "max_batch_size: 0"), "max_batch_size=0"),
                      (good.replace(f'name: "{res.name}_onnx"', 'name: "other"'), "differs from its folder"),
                      (good.replace('backend: "onnxruntime"', 'backend: "pytorch"'), "does not serve platform"),
                      (good + "\nbogus_field: 1\n", "not a valid Triton model configuration")]:
        cfg.write_text(bad)
        with pytest.raises(ExportValidationError, match=None) as e: check_triton_config(cfg.parent)
        assert says in str(e.value), str(e.value)
    pt = repo / f"{res.name}_libtorch" / "config.pbtxt"
    pt.write_text(pt.read_text().replace('name: "past_values"', 'name: "values"'))
    with pytest.raises(ExportValidationError, match=r"neither forward arguments \['past_values'\] nor <name>__<index>"): check_triton_config(pt.parent)


def test_triton_only_without_pytorch_backend(models, tmp_path):
    res = export_model(models["patchtsmixer"], ["triton"], tmp_path / "t", name="mixer", triton_pytorch=False, max_batch_size=64)
    assert res.passed and list(res.formats) == ["triton"] and sorted(p.name for p in (tmp_path / "t" / "triton").iterdir()) == ["mixer", "mixer_onnx", "mixer_postprocess", "mixer_preprocess"]
    assert not (tmp_path / "t" / "model.onnx").exists() and check_triton_config(tmp_path / "t" / "triton" / "mixer_onnx").max_batch_size == 64
    assert res.opset is not None


# --- checking again from the files -----------------------------------------------------------------------------
def test_check_export_from_folder_alone_in_fresh_process(exported, tmp_path):
    _, res = exported
    moved = shutil.copytree(res.folder, tmp_path / "moved")
    code = ("import sys; from finsight.export import check_export; r = check_export(sys.argv[1]); "
            "print(r.passed, sorted(r.formats), max(f.max_rel_error for f in r.formats.values()))")
    out = subprocess.run([sys.executable, "-c", code, str(moved)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    passed, _, rest = out.stdout.strip().partition(" ")
    assert passed == "True" and str(sorted(FORMATS)) in out.stdout


def test_check_export_catches_changed_and_missing_files(exported, tmp_path):
    import onnx
    from onnx import numpy_helper
    tm, res = exported
    d = shutil.copytree(res.folder, tmp_path / "copy")
    m = onnx.load(str(d / "model.onnx"))
    init = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))  # other weights, same graph
    onnx.save(m, str(d / "model.onnx"))
    (d / "model.pt2").unlink()
    r = check_export(d, strict=False)
    assert r.failed == ["torch_export", "onnx"]
    assert r.formats["onnx"].max_rel_error > 1e-4 and "changed since the export" in r.formats["onnx"].error and "relative error" in r.formats["onnx"].error
    assert "missing file(s) ['model.pt2']" in r.formats["torch_export"].error
    with pytest.raises(ExportValidationError, match="onnx: model.onnx changed since the export"): check_export(d)
    assert check_export(d, ["pt", "torchscript", "triton"]).passed  # only the formats asked for are checked again
    (d / "parity.npz").unlink()
    with pytest.raises(ExportValidationError, match="parity.npz: the check windows are missing"): check_export(d)


# --- a model whose export does not do what it does -------------------------------------------------------------
class _FrozenCount(nn.Module):
    "Adds a count computed as a Python number: tracing freezes it, torch.export refuses it."
    def __init__(self, context_length, prediction_length, target_index):
        super().__init__(); self.lin, self.t = nn.Linear(context_length, prediction_length), target_index

    def forward(self, past_values):
        n = int((past_values[:, -1, self.t] > 0).sum())
        return self.lin(past_values[..., self.t]) + n


class _FrozenCountAdapter(BaseTimeSeriesAdapter):
    def _create_model(self): return _FrozenCount(self.config.context_length, self.config.prediction_length, self.target_index)


@pytest.fixture
def untraceable(models):
    ModelFactory.register_model("frozen_count_test", _FrozenCountAdapter)
    tm = models["patchtst"]
    ad = ModelFactory.create("frozen_count_test", tm.config, tm.adapter.n_channels, tm.adapter.target_index)
    yield TrainedModel(ad, tm.features, tm.target, "SYN", "1h", history=[{"epoch": 1}], windows=tm.windows)
    ModelFactory._adapters.pop("frozen_count_test", None)


def test_failed_parity_is_reported_and_out_dir_left_alone(untraceable, tmp_path):
    out = tmp_path / "frozen"
    with pytest.raises(ExportValidationError) as e: export_model(untraceable, "all", out)
    msg, res = str(e.value), e.value.result
    assert "torchscript: relative error" in msg and f"{out} is unchanged" in msg and not out.exists()
    assert res.formats["pt"].passed and {"torchscript", "torch_export", "triton"} <= set(res.failed)
    assert res.formats["torchscript"].max_rel_error > 1e-4 and "tracer warned" in res.formats["torchscript"].error
    assert "needs the" in res.formats["triton"].error
    assert json.loads((tmp_path / "frozen.failed" / "export.json").read_text())["formats"]["torchscript"]["passed"] is False
    r = export_model(untraceable, ["pt", "torchscript"], out, strict=False)  # published, failures recorded
    assert not r.passed and r.failed == ["torchscript"] and ExportResult.load(out).failed == ["torchscript"]


# --- bad input -------------------------------------------------------------------------------------------------
def test_unknown_format_is_refused_before_anything_is_written(models, tmp_path):
    with pytest.raises(ExportError, match=r"unknown export format\(s\) \['tflite'\]; valid: pt, torchscript, torch_export, onnx, triton"):
        export_model(models["patchtst"], ["onnx", "tflite"], tmp_path / "x")
    with pytest.raises(ExportError, match="max_batch_size=0 must be between 1 and 65536"): export_model(models["patchtst"], "onnx", tmp_path / "x", max_batch_size=0)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ExportError, match="not a FinSight export folder"): check_export(tmp_path)
    with pytest.raises(ExportError, match="no such exported file"): load_exported(tmp_path / "model.onnx", "onnx")


def test_untrained_model_is_refused_unless_asked(models, tmp_path):
    tm = models["patchtst"]
    fresh = TrainedModel(ModelFactory.create("patchtst", tm.config, tm.adapter.n_channels, tm.adapter.target_index), tm.features, tm.target, windows=tm.windows)
    with pytest.raises(ExportError, match="never trained"): export_model(fresh, "pt", tmp_path / "u")
    assert not (tmp_path / "u").exists()
    assert export_model(fresh, "pt", tmp_path / "u", allow_untrained=True).passed


@pytest.mark.parametrize("what", ["features", "target_index", "target_transform"])
def test_mismatched_model_is_refused(models, bars, tmp_path, what):
    tm = models["patchtst"]
    parts = dict(adapter=tm.adapter, features=tm.features, target=tm.target, history=tm.history, windows=tm.windows)
    if what == "features": parts["features"], says = BasicFeatureEngineering(add_datetime_features=True).fit(bars.iloc[:600]), "the feature pipeline makes 28 channels, the model takes 16"
    if what == "target_index": parts["adapter"], says = ModelFactory.create("patchtst", tm.config, 16, 0), "target column 'close' is feature channel 3, the model forecasts channel 0"
    if what == "target_transform": parts["target"], says = TargetTransform("price", 100.0, 10.0), "the target transform is 'price', the config says 'log_return'"
    with pytest.raises(ExportError, match="cannot export a mismatched model") as e: export_model(TrainedModel(**parts), "pt", tmp_path / "m")
    assert says in str(e.value) and not (tmp_path / "m").exists()


def test_folder_holding_another_model_is_refused_and_kept(models, tmp_path):
    tm, out = models["patchtst"], tmp_path / "out"
    first = export_model(tm, ["pt", "onnx"], out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = _perturbed(tm)
    with pytest.raises(ExportError, match="holds the export of another model .*pass overwrite=True"): export_model(other, "pt", out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # not a byte changed
    again = export_model(tm, ["pt"], out)  # the same model may be re-exported: its own files are replaced
    assert again.fingerprint == first.fingerprint and list(ExportResult.load(out).formats) == ["pt"] and not (out / "model.onnx").exists()
    replaced = export_model(other, ["pt"], out, overwrite=True)
    assert ExportResult.load(out).fingerprint == replaced.fingerprint != first.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or backup folders left


def test_folder_of_other_files_or_a_file_is_refused(models, tmp_path):
    tm = models["patchtst"]
    (tmp_path / "mine").mkdir(); (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ExportError, match="holds files that are not a FinSight export"): export_model(tm, "pt", tmp_path / "mine", overwrite=overwrite)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    (tmp_path / "f").write_text("x")
    with pytest.raises(ExportError, match="is a file, not a folder"): export_model(tm, "pt", tmp_path / "f")


def test_windows_bad_or_missing_and_from_bars(models, bars, tmp_path):
    tm = models["patchtsmixer"]
    loaded = TrainedModel.load(tm.save(tmp_path / "m.pt"))  # carries no windows
    with pytest.raises(ExportError, match="pass windows= OHLCV bars"): export_model(loaded, "pt", tmp_path / "a")
    with pytest.raises(ExportError, match=r"this model takes \(batch, 32, 16\)"): export_model(loaded, "pt", tmp_path / "a", windows=np.zeros((4, 32, 3)))
    with pytest.raises(ExportError, match="NaN or infinite"): export_model(loaded, "pt", tmp_path / "a", windows=np.full((4, 32, 16), np.nan))
    with pytest.raises(ExportError, match="name 'a b' must be"): export_model(loaded, "pt", tmp_path / "a", windows=bars, name="a b")
    res = export_model(loaded, ["pt", "torchscript"], tmp_path / "a", windows=bars.iloc[-300:], n_windows=40)
    assert res.passed and res.n_windows == 40 and res.fingerprint == model_fingerprint(tm)


@pytest.mark.parametrize("model_type,head", [("dlinear", {"loss": "quantile"}), ("patchtst", {"loss": "nll", "distribution": "student_t"})], ids=["quantile", "nll"])
def test_a_quantile_model_exports_every_quantile(bars, tmp_path, model_type, head):
    """A DLinear with a quantile head (loss="quantile") and a PatchTST with a Student-t head (loss="nll", its quantiles
    computed inside the graph): every format outputs (batch, horizon, quantiles), sorted, and matches the trained model
    level by level; the Triton config and the metadata say so."""
    import onnxruntime as ort
    f = ModelTrainingFacade(checkpoint_root=tmp_path / "ckpt", progress=False)
    cfg = ModelConfig(**(CFG | {"num_epochs": 2}), quantiles=[0.1, 0.5, 0.9], **head)
    tm = f.train_model_sync("SYN", "1h", model_type, bars.iloc[:600], bars.iloc[600:750], BasicFeatureEngineering(), cfg, test_data=bars.iloc[750:]).model
    res = export_model(tm, ["pt", "torchscript", "onnx", "triton"], tmp_path / "q")
    assert res.passed, res.table()
    assert json.loads((res.folder / "export.json").read_text())["output_shape"] == ["batch", 3, 3]
    x = _windows(tm, 7).numpy()
    y = ort.InferenceSession(str(res.path("onnx")), providers=["CPUExecutionProvider"]).run(None, {"past_values": x})[0]
    want = tm.adapter.predict(x)
    assert y.shape == (7, 3, 3) and (np.diff(y, axis=-1) >= 0).all()
    for j in range(3): assert parity(want[..., j], y[..., j])[1] <= 1e-4          # each quantile on its own
    assert list(check_triton_config(res.folder / "triton" / f"{res.name}_onnx").output[0].dims) == [3, 3]
    assert res.levels == [0.1, 0.5, 0.9] and res.serving["supported"]
