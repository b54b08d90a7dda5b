"""Contract coverage: every name, argument, default and attribute a lab's stub declares is mapped, in the lab's
checker (`CONTRACT`), to the checks that observe it. An item the stub declares and no check observes fails here, and
so does a table that names a check the lab does not have.

The items are read from the stub (labs/<module>.py), the contract as students get it:
- `name` for each public top-level function, class and module-level value (the demo `main` excepted);
- `name(arg)` for each of a function's parameters, `C(arg)` for a class's constructor, `C.method(arg)` for a
  method's; `...(arg=)` besides, for a parameter with a default: the default itself must be exercised as a default;
- `C.method` for each public method and property;
- `C.attr` for each attribute the solution's constructor sets on `self` that the stub's contract names (as a word).
A table may hold more keys (a sentence of the contract, `"sentence: ..."`), each mapped to checks too.
"""
import ast
import importlib
import re

import pytest

from pack.labs import REGISTRY
from parent.verdict import expected_checks
from tests.helpers import ROOT

NOT_CONTRACT = {"main"}  # the stub's demo, run by `python labs/<file>`


def _params(fn, skip_self):
    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    defaults = [None] * (len(fn.args.posonlyargs + fn.args.args) - len(fn.args.defaults)) + list(fn.args.defaults)
    defaults += list(fn.args.kw_defaults)
    pairs = list(zip(args, defaults))
    return pairs[1:] if skip_self else pairs


def contract_items(module: str) -> set:
    stub = (ROOT / "labs" / f"{module}.py").read_text()
    tree = ast.parse(stub)
    doc = ast.get_docstring(tree) or ""
    solution = ast.parse((ROOT / "solutions" / f"{module}.py").read_text())
    items = set()

    def function(label, fn, skip_self):
        for arg, default in _params(fn, skip_self):
            items.add(f"{label}({arg.arg})")
            if default is not None:
                items.add(f"{label}({arg.arg}=)")

    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and node.name not in NOT_CONTRACT:
            items.add(node.name)
            function(node.name, node, skip_self=False)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            items.add(node.name)
            for m in node.body:
                if isinstance(m, ast.FunctionDef) and m.name == "__init__":
                    function(node.name, m, skip_self=True)
                elif isinstance(m, ast.FunctionDef) and not m.name.startswith("_"):
                    items.add(f"{node.name}.{m.name}")
                    function(f"{node.name}.{m.name}", m, skip_self=True)
            for cls in (c for c in solution.body if isinstance(c, ast.ClassDef) and c.name == node.name):
                for init in (m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == "__init__"):
                    for a in ast.walk(init):
                        if isinstance(a, ast.Attribute) and isinstance(a.ctx, ast.Store) and \
                                isinstance(a.value, ast.Name) and a.value.id == "self" and \
                                not a.attr.startswith("_") and re.search(rf"\b{a.attr}\b", doc):
                            items.add(f"{node.name}.{a.attr}")
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and not t.id.startswith("_") and t.id in doc:
                    items.add(t.id)
    return items


def table(lab) -> dict:
    return importlib.import_module(f"checkers.check_{lab.name}").CONTRACT


@pytest.mark.parametrize("lab", REGISTRY, ids=[lab.name for lab in REGISTRY])
def test_every_contract_item_is_observed(lab):
    unmapped = contract_items(lab.module) - set(table(lab))
    assert not unmapped, f"{lab.name}: contract items no check observes: {sorted(unmapped)}"


@pytest.mark.parametrize("lab", REGISTRY, ids=[lab.name for lab in REGISTRY])
def test_the_table_names_real_checks(lab):
    checks = {c.name for c in expected_checks(lab.name)}
    for item, names in table(lab).items():
        assert names and not isinstance(names, str), f"{lab.name}: {item!r} maps to no check"
        assert set(names) <= checks, f"{lab.name}: {item!r} names checks the lab lacks: {set(names) - checks}"


def test_an_item_the_stub_adds_is_reported(tmp_path, monkeypatch):
    """Control: a parameter added to the stub and absent from the table is found unmapped."""
    import tests.test_contract as me
    fake = tmp_path / "labs"
    fake.mkdir()
    (tmp_path / "solutions").mkdir()
    for folder in ("labs", "solutions"):
        text = (ROOT / folder / "lab1_attention.py").read_text()
        text = text.replace("def causal_mask(T: int", "def causal_mask(T: int, diagonal: int = 0", 1)
        (tmp_path / folder / "lab1_attention.py").write_text(text)
    monkeypatch.setattr(me, "ROOT", tmp_path)
    items = contract_items("lab1_attention")
    assert {"causal_mask(diagonal)", "causal_mask(diagonal=)"} <= items
    assert {"causal_mask(diagonal)", "causal_mask(diagonal=)"} - set(table(REGISTRY[0]))
