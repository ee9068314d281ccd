"""Loading files never executes code: every torch.load passes weights_only=True, nothing unpickles."""

from __future__ import annotations

import ast

from conftest import ROOT

# the project's own files: not what runs leave in hidden folders (e.g. benchmarks/.cache/*/.snakemake/scripts,
# Snakemake's copies of the workflow scripts with its own preamble)
SOURCES = [p for folder in ("src", "workflow_scripts", "benchmarks", "tests") for p in sorted((ROOT / folder).rglob("*.py"))
           if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]


def _calls(name: str, attr: str):
    """(file, call node) of every `name.attr(...)` call in the project's Python sources."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr == attr \
                    and isinstance(func.value, ast.Name) and func.value.id == name:
                yield path, node


def test_every_torch_load_passes_weights_only_true():
    loads = list(_calls("torch", "load"))
    assert len(loads) >= 2  # the model weights and the ClaDec reconstructors
    for path, node in loads:
        flag = {k.arg: k.value for k in node.keywords}.get("weights_only")
        assert isinstance(flag, ast.Constant) and flag.value is True, f"{path.relative_to(ROOT)}:{node.lineno}: torch.load without weights_only=True"


def test_nothing_unpickles_or_loads_object_arrays():
    assert not list(_calls("pickle", "load")) and not list(_calls("pickle", "loads"))
    for path, node in _calls("np", "load"):
        flag = {k.arg: k.value for k in node.keywords}.get("allow_pickle")
        assert flag is None or (isinstance(flag, ast.Constant) and flag.value is False), f"{path.relative_to(ROOT)}:{node.lineno}: np.load(allow_pickle=True)"
