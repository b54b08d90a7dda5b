"""Mutation testing the pack runs on itself: generated one-edit mutants of solutions/, graded, survivors listed.

    python tools/mutate.py                     # every mutant of every lab
    python tools/mutate.py lab1 lab5 --list    # print the mutants, grade nothing
    python tools/mutate.py --sample 6          # a fixed sample per lab (what CI runs)
    python tools/mutate.py --json PATH         # also write each mutant's outcome
    python tools/mutate.py --sample 6 --twice  # grade twice, under two hash seeds, and compare the verdicts

Only the code a student writes is mutated: the regions between `# BEGIN SOLUTION` and `# END SOLUTION`. Each mutant
is one edit of one node there, made in the source text (the rest of the file is untouched):

- an arithmetic operator swapped (+ -, * /, @ *, ** *), an operand dropped (`a + b` -> `a`, `b`);
- a comparison flipped (< <=, > >=, == !=) or an `is`/`in` negated; `not x` / `~x` / `-x` -> `x`;
- a number changed (0 <-> 1, -1 -> -2, n -> n + 1, a float doubled), True <-> False, "-inf" -> "inf";
- a keyword argument dropped from a call, two positional arguments of a call swapped (not `transpose`'s two
  dimensions nor the built-in `min`'s and `max`'s arguments, which mean the same either way);
- a name swapped for a sibling one character apart, among the function's own names or the class's attributes
  (`q` `k` `v`, `B` `T` `D`, `self.w1` `self.w3`, `self.norm1` `self.norm2`; upper case with upper case;
  not a name read for its `.device`: the contract puts every tensor of a call on one device);
- a statement replaced by `pass` (an assignment, an augmented assignment, an expression statement).

A mutant is killed when its lab does not pass with full marks (a failed check, an error, a refusal, a timeout).
Every mutant is graded in one preloaded grader (the zygote, as `--watch` uses), each lab on the pack's stand-ins.
The survivors that are equivalent to the solution are reviewed in tools/equivalent_mutants.py, each with its
reason; every other survivor is a gap in the checks. The exit status is 1 when a survivor is not on that list, or
with --twice when the two gradings (PYTHONHASHSEED 1 and 2, each a fresh process) differ in any mutant's status,
score or failed checks: a verdict must not depend on the order of a dict or a set.
"""
import argparse
import ast
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, tools/ is on sys.path but the repository root is not
    sys.path.insert(0, str(ROOT))

from pack.labs import FILES, REGISTRY  # noqa: E402

BEGIN = re.compile(r"^\s*# BEGIN SOLUTION\b")
END = re.compile(r"^\s*# END SOLUTION\b")
SWAP_OPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.MatMult: ast.Mult,
            ast.Pow: ast.Mult, ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv}
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
            ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}

SYMMETRIC = {"transpose", "swapaxes", "swapdims"}  # calls whose two arguments mean the same swapped: not mutated


@dataclass(frozen=True)
class Mutant:
    lab: str
    where: str  # the enclosing function ("MultiHeadAttention.forward")
    line: int
    op: str  # which operator made it
    old: str  # the source of the node as written
    new: str  # what replaces it
    source: str  # the whole mutated lab file
    nth: int = 0  # the same edit of the same text elsewhere in the same function: 1, 2, ...

    @property
    def id(self) -> str:
        """Stable across edits elsewhere in the file: the lab, the function, the operator and the two texts."""
        return f"{self.lab}:{self.where}:{self.op}:{_short(self.old)} -> {_short(self.new)}" + (
            f" #{self.nth + 1}" if self.nth else "")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


def solution_lines(source: str) -> set:
    """Line numbers inside the BEGIN/END SOLUTION regions."""
    inside, lines = False, set()
    for number, line in enumerate(source.splitlines(), 1):
        if BEGIN.match(line):
            inside = True
        elif END.match(line):
            inside = False
        elif inside:
            lines.add(number)
    return lines


def _offsets(source: str) -> list:
    starts, total = [], 0
    for line in source.splitlines(keepends=True):
        starts.append(total)
        total += len(line.encode())
    return starts


def _replace(source: str, node, text: str, starts: list) -> str:
    """The source with `node`'s span (by byte offsets, as ast gives them) replaced by `text`."""
    raw = source.encode()
    a = starts[node.lineno - 1] + node.col_offset
    b = starts[node.end_lineno - 1] + node.end_col_offset
    return (raw[:a] + text.encode() + raw[b:]).decode()


def _number(value):
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return {0: [1], 1: [0, 2], -1: [-2]}.get(value, [value + 1])
    if isinstance(value, float):
        return [0.0] if value in (1.0,) else [value * 2] if value else [1.0]
    return []


def _edits(node):
    """(operator, replacement node or text) for one node."""
    if isinstance(node, ast.BinOp):
        if type(node.op) in SWAP_OPS:
            yield "operator", ast.BinOp(node.left, SWAP_OPS[type(node.op)](), node.right)
        yield "drop right operand", node.left
        yield "drop left operand", node.right
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAP_CMP:
        yield "comparison", ast.Compare(node.left, [SWAP_CMP[type(node.ops[0])]()], node.comparators)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert, ast.USub)) \
            and not isinstance(node.operand, ast.Constant):
        yield "drop unary", node.operand
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, (int, float)):
            for value in _number(node.value):
                yield "constant", ast.Constant(value)
        elif node.value in ("-inf", "inf"):
            yield "constant", ast.Constant("inf" if node.value == "-inf" else "-inf")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and isinstance(node.operand.value, (int, float)) and not isinstance(node.operand.value, bool):
        for value in _number(-node.operand.value):
            yield "constant", ast.Constant(value)
    elif isinstance(node, ast.Call):
        for i, kw in enumerate(node.keywords):
            if kw.arg is not None:
                yield "drop keyword", ast.Call(node.func, node.args, node.keywords[:i] + node.keywords[i + 1:])
        symmetric = isinstance(node.func, ast.Attribute) and node.func.attr in SYMMETRIC or \
            isinstance(node.func, ast.Name) and node.func.id in ("min", "max")
        for i in range(0 if symmetric else len(node.args) - 1):
            a, b = node.args[i], node.args[i + 1]
            if not isinstance(a, ast.Starred) and not isinstance(b, ast.Starred) and ast.dump(a) != ast.dump(b):
                args = node.args[:i] + [b, a] + node.args[i + 2:]
                yield "swap arguments", ast.Call(node.func, args, node.keywords)


def _siblings(name: str, names) -> list:
    """The names one character apart from `name`, of its length (q k v, w1 w3, wq wk, norm1 norm2): the ones a slip
    of the keyboard or of attention swaps."""
    return sorted(n for n in names if len(n) == len(name) and n != name and "_" not in (n, name)
                  and sum(a != b for a, b in zip(n, name)) == 1 and n.isupper() == name.isupper())


def _bound(fn) -> set:
    """The names a function binds: its parameters and what it assigns (self excepted)."""
    names = {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}
    names |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names - {"self"}


def _name_edits(node, local: set, attrs: set):
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in local:
        for other in _siblings(node.id, local):
            yield "swap name", ast.Name(other, ast.Load())
    elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name) \
            and node.value.id == "self" and node.attr in attrs:
        for other in _siblings(node.attr, attrs):
            yield "swap name", ast.Attribute(node.value, other, ast.Load())


def _statement_edits(node):
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr)) and not (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):  # a docstring is not code
        yield "drop statement", "pass"


def mutants(lab: str, source: str = None) -> list:
    """Every one-edit mutant of `lab`'s solution that still parses, duplicates (same resulting file) once."""
    source = source if source is not None else (ROOT / "solutions" / FILES[lab]).read_text()
    tree = ast.parse(source)
    lines, starts, found, seen = solution_lines(source), _offsets(source), [], {source}

    attrs_of = {c.name: {n.attr for n in ast.walk(c) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                         and isinstance(n.value, ast.Name) and n.value.id == "self"}
                for c in ast.walk(tree) if isinstance(c, ast.ClassDef)}

    def visit(node, where, local=frozenset(), attrs=frozenset()):
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(child, ast.Constant):
                continue  # `-1` is one number, changed as such
            name, inner, own = where, local, attrs
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{where}.{child.name}" if where else child.name
            if isinstance(child, ast.ClassDef):
                own = attrs_of.get(child.name, frozenset())
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = frozenset(_bound(child))
            visit(child, name, inner, own)
            if getattr(child, "lineno", None) not in lines or getattr(child, "end_lineno", None) not in lines:
                continue
            device_only = isinstance(node, ast.Attribute) and node.attr == "device"  # one device per call
            edits = list(_edits(child)) + ([] if device_only else list(_name_edits(child, local, attrs))) + (
                list(_statement_edits(child)) if isinstance(child, ast.stmt) else [])
            for op, new in edits:
                text = new if isinstance(new, str) else ast.unparse(new)
                if isinstance(new, ast.AST) and isinstance(child, ast.expr) and not isinstance(new, (ast.Name, ast.Constant, ast.Call, ast.Attribute, ast.Subscript)):
                    text = f"({text})"  # an operator's precedence where it lands
                mutated = _replace(source, child, text, starts)
                try:
                    ast.parse(mutated)
                except SyntaxError:
                    continue
                if mutated in seen:
                    continue
                seen.add(mutated)
                found.append(Mutant(lab, where or "<module>", child.lineno, op, ast.get_source_segment(source, child),
                                    text, mutated))

    visit(tree, "")
    found.sort(key=lambda m: (m.line, m.id))
    count = {}
    for i, m in enumerate(found):
        key = (m.lab, m.where, m.op, m.old, m.new)
        if key in count:
            found[i] = Mutant(m.lab, m.where, m.line, m.op, m.old, m.new, m.source, nth=count[key])
        count[key] = count.get(key, 0) + 1
    return found


def sample(found: list, n: int, seed: int = 0) -> list:
    """A fixed sample of n mutants (the same on every run and machine)."""
    if n >= len(found):
        return found
    return sorted(random.Random(seed).sample(found, n), key=lambda m: (m.line, m.id))


def grade(found: list, timeout: float = 30, memory: float = 4, jobs: int = 2, progress=None) -> dict:
    """{mutant id: (killed, status, score, max, failed checks)}: each mutant's lab graded on the stand-ins."""
    from types import SimpleNamespace

    from parent import grade as grading
    args = SimpleNamespace(check=None, isolation="fork", timeout=timeout, memory=memory, jobs=jobs, own_labs=False)
    grading.preload("fork", sorted({m.lab for m in found}))
    outcome = {}
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        by_lab = {}
        for i, m in enumerate(found):
            folder = Path(tmp, f"m{i:04d}")
            folder.mkdir()
            for name in FILES.values():
                shutil.copyfile(ROOT / "solutions" / name, folder / name)
            (folder / FILES[m.lab]).write_text(m.source)
            by_lab.setdefault(m.lab, []).append((m.id, str(folder), f"m{i:04d}"))
        for lab, subs in by_lab.items():
            done = grading.grade_submissions(subs, [lab], args, "cpu", on_done=progress)
            for key, results in done.items():
                r = next(x for x in results if x.lab == lab)
                failed = sorted(c.name for c in r.checks if not c.passed)
                killed = r.status != "passed" or r.score < r.max_score
                outcome[key] = (killed, r.status, r.score, r.max_score, failed)
    return outcome


def main(argv=None) -> int:
    from tools.equivalent_mutants import EQUIVALENT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labs", nargs="*", metavar="LAB", help="labs to mutate (default: every lab)")
    parser.add_argument("--sample", type=int, default=0, metavar="N", help="a fixed sample of N mutants per lab")
    parser.add_argument("--list", action="store_true", help="print the mutants and grade nothing")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30, help="CPU seconds per lab (default 30)")
    parser.add_argument("--json", metavar="PATH", help="write every mutant's outcome to PATH")
    parser.add_argument("--twice", action="store_true", help="grade twice under two hash seeds and compare")
    args = parser.parse_args(argv)
    if args.twice:
        return twice(args)
    labs = args.labs or [lab.name for lab in REGISTRY]
    unknown = set(labs) - set(FILES)
    if unknown:
        parser.error(f"unknown lab(s): {', '.join(sorted(unknown))}")
    found = []
    for lab in labs:
        ms = mutants(lab)
        found += sample(ms, args.sample) if args.sample else ms
    if args.list:
        for m in found:
            print(f"{m.line:4d}  {m.id}")
        print(f"{len(found)} mutants")
        return 0
    start = time.monotonic()
    outcome = grade(found, timeout=args.timeout, jobs=args.jobs)
    seconds = time.monotonic() - start
    unexplained, rows = [], []
    for lab in labs:
        mine = [m for m in found if m.lab == lab]
        survivors = [m for m in mine if not outcome[m.id][0]]
        equivalent = [m for m in survivors if m.id in EQUIVALENT]
        killable = len(mine) - len(equivalent)
        killed = len(mine) - len(survivors)
        rows.append((lab, len(mine), killed, len(equivalent), killed / killable if killable else 1.0))
        unexplained += [m for m in survivors if m.id not in EQUIVALENT]
    print(f"{'lab':6s} {'mutants':>8s} {'killed':>7s} {'equivalent':>11s} {'score':>7s}")
    for lab, n, killed, eq, score in rows:
        print(f"{lab:6s} {n:8d} {killed:7d} {eq:11d} {score:7.1%}")
    print(f"{len(found)} mutants graded in {seconds:.0f} s")
    for m in unexplained:
        print(f"SURVIVED  line {m.line}: {m.id}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "labs": {lab: {"mutants": n, "killed": k, "equivalent": e, "score": s} for lab, n, k, e, s in rows},
            "mutants": [{"id": m.id, "line": m.line, "killed": outcome[m.id][0], "status": outcome[m.id][1],
                         "score": outcome[m.id][2], "failed": outcome[m.id][4]} for m in found]}, indent=1))
    return 1 if unexplained else 0


def differing(first: dict, second: dict) -> list:
    """The mutant ids whose verdicts (status, score, failed checks) are not the same in both gradings."""
    return sorted(k for k in set(first) | set(second) if first.get(k) != second.get(k))


def twice(args) -> int:
    """Grade the same mutants in two fresh processes under PYTHONHASHSEED 1 and 2; 1 when any verdict differs."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="mutants-twice-") as tmp:
        for seed in ("1", "2"):
            out = Path(tmp, f"seed-{seed}.json")
            argv = [sys.executable, str(Path(__file__).resolve()), *args.labs, "--json", str(out),
                    "--jobs", str(args.jobs), "--timeout", str(args.timeout)]
            argv += ["--sample", str(args.sample)] if args.sample else []
            subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed}, stdout=subprocess.DEVNULL)
            runs.append({m["id"]: (m["status"], m["score"], m["failed"]) for m in json.loads(out.read_text())["mutants"]})
    differ = differing(*runs)
    for key in differ:
        print(f"DIFFERS  {key}: {runs[0][key]} / {runs[1].get(key)}")
    print(f"{len(runs[0])} mutants graded twice (PYTHONHASHSEED 1 and 2): {len(differ)} verdicts differ")
    if args.json:
        Path(args.json).write_text(json.dumps({"differ": differ, "graded": len(runs[0])}, indent=1))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
