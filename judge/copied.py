"""The copy rule: a lab that reproduces code the pack ships beside student code is refused as copied from the pack.

The pack's code that runs beside a student's (the stand-ins, worker/standins/*.py, and the judge's oracles,
judge/oracles.py) is read once. Each of its functions, each method, and each class (its methods together) becomes a
sequence of tokens from its syntax tree, normalised so that what a copy can change for free does not count:

- every name the file itself binds (parameters, locals, functions, classes, the attributes it assigns, keyword
  names that are its own parameters) becomes a placeholder numbered by first use inside the unit: renaming any of
  them changes nothing;
- what the code reaches in torch, math and the other modules it imports is written out by where it comes from
  (`F.silu`, `torch.nn.functional.silu` and `G.silu` after `import torch.nn.functional as G` are one token),
  and attribute names that belong to torch, math or Python's types (tensor methods: `.unflatten`, `.to`; `.encode`),
  whatever else the file binds, Python's built-ins and the constants are kept: they carry the algorithm, and a unit
  reads the same in the file it was pasted into;
- docstrings, comments, annotations and layout are not in the tree or are dropped; top-level definitions are units
  on their own, so their order does not count, and a class is the set of its methods' fingerprints.

A unit's fingerprints are the hashes of its K-token windows (K below). A submitted unit copies a pack unit when its
windows hold at least THRESHOLD of the pack unit's fingerprints; only pack units with at least MIN_FINGERPRINTS
distinct fingerprints are compared, and none that a reference solution (solutions/) shares SOLUTION_SHARE of its
fingerprints with (that unit is written the way a student writes it), so a lab that is the reference solution,
or close to it, is never refused. Constructors (`__init__`) are not units: they are the contract's names and shapes. tests/test_copied.py measures how close the
solutions, the correct variants and the legal styles come and holds the margin.
"""
import ast
import builtins
import hashlib
import math
from functools import lru_cache
from pathlib import Path

K = 10  # tokens per window
THRESHOLD = 0.8  # share of a pack unit's fingerprints a submitted unit must hold to be a copy
MIN_FINGERPRINTS = 40  # pack units smaller than this are too common to tell a copy from independent work
SOLUTION_SHARE = 0.5  # a pack unit a reference solution shares this much with is how a student writes it: not compared

ROOT = Path(__file__).resolve().parent.parent
PACK_FILES = tuple(sorted(str(p.relative_to(ROOT)) for p in (ROOT / "worker" / "standins").glob("lab*.py"))) + (
    "judge/oracles.py",)
SOLUTIONS = ROOT / "solutions"
BUILTIN_NAMES = set(dir(builtins))


@lru_cache(maxsize=None)
def _api_attrs() -> frozenset:
    """Attribute names that belong to torch, math or Python's types, not to the file: kept as written."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    names = set()
    for obj in (torch, torch.Tensor, nn, nn.Module, F, math, str, list, dict, tuple, set, int, float):
        names |= set(dir(obj))
    return frozenset(names)


def _imports(tree) -> dict:
    """name -> the dotted path it is bound to by the file's imports."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    found[a.asname] = a.name
                else:
                    found[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            for a in node.names:
                if a.name != "*":
                    found[a.asname or a.name] = f"{node.module}.{a.name}"
    return found


def _own_names(tree, imports) -> set:
    """The names the file binds itself (beyond its imports): parameters, locals, defs, classes, assigned attributes."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.arg):
            own.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            own.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
    return own - set(imports)


class _Unit:
    """Tokens of one function (or method), placeholders numbered by first use."""

    def __init__(self, imports, own):
        self.imports, self.own, self.seen, self.tokens = imports, own, {}, []

    def place(self, name):
        if name not in self.seen:
            self.seen[name] = f"${len(self.seen)}"
        return self.seen[name]

    def dotted(self, node):
        """`F.silu` -> 'torch.nn.functional.silu' when the chain starts at an imported name; else None."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.imports and node.id not in self.own:
            return ".".join([self.imports[node.id]] + parts[::-1])
        return None

    def emit(self, node):
        if isinstance(node, (ast.expr_context, ast.Pass)):
            return
        if isinstance(node, ast.Attribute):
            dotted = self.dotted(node)
            if dotted is not None:
                self.tokens.append(dotted)
                return
            self.tokens.append("Attribute")
            self.emit(node.value)
            # torch's, math's and Python's own attribute names are kept whoever else binds them, so that a unit
            # reads the same in any file (`tokenizer.encode` is str's name even where the file defines `encode`)
            api = node.attr in _api_attrs()
            self.tokens.append("." + node.attr if api else self.place("." + node.attr))
            return
        if isinstance(node, ast.Name):
            if node.id in self.imports and node.id not in self.own:
                self.tokens.append(self.imports[node.id])
            elif node.id in BUILTIN_NAMES and node.id not in self.own:
                self.tokens.append(node.id)
            else:
                self.tokens.append(self.place(node.id))
            return
        if isinstance(node, ast.Constant):
            self.tokens.append("C" + repr(node.value)[:24])
            return
        self.tokens.append(type(node).__name__)
        if isinstance(node, ast.arg):
            self.tokens.append(self.place(node.arg))
            return
        if isinstance(node, ast.keyword):
            if node.arg is not None:
                self.tokens.append(self.place(node.arg) if node.arg in self.own else "=" + node.arg)
            self.emit(node.value)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.tokens.append(self.place(node.name))
        if isinstance(node, ast.AnnAssign):  # an annotated assignment is the assignment
            for child in (node.target, node.value):
                if child is not None:
                    self.emit(child)
            return
        body = getattr(node, "body", None)
        for field, value in ast.iter_fields(node):
            if field in ("returns", "annotation", "type_comment", "type_params") or value is None:
                continue
            if field == "body" and isinstance(body, list) and _docstring(body):
                value = body[1:]
            for child in (value if isinstance(value, list) else [value]):
                if isinstance(child, ast.AST):
                    self.emit(child)


def _docstring(body) -> bool:
    return bool(body) and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        and isinstance(body[0].value.value, str)


def _hashes(tokens) -> frozenset:
    windows = (" ".join(tokens[i:i + K]) for i in range(max(len(tokens) - K + 1, 0)))
    return frozenset(int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "big") for w in windows)


def units(source, filename="<lab>") -> list:
    """[(label, line, fingerprints)] for every function, method and class in the source."""
    tree = ast.parse(source, filename)
    imports = _imports(tree)
    own = _own_names(tree, imports)
    found = []

    def function(node):
        unit = _Unit(imports, own)
        unit.emit(node)
        return _hashes(unit.tokens)

    def walk(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                label = prefix + node.name
                if node.name != "__init__":  # a constructor is the contract (names, shapes): every lab writes it alike
                    found.append((label, node.lineno, function(node)))
                walk(node.body, label + ".")
            elif isinstance(node, ast.ClassDef):
                label = prefix + node.name
                methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                           and n.name != "__init__"]
                walk(node.body, label + ".")
                if len(methods) > 1:  # one method: the class is that method's unit
                    prints = frozenset().union(*(f for lbl, _, f in found if lbl.startswith(label + ".")
                                                 and lbl.count(".") == label.count(".") + 1))
                    found.append((label, node.lineno, prints))
            elif isinstance(node, (ast.If, ast.With, ast.Try)) and not _main_guard(node):
                walk(getattr(node, "body", []) + getattr(node, "orelse", []), prefix)
    walk(tree.body, "")
    return found


def _main_guard(node) -> bool:
    t = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) \
        and t.left.id == "__name__"


def coverage(pack_prints, sub_prints) -> float:
    return len(pack_prints & sub_prints) / len(pack_prints) if pack_prints else 0.0


@lru_cache(maxsize=None)
def pack_units() -> tuple:
    """Every unit of the pack's code that runs beside student code, with its size: (file, label, fingerprints)."""
    found = []
    for name in PACK_FILES:
        path = ROOT / name
        try:
            source = path.read_text()
        except OSError:
            continue  # a held-back file absent from this copy
        found += [(name, label, prints) for label, _, prints in units(source, name)]
    return tuple(found)


@lru_cache(maxsize=None)
def _solution_units() -> tuple:
    found = []
    for path in sorted(SOLUTIONS.glob("lab*.py")):
        found += [prints for _, _, prints in units(path.read_text(), path.name)]
    return tuple(found)


def best_match(pack_prints, subs) -> float:
    return max((coverage(pack_prints, s) for s in subs), default=0.0)


@lru_cache(maxsize=None)
def fingerprinted() -> tuple:
    """The pack units compared against: large enough, and not reproduced by a reference solution."""
    solutions = _solution_units()
    return tuple((f, label, prints) for f, label, prints in pack_units()
                 if len(prints) >= MIN_FINGERPRINTS and best_match(prints, solutions) < SOLUTION_SHARE)


def copied(source, filename="<lab>") -> list:
    """[(line, what)] for each submitted unit that copies a fingerprinted pack unit; [] when it does not parse."""
    try:
        submitted = units(source, filename)
    except (SyntaxError, ValueError, RecursionError):
        return []  # MemoryError goes up: the scan refuses the file (static.scan_source)
    hits = []
    for label, line, prints in submitted:
        for f, pack_label, pack_prints in fingerprinted():
            if coverage(pack_prints, prints) >= THRESHOLD:
                hits.append((line, f"`{label}` is copied from the pack's {pack_label} ({f}): the code that runs "
                                   "beside yours is not an answer; write the lab yourself"))
                break
    return hits
