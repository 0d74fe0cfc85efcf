"""Sentiment models end to end: loaders and checks, MiniLM fine-tuning beside the majority class, exact resume,
ONNX/Triton export parity, the papermill template, and every bad input the issue names."""
import json, os
os.environ["HF_HUB_OFFLINE"] = "1"      # nothing here may reach the hub: the encoder comes from an installed package
from pathlib import Path
import numpy as np
from finsight.hardware import plan_precision
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from finsight.settings import ConfigError
from finsight.data.sources import DataSourceError
from finsight.data.validation import DataValidationError
from finsight.models import ModelConfig, ModelError, ModelFactory, ModelType
from finsight.training import CheckpointError, load_checkpoint
from finsight.export import ExportError, ExportValidationError
from finsight.data.texts import TextSplit, load_sample_sentences, read_labelled_texts, split_texts, validate_texts
from finsight.text_models import SentimentAdapter, SentimentConfig, bundled_encoder_path, check_model_folder, tiny_text_model
from finsight.sentiment import TrainedSentimentModel, OnnxSentimentModel, export_sentiment, predict_sentiment, train_sentiment, _check_parity

ROOT = Path(__file__).resolve().parent.parent
FROZEN = dict(max_seq_len=48, freeze_encoder=True, num_epochs=2, batch_size=32, learning_rate=3e-3, seed=0)


@pytest.fixture(scope="module")
def sample():
    return load_sample_sentences()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "A small random BERT folder with the bundled tokenizer: a real transformers folder that trains in a second."
    return tiny_text_model(tmp_path_factory.mktemp("tiny") / "encoder")


def tiny_cfg(tiny, **kw):
    return SentimentConfig(**{"model_path": str(tiny), "max_seq_len": 32, "num_epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "seed": 0, **kw})


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    "all-MiniLM-L6-v2 from the installed package, fine-tuned (encoder frozen) for two epochs on the sample set."
    return train_sentiment(None, SentimentConfig(**FROZEN), run_id="minilm", checkpoint_root=tmp_path_factory.mktemp("ck"), progress=False)


# --- data ---------------------------------------------------------------------------------------------------------

def test_csv_parquet_and_phrasebank_files(sample, tmp_path):
    sample.rename(columns={"text": "headline", "label": "sentiment", "timestamp": "published_at"}).to_csv(tmp_path / "news.csv", index=False)
    sample.to_parquet(tmp_path / "news.parquet")
    a = read_labelled_texts(tmp_path / "news.csv", text_column="headline", label_column="sentiment")
    b = read_labelled_texts(tmp_path / "news.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["text", "label", "timestamp"] and str(a.timestamp.dt.tz) == "UTC"
    lines = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .@positive", "Nokian Renkaat's caf\xe9 @ Espoo opened .@neutral",
             "Net sales fell 10 % .@negative"]
    (tmp_path / "Sentences_AllAgree.txt").write_bytes("\r\n".join(lines).encode("latin-1"))
    pb = read_labelled_texts(tmp_path / "Sentences_AllAgree.txt")
    assert pb.label.tolist() == ["positive", "neutral", "negative"] and pb.text[1] == "Nokian Renkaat's café @ Espoo opened ."
    assert "timestamp" not in pb.columns


def test_file_without_text_or_label_column_is_named(sample, tmp_path):
    sample.drop(columns="text").to_csv(tmp_path / "no_text.csv", index=False)
    with pytest.raises(DataValidationError, match=r"no_text.csv has no text column 'text'; its columns are \['label', 'timestamp'\]"):
        read_labelled_texts(tmp_path / "no_text.csv")
    sample.drop(columns="label").to_parquet(tmp_path / "no_label.parquet")
    with pytest.raises(DataValidationError, match="no_label.parquet has no label column 'label'"):
        train_sentiment(tmp_path / "no_label.parquet", SentimentConfig(num_epochs=1), progress=False)
    with pytest.raises(DataValidationError, match="has no text column 'headline'"):
        read_labelled_texts(tmp_path / "no_label.parquet", text_column="headline")
    (tmp_path / "broken.txt").write_text("fine@neutral\nno label on this line\n")
    with pytest.raises(DataValidationError, match=r"1 lines are not 'sentence@label' \(lines \[2\]\)"):
        read_labelled_texts(tmp_path / "broken.txt")
    with pytest.raises(DataSourceError, match="unknown format '.json'"):
        (tmp_path / "x.json").write_text("{}"); read_labelled_texts(tmp_path / "x.json")


def test_unknown_and_empty_labels_and_texts_are_refused(sample, tiny, tmp_path):
    bad = sample.copy(); bad.loc[[3, 77], "label"] = "Bullish"; bad.loc[120, "label"] = None
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataValidationError, match=r"unknown label\(s\) 'bullish' \(2 rows\), missing \(1 rows\); known: negative, neutral, positive"):
        train_sentiment(tmp_path / "bad.csv", tiny_cfg(tiny), checkpoint_root=tmp_path, progress=False)
    empty = sample.copy(); empty.loc[[5, 9], "text"] = ["", "   "]
    with pytest.raises(DataValidationError, match="2 rows have no text"):
        train_sentiment(empty, tiny_cfg(tiny), checkpoint_root=tmp_path, progress=False)
    with pytest.raises(DataValidationError, match=r"1 of 2 texts are empty or not text \(positions \[1\]\)"):
        SentimentAdapter(tiny_cfg(tiny)).predict(["Profit rose.", " "])
    with pytest.raises(ConfigError, match="labels=.* is invalid: need at least 2 labels"):
        SentimentConfig(labels=["positive"])


def test_any_label_set_given_in_the_config(sample, tiny, tmp_path):
    moved = sample.assign(label=sample.label.map({"negative": "down", "neutral": "flat", "positive": "up"}))
    out = train_sentiment(moved, tiny_cfg(tiny, labels=["down", "flat", "up"], num_epochs=1), checkpoint_root=tmp_path, progress=False)
    assert out.labels == ["down", "flat", "up"] and out.majority_label == "flat"
    assert {"test_precision_up", "test_recall_down", "test_f1_flat"} <= set(out.metrics)
    assert out.model.adapter.module.model.config.id2label == {0: "down", 1: "flat", 2: "up"}
    assert set(out.model.predict(["Sales rose."]).columns) == {"text", "label", "confidence", "p_down", "p_flat", "p_up"}


def test_overlong_texts_are_truncated_and_counted(sample, tiny, tmp_path):
    long = "The company said revenue rose in every region and margins improved as costs fell " * 6
    df = pd.concat([sample.drop(columns="timestamp"), pd.DataFrame({"text": [f"{long} ({i})" for i in range(4)], "label": "positive"})], ignore_index=True)
    out = train_sentiment(df, tiny_cfg(tiny, num_epochs=1), checkpoint_root=tmp_path, progress=False, split="stratified")
    rep = out.report
    assert out.metrics["truncated_texts"] == 4 and rep["overlong texts"].count == 4 and rep.ok   # a warning, not an error
    assert "4 texts longer than max_seq_len=32 tokens were truncated" in rep["overlong texts"].detail
    enc = out.model.adapter.encode([long])
    assert enc.input_ids.shape[1] == 32 and enc.truncated == 1


def test_splits_stratified_time_ordered_and_leak_free(sample):
    st = split_texts(sample, by="stratified", seed=3)
    share = lambda d: d.label.value_counts(normalize=True)
    for part in (st.train, st.val, st.test): assert (share(part) - share(sample)).abs().max() < 0.03
    tm = split_texts(sample)
    assert tm.method == "time" and tm.train.timestamp.max() < tm.val.timestamp.min() and tm.val.timestamp.max() < tm.test.timestamp.min()
    dup = pd.concat([sample, sample.iloc[[1, 2]].assign(text=lambda d: "  " + d.text.str.upper())])    # same texts, other case/spacing
    sd = split_texts(dup, by="stratified")
    assert sd.dropped_duplicates == 2 and sum(len(p) for p in sd.parts().values()) == len(sample)
    leaky = TextSplit(st.train, st.val, pd.concat([st.test, st.train.iloc[:2]]))
    rep = validate_texts(leaky)
    assert not rep.ok and rep["cross-split duplicates"].count == 2
    with pytest.raises(DataValidationError, match="2 texts in both train/test"):
        train_sentiment(leaky, SentimentConfig(num_epochs=1), progress=False)


def test_model_folder_that_is_not_a_transformers_model(tmp_path, tiny):
    with pytest.raises(ModelError, match=f"model folder {tmp_path / 'nowhere'} does not exist"):
        SentimentAdapter({"model_path": str(tmp_path / "nowhere")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"empty is not a transformers model folder: it has no config.json, tokenizer files .*, weights .* \(it holds: nothing\)"):
        train_sentiment(None, {"model_path": str(tmp_path / "empty"), "num_epochs": 1}, progress=False)
    notes = tmp_path / "notes"; notes.mkdir(); (notes / "readme.md").write_text("hi"); (notes / "config.json").write_text('{"name": "x"}')
    for f in ("tokenizer.json", "model.safetensors"): (notes / f).write_bytes((tiny / f).read_bytes())
    with pytest.raises(ModelError, match="notes/config.json is not a transformers model configuration"):
        SentimentAdapter({"model_path": str(notes)})
    with pytest.raises(ConfigError, match="takes a SentimentConfig"):
        SentimentAdapter(ModelConfig())


# --- model, training, metrics -------------------------------------------------------------------------------------

def test_a_text_model_not_a_forecasting_model_type(tiny):
    "The classifier is a model adapter beside the forecasters, reached through the sentiment task, not a forecasting ModelType."
    with pytest.raises(ConfigError, match="unknown model type 'sentiment'"): ModelType.parse("sentiment")
    assert "sentiment" not in ModelFactory.available() and "text_classifier" not in ModelFactory.available()
    f = ModelFactory.create("dlinear", {"context_length": 16, "patch_length": 4}, 2, 0)     # the forecasting path is untouched
    assert f.predict(np.zeros((3, 16, 2))).shape == (3, 1)
    a = SentimentAdapter(tiny_cfg(tiny).to_dict())
    assert a.model_type == "text_classifier" and a.folder == tiny.resolve()
    assert check_model_folder(None) == bundled_encoder_path() and (bundled_encoder_path() / "model.safetensors").is_file()


def test_minilm_beats_the_majority_class_on_the_same_split(minilm):
    m, split = minilm.metrics, minilm.split
    majority = split.train.label.value_counts().idxmax()
    assert minilm.majority_label == majority == "neutral"
    for part in ("val", "test"):
        y = getattr(split, part).label
        assert m[f"{part}_majority_accuracy"] == pytest.approx((y == majority).mean())
        assert m[f"{part}_accuracy"] > m[f"{part}_majority_accuracy"] + 0.1 and m[f"{part}_macro_f1"] > m[f"{part}_majority_macro_f1"] + 0.2
        assert np.sum(minilm.confusion[part]) == len(y) == m[f"{part}_examples"]
        assert {f"{part}_precision_negative", f"{part}_recall_positive", f"{part}_loss"} <= set(m)
    assert minilm.report.ok and [h["epoch"] for h in minilm.history] == [1, 2]
    assert minilm.model_type == "text_classifier" and minilm.config.freeze_encoder is True and minilm.run_id == "minilm"


def test_frozen_encoder_stays_put_and_full_fine_tuning_moves_it(minilm, sample, tmp_path):
    pre = load_file(bundled_encoder_path() / "model.safetensors")
    key = next(k for k in pre if k.endswith("encoder.layer.5.output.dense.weight"))
    sd = minilm.model.adapter.module.model.bert.state_dict()
    assert torch.equal(sd[key.removeprefix("bert.")], pre[key])
    small = split_texts(sample, by="stratified", seed=0)
    small = TextSplit(small.train.iloc[::2], small.val, small.test.iloc[:0])      # 84 training texts, no test part
    out = train_sentiment(small, SentimentConfig(max_seq_len=32, num_epochs=1, batch_size=16, learning_rate=5e-5, seed=0), checkpoint_root=tmp_path, progress=False)
    moved = out.model.adapter.module.model.bert.state_dict()[key.removeprefix("bert.")]
    assert not torch.equal(moved, pre[key]) and np.isfinite(out.history[0]["loss"])
    assert "test_accuracy" not in out.metrics and "val_accuracy" in out.metrics


def test_mixed_precision_accumulation_and_same_seed(tiny, sample, tmp_path):
    cfg = tiny_cfg(tiny, mixed_precision=True, gradient_accumulation_steps=2, num_epochs=1)
    a = train_sentiment(sample, cfg, checkpoint_root=tmp_path / "a", progress=False)
    b = train_sentiment(sample, cfg, checkpoint_root=tmp_path / "b", progress=False)
    assert a.result.precision == plan_precision("cpu", True, warn=False).name and a.history[0]["batches"] == 6   # 168 texts / 16 per batch = 11 batches, 2 per step
    assert a.history[0]["loss"] == b.history[0]["loss"] and a.metrics["val_loss"] == b.metrics["val_loss"]
    c = train_sentiment(sample, tiny_cfg(tiny, mixed_precision=True, gradient_accumulation_steps=2, num_epochs=1, seed=1), checkpoint_root=tmp_path / "c", progress=False)
    assert c.history[0]["loss"] != a.history[0]["loss"]


def test_resume_after_interruption_equals_uninterrupted(tiny, sample, tmp_path):
    cfg = tiny_cfg(tiny, num_epochs=3, early_stopping_patience=10)
    full = train_sentiment(sample, cfg, run_id="full", checkpoint_root=tmp_path, progress=False)
    class Boom(Exception): pass
    def die(u):
        if u.current_epoch == 1: raise Boom()
    with pytest.raises(Boom): train_sentiment(sample, cfg, run_id="cut", checkpoint_root=tmp_path, callbacks=[die], progress=False)
    assert load_checkpoint(tmp_path / "cut")["epoch"] == 1
    res = train_sentiment(sample, cfg, run_id="cut", checkpoint_root=tmp_path, resume_from=tmp_path / "cut", progress=False)
    assert [h["loss"] for h in res.history] == [h["loss"] for h in full.history]
    for k, v in full.model.adapter.module.state_dict().items(): assert torch.equal(v, res.model.adapter.module.state_dict()[k])
    with pytest.raises(CheckpointError, match=r"labels \(checkpoint \['negative', 'neutral', 'positive'\], this run \['neutral', 'negative', 'positive'\]\)"):
        train_sentiment(sample, tiny_cfg(tiny, num_epochs=3, early_stopping_patience=10, labels=["neutral", "negative", "positive"]),
                        run_id="other", checkpoint_root=tmp_path, resume_from=tmp_path / "cut", progress=False)


def test_checkpoints_and_saved_models_load_weights_only(minilm, tmp_path):
    model = minilm.model
    texts = ["Net profit doubled.", "The plant will close and 300 jobs go.", "The meeting is on Friday."]
    pt = model.adapter.save(tmp_path / "m.pt")
    raw = torch.load(pt, weights_only=True)
    assert raw["model_type"] == "text_classifier" and raw["config"]["labels"] == ["negative", "neutral", "positive"]
    np.testing.assert_allclose(SentimentAdapter.load(pt).predict(texts), model.adapter.predict(texts), atol=1e-6)
    folder = model.save(tmp_path / "saved")
    again = TrainedSentimentModel.load(folder)
    pd.testing.assert_frame_equal(predict_sentiment(texts, folder), model.predict(texts), atol=1e-5)
    assert again.metrics == pytest.approx(model.metrics) and again.config.freeze_encoder
    with pytest.raises(ModelError, match="not a saved sentiment model"):
        TrainedSentimentModel.load(bundled_encoder_path())


# --- export -------------------------------------------------------------------------------------------------------

def test_onnx_export_parity_tokenizer_and_triton(minilm, sample, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
    import onnx
    model, out = minilm.model, tmp_path / "export"
    meta = export_sentiment(model, out, name="finsight_sentiment", max_batch_size=64)
    assert meta["max_rel_err"] <= 1e-4 and meta["checked_texts"] == 36
    g = onnx.load(str(out / "model.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input}
    assert all(isinstance(d, str) and d for v in dims.values() for d in v) and set(dims) == {"input_ids", "attention_mask"}   # batch and sequence are dynamic
    onnx_model = OnnxSentimentModel(out)
    texts = sample.text.tolist()[:64]
    for batch in (texts[:1], texts):                                    # batch 1 and 64, sequences of their own lengths
        ref, got = model.adapter.logits(batch), onnx_model.logits(batch, batch_size=len(batch))
        assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4
    e = onnx_model.tokenizer(texts[:5], padding="max_length", max_length=40, return_tensors="np")    # a sequence length never traced
    got = onnx_model.session.run(["logits"], {"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]})[0]
    with torch.no_grad(): ref = model.adapter.module.eval()(torch.from_numpy(e["input_ids"]), torch.from_numpy(e["attention_mask"])).numpy()
    assert got.shape == (5, 3) and np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4
    assert onnx_model.tokenizer(texts)["input_ids"] == model.adapter.tokenizer(texts)["input_ids"]     # the saved tokenizer is the model's
    cfg = text_format.Parse((out / "triton" / "finsight_sentiment" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (cfg.name, cfg.platform, cfg.backend, cfg.max_batch_size) == ("finsight_sentiment", "onnxruntime_onnx", "onnxruntime", 64)
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input] == [("input_ids", "TYPE_INT64", [-1]), ("attention_mask", "TYPE_INT64", [-1])]
    assert [(o.name, model_config_pb2.DataType.Name(o.data_type), list(o.dims), o.label_filename) for o in cfg.output] == [("logits", "TYPE_FP32", [3], "labels.txt")]
    assert (out / "triton" / "finsight_sentiment" / "labels.txt").read_text().split() == ["negative", "neutral", "positive"]
    assert (out / "triton" / "finsight_sentiment" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert predict_sentiment(texts, out).label.tolist() == model.predict(texts).label.tolist()


def test_export_refuses_to_overwrite_bad_names_and_a_model_that_does_not_match(tiny, sample, tmp_path):
    model = TrainedSentimentModel(SentimentAdapter(tiny_cfg(tiny)))
    (tmp_path / "taken").mkdir(); (tmp_path / "taken" / "keep.txt").write_text("mine")
    for overwrite in (False, True):   # a folder of other files is never replaced, even with overwrite=True
        with pytest.raises(ExportError, match="holds files that are not a FinSight sentiment export"):
            export_sentiment(model, tmp_path / "taken", texts=sample.text[:8], overwrite=overwrite)
    with pytest.raises(ExportError, match="name='my model' is invalid"):
        export_sentiment(model, tmp_path / "new", name="my model", texts=sample.text[:8])
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine" and not (tmp_path / "new").exists()
    meta = export_sentiment(model, tmp_path / "ok", texts=sample.text[:8])
    assert meta["max_rel_err"] <= 1e-4 and meta["checked_texts"] == 8 and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with torch.no_grad(): model.adapter.module.model.classifier.bias += 0.5     # the torch model moves on: the export no longer matches it
    with pytest.raises(ExportValidationError, match=r"ONNX logits differ from torch on batch_1: max abs error 0.5"):
        _check_parity(model.adapter, tmp_path / "ok", sample.text[:8].tolist(), 1e-4)


# --- the template -------------------------------------------------------------------------------------------------

def test_template_runs_as_a_papermill_job(tiny, tmp_path, monkeypatch):
    import papermill as pm
    monkeypatch.setenv("FINSIGHT_RUNS_DIR", str(tmp_path))                   # the kernel writes under this runs folder only
    out, metrics = tmp_path / "job", tmp_path / "result.json"
    pm.execute_notebook(str(ROOT / "nbs" / "templates" / "train_sentiment.ipynb"), str(tmp_path / "executed.ipynb"), kernel_name="python3",
                        parameters={"model_path": str(tiny), "config": {"num_epochs": 1, "max_seq_len": 32, "batch_size": 32, "learning_rate": 1e-3},
                                    "output_dir": str(out), "metrics_path": str(metrics), "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                        progress_bar=False, cwd=str(ROOT / "nbs" / "templates"))
    m = json.loads(metrics.read_text())
    assert m["task"] == "sentiment" and m["test_examples"] == 36 and m["exports"] == {"onnx": True, "triton": True}
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(m["mlflow_run_id"])                                     # the template tracked its run
    assert run.data.metrics["test_accuracy"] == pytest.approx(m["test_accuracy"]) and "exports" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"test_accuracy", "test_majority_accuracy", "val_macro_f1", "val_majority_macro_f1", "epochs"} <= set(m)
    for f in ("metrics.json", "history.json", "confusion_test.png", "training_curve.png", "model/finsight.json", "export/model.onnx",
              "export/triton/sentiment/config.pbtxt", "checkpoints/financial_sentences_sentiment/epoch_001.pt"):
        assert (out / f).is_file(), f
    assert not (out / "metrics.json").read_text() == metrics.read_text()      # run files beside the job's summary
