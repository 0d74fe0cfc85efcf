"""The shape of the code: floors that only point down, methods inside their classes (or under @patch), no notebook too
long, most export cells checked right below, and dispatchers that ask the task registry instead of naming tasks."""
import ast, json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG, NBS = ROOT / "finsight", ROOT / "nbs"
MODULES = {p: ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in PKG.rglob("*.py") if p.name != "_modidx.py"}
NOTEBOOK = re.compile(r"File to edit: (?:\.\./)+nbs/(.+?\.ipynb)")


def _notebook(path: Path) -> str | None:
    "The notebook a module is exported from (None for hand-written package files)."
    m = NOTEBOOK.search(path.read_text()[:2000])
    return m.group(1) if m else None


def _imports(path: Path, name: str) -> list[tuple[str, int, bool]]:
    "(imported finsight module, line, at module level) for every import of a finsight module in `path`."
    tree, out = ast.parse(path.read_text()), []
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            base = node.module if node.level == 0 else ".".join(name.split(".")[: -node.level] + [node.module])
            if base.split(".")[0] != "finsight": continue
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full if full in MODULES.values() else base, node.lineno, id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names if a.name.split(".")[0] == "finsight"]
    return out


def test_every_module_comes_from_a_notebook():
    assert {p.name for p, n in MODULES.items() if _notebook(p) is None} <= {"__init__.py"}


@pytest.mark.parametrize("path", sorted(p for p in MODULES if _notebook(p)), ids=lambda p: MODULES[p])
def test_floors_point_down(path):
    "A module imports only modules exported from earlier notebooks (their numbers sort first), and only at the top."
    mine = _notebook(path); by_name = {n: _notebook(p) for p, n in MODULES.items()}
    for mod, line, at_top in _imports(path, MODULES[path]):
        if mod == "finsight": continue          # the package itself (its __file__, its version)
        theirs = by_name.get(mod)
        assert theirs is not None, f"{MODULES[path]}:{line} imports {mod}, which is not a finsight module"
        assert theirs < mine, f"{MODULES[path]} ({mine}) imports {mod} ({theirs}) at line {line}: a later floor"
        assert at_top, f"{MODULES[path]}:{line} imports {mod} inside a function: imports of the package go at the top"


def test_no_methods_attached_by_assignment():
    "Methods live in their class body or under fastcore's @patch with their own names; never `Cls.a, Cls.b = _x, _y`."
    pat = re.compile(r"^[A-Z]\w*\.\w+(\s*,\s*[A-Z]\w*\.\w+)*\s*=\s*\S", re.M)
    bad = [f"{MODULES[p]}: {m.group(0)}" for p in MODULES for m in pat.finditer(p.read_text())]
    assert not bad, bad


def _cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text())["cells"]


def _directives(cell: dict) -> list[str]:
    return [l.strip() for l in "".join(cell["source"]).splitlines() if l.strip().startswith("#|")]


def _is_export(cell: dict) -> bool:
    return cell["cell_type"] == "code" and any(d.startswith("#| export") for d in _directives(cell))


def _exported_lines(nb: Path) -> int:
    return sum(1 for c in _cells(nb) if _is_export(c) for l in "".join(c["source"]).splitlines() if l.strip() and not l.strip().startswith("#|"))


@pytest.mark.parametrize("nb", sorted(NBS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_no_notebook_past_500_exported_lines(nb):
    assert _exported_lines(nb) <= 500, f"{nb.name} exports {_exported_lines(nb)} lines: split it by floor"


def test_most_export_cells_are_checked_right_below():
    "At least 80% of export cells (past each notebook's imports cell) are followed by a code cell that shows or checks them."
    total = checked = 0
    for nb in sorted(NBS.glob("*.ipynb")):
        cells, first = _cells(nb), True
        for i, c in enumerate(cells):
            if not _is_export(c): continue
            if first: first = False; continue
            nxt = next((n for n in cells[i + 1:] if n["cell_type"] == "code"), None)
            total += 1
            checked += nxt is not None and not _is_export(nxt) and "#| eval: false" not in _directives(nxt)
    assert checked / total >= 0.8, f"{checked} of {total} export cells are checked right below ({checked / total:.0%})"


@pytest.mark.parametrize("module", ["finsight.jobs", "finsight.job_store", "finsight.runner", "finsight.batch", "finsight.tracking",
                                    "finsight.tracking_sync", "finsight.registry", "finsight.cli"])
def test_dispatchers_never_name_a_task(module):
    "Above the tasks floor (and in tracking below it) code asks the registry; it never compares a value with a task's name."
    src = next(p for p, n in MODULES.items() if n == module).read_text()
    hits = re.findall(r"""(?:==|!=|\bin)\s*\(?\s*["'](?:forecast|sentiment|text_classifier)["']|["'](?:forecast|sentiment)["']\s*(?:==|!=)""", src)
    assert not hits, f"{module} compares with a task name: {hits}"


def test_every_notebook_is_in_the_index():
    index = "".join("".join(c["source"]) for c in _cells(NBS / "index.ipynb"))
    missing = [nb.stem for nb in NBS.glob("*.ipynb") if nb.stem != "index" and nb.stem not in index]
    missing += [f"templates/{nb.stem}" for nb in (NBS / "templates").glob("*.ipynb") if f"templates/{nb.stem}" not in index]
    assert not missing, f"nbs/index.ipynb does not list {missing}"


@pytest.mark.parametrize("tpl", sorted((NBS / "templates").glob("*.ipynb")), ids=lambda p: p.name)
def test_papermill_reads_every_template_parameter(tpl, caplog):
    "papermill infers each name the parameters cell assigns, without 'Unable to parse' warnings (an '=' in a comment breaks it)."
    import papermill as pm
    from finsight.runner import declared_parameters, load_template
    with caplog.at_level("WARNING", logger="papermill"):
        inferred = set(pm.inspect_notebook(str(tpl)))
    assert not [r.getMessage() for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert inferred == declared_parameters(load_template(tpl))
