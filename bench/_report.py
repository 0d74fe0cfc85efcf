"""Shared by the benchmark scripts: print a table and put it into docs/benchmarks.md under its own heading."""
from __future__ import annotations
import os, platform, re, sys
from datetime import datetime, timezone
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    "One line naming the hardware a table was measured on: CPU model, its vector capability and bf16 support, cores, memory, GPUs, versions (what `finsight info` shows)."
    from finsight.hardware import describe_machine
    return describe_machine()


def table(rows: list[dict], floatfmt: str = "{:.3g}") -> str:
    "A markdown table from a list of dicts (the keys of all rows, in order of appearance, are the columns)."
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: floatfmt.format(v) if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, command: str) -> None:
    "Print `body` and replace (or append) the section `name` of docs/benchmarks.md."
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"## {name}\n\n`{command}` on {machine()}, {stamp}.\n\n{body}\n"
    print(text)
    DOC.parent.mkdir(exist_ok=True)
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nEach section is written by the script named in it; rerun the script to refresh it.\n\n"
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{text}{end}"
    doc = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda m: block, doc, flags=re.S) if start in doc else doc.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(doc)


def timings(call, inputs: list, seconds: float, min_calls: int = 20, warmup: int = 5):
    "Seconds of each call of `call` over `inputs` (cycled), after `warmup` calls, for at least `seconds` and `min_calls` (a numpy array)."
    import time
    import numpy as np
    for i in range(warmup): call(inputs[i % len(inputs)])
    out, t_end, i = [], time.perf_counter() + seconds, 0
    while time.perf_counter() < t_end or len(out) < min_calls:
        x = inputs[i % len(inputs)]; t = time.perf_counter(); call(x); out.append(time.perf_counter() - t); i += 1
    return np.array(out)
