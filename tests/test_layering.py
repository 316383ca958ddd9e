"""The package layering: imports follow the data flow, and files hold one thing.

Every import between speechkd's packages (module level and inside functions) goes from a later layer to an
earlier one, never sideways within a layer nor back: the distillation library does not sit on the training
loop, training does not import evaluation, models do not know about quantization, evaluation does not read
export sidecars. A new import that breaks the order fails here, naming the file and the import.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "speechkd"

# earlier layers first; a package may import only packages of earlier layers
LAYERS = [
    {"utils"},
    {"config"},
    {"text", "features", "kernels"},
    {"lm"},
    {"data"},
    {"models", "runtime"},
    {"train"},
    {"distill", "quant"},
    {"export", "eval"},
    {"stages"},
    {"cli"},
]
RANK = {p: i for i, layer in enumerate(LAYERS) for p in layer}
MAX_LINES = 450


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return rel.parts[0]


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "speechkd" \
                and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "speechkd":
                    yield node.lineno, a.name


def _sources():
    return sorted(p for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT)


def test_every_package_has_a_layer():
    packages = {_package(p) for p in _sources()}
    assert packages <= set(RANK), f"packages without a layer: {sorted(packages - set(RANK))}"


def test_imports_follow_the_data_flow():
    bad = []
    for path in _sources():
        src = _package(path)
        for line, mod in _imports(path):
            parts = mod.split(".")
            if len(parts) < 2:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: imports the top-level package")
                continue
            dst = parts[1]
            if dst != src and RANK[dst] >= RANK[src]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {src} imports {mod} ({dst} is not an earlier "
                           "layer)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("src,dst", [("distill", "train.trainer"), ("train", "eval"), ("models", "quant"),
                                     ("eval", "export")])
def test_the_named_directions_are_forbidden(src, dst):
    """The four the layering exists for, stated explicitly (the table above implies them)."""
    for path in (ROOT / src).rglob("*.py"):
        for line, mod in _imports(path):
            assert not (mod == f"speechkd.{dst}" or mod.startswith(f"speechkd.{dst}.")), \
                f"{path}:{line} imports {mod}"


def test_the_checker_catches_a_backward_import(tmp_path):
    """The check is real: a file in models importing quant is reported."""
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from speechkd.quant.fake import bake\n")
    assert list(_imports(p)) == [(2, "speechkd.quant.fake")]
    assert RANK["quant"] >= RANK["models"]


def test_no_file_is_over_the_line_limit():
    long = {str(p.relative_to(ROOT.parent)): n for p in _sources()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them along what they do): {long}"
