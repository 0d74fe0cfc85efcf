"""Shared by the benchmark scripts: print a table and put it into docs/benchmarks.md under its own heading."""
from __future__ import annotations
import os, platform, re, sys
from datetime import datetime, timezone
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    "One line naming the machine a table was measured on."
    import psutil
    try:
        import torch; tv = f", torch {torch.__version__}, {torch.get_num_threads()} threads"
    except Exception: tv = ""
    return f"{cpu_model()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, python {platform.python_version()}{tv}"


def cpu_model() -> str:
    "The CPU's model name and the vector capability torch uses on it (AVX2, AVX512, ...): numbers differ between them."
    name = platform.processor() or platform.machine()
    try: name = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration): pass
    try:
        import torch; name += f" ({torch.backends.cpu.get_cpu_capability()}"
        name += ", bf16 units)" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else ", no bf16 units)"
    except Exception: pass
    return name


def table(rows: list[dict], floatfmt: str = "{:.3g}") -> str:
    "A markdown table from a list of dicts (keys of the first row are the columns)."
    cols = list(rows[0])
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
