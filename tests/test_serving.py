"""Serving an export from raw bars: `finsight.serving` (numpy + onnxruntime/torch) gives `predict`'s prices on the real
S&P 500 bars for a point and a quantile DLinear, through ONNX and TorchScript, for the next forecast and every window;
the Triton ensemble's Python-backend steps do the same in process (with a stand-in for `triton_python_backend_utils`);
tampered files are refused before loading and nothing is written; bad bars and unservable exports get clear errors."""
import importlib.util, json, shutil, subprocess, sys, types
from pathlib import Path
import numpy as np
import pytest
from finsight.data.loaders import get_data_loader
from finsight.features import BasicFeatureEngineering
from finsight.models import ModelConfig
from finsight.training import ModelTrainingFacade, TrainedModel, predict
from finsight.export import check_triton_config, export_model
from finsight.serving import ServingError, load_export

CFG = dict(context_length=32, prediction_length=3, num_epochs=1, batch_size=256, seed=0)
LEVELS = [0.1, 0.5, 0.9]


@pytest.fixture(scope="module")
def spx():
    return get_data_loader().load("SP500", "1d")


@pytest.fixture(scope="module")
def exports(spx, tmp_path_factory):
    "A point DLinear (with datetime features) and a quantile DLinear, trained one epoch on the S&P 500 and exported."
    f, out = ModelTrainingFacade(checkpoint_root=tmp_path_factory.mktemp("ckpt"), progress=False), {}
    for kind, fe, cfg in [("point", BasicFeatureEngineering(add_datetime_features=True), ModelConfig(**CFG)),
                          ("quantile", BasicFeatureEngineering(), ModelConfig(**CFG, loss="quantile", quantiles=LEVELS))]:
        tm = f.train_model_sync("SP500", "1d", "dlinear", spx.iloc[:3000], spx.iloc[3000:4000], fe, cfg, test_data=spx.iloc[4000:]).model
        out[kind] = tm, export_model(tm, ["torchscript", "onnx", "triton"], tmp_path_factory.mktemp("exp") / kind, triton_pytorch=False)
    return out


def _want(tm, bars, every_window=False):
    "predict's prices as the reader shapes them: (horizon[, levels]) or (origins, horizon[, levels])."
    df, lv, h = predict(tm, bars, every_window=every_window), tm.adapter.levels, tm.config.prediction_length
    if not every_window: return df["forecast"].to_numpy() if not lv else df[[f"q{a:g}" for a in lv]].to_numpy()
    if not lv: return df[[f"h{i + 1}" for i in range(h)]].to_numpy()
    return df[[f"h{i + 1}_q{a:g}" for i in range(h) for a in lv]].to_numpy().reshape(len(df), h, len(lv))


def _close(got, want):
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), np.abs(got - want).max()


# --- parity with predict ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("kind", ["point", "quantile"])
def test_reader_gives_predicts_prices_from_raw_bars(exports, spx, kind, fmt):
    tm, res = exports[kind]
    reader, bars = load_export(res.folder, fmt), spx.iloc[-400:]
    assert reader.min_rows == tm.features.warmup_ + 32 and reader.levels == list(tm.adapter.levels)
    nxt = reader.predict(bars)
    assert nxt.shape == ((3,) if kind == "point" else (3, 3))
    _close(nxt, _want(tm, bars))
    _close(reader.predict(bars, every_window=True), _want(tm, bars, every_window=True))
    _close(reader.predict(bars.iloc[-reader.min_rows:]), _want(tm, bars.iloc[-reader.min_rows:]))   # the fewest bars that give a forecast
    plain = {k: bars[k].to_numpy() for k in ("open", "high", "low", "close", "volume")} | {"timestamp": bars.index.tz_localize(None).values}
    np.testing.assert_array_equal(reader.predict(plain), nxt)   # a dict of arrays is read as the DataFrame


# --- the Triton ensemble, in process ---------------------------------------------------------------------------
def _stand_in_pb_utils() -> types.ModuleType:
    "What Triton's Python backend gives a model.py (`triton_python_backend_utils`), reduced to the calls a model makes."
    pb = types.ModuleType("triton_python_backend_utils")
    class Tensor:
        def __init__(self, name, array): self._name, self._a = name, np.asarray(array)
        def name(self): return self._name
        def as_numpy(self): return self._a
    class InferenceRequest:
        def __init__(self, inputs): self._inputs = list(inputs)
        def inputs(self): return self._inputs
    class TritonError:
        def __init__(self, message): self._m = message
        def message(self): return self._m
    class InferenceResponse:
        def __init__(self, output_tensors, error=None): self._out, self._error = list(output_tensors), error
        def output_tensors(self): return self._out
        def has_error(self): return self._error is not None
        def error(self): return self._error
    pb.Tensor, pb.InferenceRequest, pb.InferenceResponse, pb.TritonError = Tensor, InferenceRequest, InferenceResponse, TritonError
    pb.get_input_tensor_by_name = lambda r, n: next((t for t in r.inputs() if t.name() == n), None)
    pb.get_output_tensor_by_name = lambda r, n: next((t for t in r.output_tensors() if t.name() == n), None)
    return pb


@pytest.fixture
def pb_utils(monkeypatch):
    pb = _stand_in_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    yield pb
    sys.modules.pop("finsight_serving", None)   # the copy beside model.py, imported by it


def _python_model(model_dir: Path):
    "The TritonPythonModel of `model_dir/1/model.py`, loaded and initialized as the backend does."
    spec = importlib.util.spec_from_file_location(f"triton_{model_dir.name}", model_dir / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    m = mod.TritonPythonModel()
    m.initialize({"model_config": (model_dir / "config.pbtxt").read_text(), "model_repository": str(model_dir), "model_version": "1", "model_name": model_dir.name})
    return m


def _run_ensemble(repo: Path, name: str, pb, inputs: dict):
    "Follow the ensemble config's steps: Python models through their model.py, the ONNX model through onnxruntime."
    import onnxruntime as ort
    tensors = dict(inputs)
    for step in check_triton_config(repo / name).ensemble_scheduling.step:
        d, ins = repo / step.model_name, {k: tensors[v] for k, v in step.input_map.items()}
        if check_triton_config(d).backend == "python":
            resp = _python_model(d).execute([pb.InferenceRequest([pb.Tensor(k, v) for k, v in ins.items()])])[0]
            if resp.has_error(): return resp
            outs = {k: pb.get_output_tensor_by_name(resp, k).as_numpy() for k in step.output_map}
        else:
            s = ort.InferenceSession(str(d / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
            outs = dict(zip([o.name for o in s.get_outputs()], s.run(None, ins)))
        tensors |= {v: outs[k] for k, v in step.output_map.items()}
    return tensors


@pytest.mark.parametrize("kind", ["point", "quantile"])
def test_triton_ensemble_steps_give_predicts_prices(exports, spx, pb_utils, kind):
    tm, res = exports[kind]
    repo, bars = res.path("triton"), spx.iloc[-300:]
    inputs = {c.upper(): bars[c].to_numpy("float64") for c in ("open", "high", "low", "close", "volume")}
    if kind == "point": inputs["TIMESTAMP"] = bars.index.tz_localize(None).as_unit("ns").asi8   # the point model uses datetime features
    assert [i.name for i in check_triton_config(repo / res.name).input] == list(inputs)
    out = _run_ensemble(repo, res.name, pb_utils, inputs)
    assert Path(sys.modules["finsight_serving"].__file__).parent.parent.parent == repo   # the copy in the repository, not finsight
    _close(out["PRICES"][0], _want(tm, bars))
    bad = _run_ensemble(repo, res.name, pb_utils, {k: v[-40:] for k, v in inputs.items()})
    assert bad.has_error() and "40 bars are too few: this model needs at least" in bad.error().message()


# --- refusals --------------------------------------------------------------------------------------------------
def test_tampered_files_are_refused_before_loading_and_nothing_is_written(exports, tmp_path):
    _, res = exports["point"]
    d = shutil.copytree(res.folder, tmp_path / "copy")
    onnx = d / "model.onnx"; raw = bytearray(onnx.read_bytes()); raw[len(raw) // 2] ^= 1; onnx.write_bytes(bytes(raw))
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    code = ("import sys; from finsight.serving import load_export, ServingError\ntry: load_export(sys.argv[1])\n"
            "except ServingError as e: print(e, 'onnxruntime' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True, timeout=60)
    assert "model.onnx changed since the export (sha256 differs from export.json): refused before loading False False" in out.stdout, out.stdout + out.stderr
    ts = d / "model.torchscript.pt"; ts.write_bytes(b"x" + ts.read_bytes()[1:])
    with pytest.raises(ServingError, match="model.torchscript.pt changed since the export"): load_export(d, "torchscript")
    meta = json.loads((d / "export.json").read_text()); meta["features"]["mean"]["close"] += 1.0
    (d / "export.json").write_text(json.dumps(meta))
    with pytest.raises(ServingError, match=r"export.json changed since the export \(its content sha256 differs\): refused before loading"): load_export(d)
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name not in ("export.json", "model.torchscript.pt")} == \
           {p: b for p, b in before.items() if p.name not in ("export.json", "model.torchscript.pt")}   # the reader wrote nothing


def test_bad_bars_are_refused_naming_what_is_wrong(exports, spx):
    _, res = exports["quantile"]
    r, bars = load_export(res.folder), spx.iloc[-200:]
    with pytest.raises(ServingError, match=r"bars lack column\(s\) \['volume'\]"): r.predict(bars.drop(columns="volume"))
    with pytest.raises(ServingError, match=f"10 bars are too few: this model needs at least {r.min_rows} \\(33 warm-up \\+ 32 context\\)"): r.predict(bars.iloc[-10:])
    nan = bars.copy(); nan.iloc[[5, 9], nan.columns.get_loc("high")] = np.nan
    with pytest.raises(ServingError, match=r"column 'high' holds NaN or inf in 2 row\(s\), first at row\(s\) \[5, 9\] of 200"): r.predict(nan)
    with pytest.raises(ServingError, match="bars need a 'timestamp' column"):   # the point model uses datetime features
        load_export(exports["point"][1].folder).predict({k: bars[k].to_numpy() for k in ("open", "high", "low", "close", "volume")})


def test_bad_folders_formats_and_unservable_exports(exports, tmp_path):
    tm, res = exports["quantile"]
    with pytest.raises(ServingError, match="not a FinSight export folder"): load_export(tmp_path)
    with pytest.raises(ServingError, match="format 'pt' cannot be served by this reader; formats: onnx, torchscript"): load_export(res.folder, "pt")
    class OwnFeatures(BasicFeatureEngineering):
        def _add_custom_features(self, df): return df
    own = TrainedModel(tm.adapter, OwnFeatures.from_state(tm.features.state()), tm.target, "SP500", "1d", history=tm.history, windows=tm.windows)
    r = export_model(own, ["onnx"], tmp_path / "own")
    assert r.passed and r.serving == {"supported": False, "why": "OwnFeatures adds features of its own (_add_custom_features)"}
    with pytest.raises(ServingError, match=r"cannot be served from raw bars: OwnFeatures adds features of its own \(_add_custom_features\)"): load_export(r.folder)
    assert not (r.folder / "triton").exists()
    old = shutil.copytree(res.folder, tmp_path / "old"); meta = json.loads((old / "export.json").read_text())
    (old / "export.json").write_text(json.dumps(meta | {"format_version": "finsight.export/1"}))
    with pytest.raises(ServingError, match="format_version 'finsight.export/1'; this reader reads 'finsight.export/2' exports"): load_export(old)
