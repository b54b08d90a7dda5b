"""Mutation testing (tools/mutate.py): the generator, the reviewed equivalent list, and a fixed sample graded."""
import ast

from pack.labs import FILES
from tests.helpers import ROOT
from tools import mutate
from tools.equivalent_mutants import EQUIVALENT

SAMPLE = 8  # mutants per lab graded here; `python tools/mutate.py` grades them all

TOY = '''import torch


def f(x, mask=None):
    """Not mutated: a docstring."""
    y = x + 1  # outside the solution region: not mutated
    # BEGIN SOLUTION: the part a student writes
    z = torch.softmax(x * 2, dim=-1)
    if mask is not None:
        z = z.masked_fill(~mask, 0.0)
    return z.transpose(-2, -1)
    # END SOLUTION
'''


def test_the_generator_mutates_only_the_solution_region_one_node_at_a_time():
    found = mutate.mutants("lab1", TOY)
    ops = {m.op for m in found}
    assert {"operator", "constant", "drop keyword", "comparison", "drop unary", "drop statement"} <= ops
    assert not any("transpose" in m.new for m in found if m.op == "swap arguments")  # symmetric: not mutated
    lines = TOY.splitlines()
    for m in found:
        ast.parse(m.source)
        changed = [i for i, (a, b) in enumerate(zip(lines, m.source.splitlines())) if a != b]
        assert changed and all(7 <= i <= 10 for i in changed), (m.id, changed)  # 0-based: inside BEGIN..END only
    assert len({m.id for m in found}) == len(found)
    assert len({m.source for m in found}) == len(found)


def test_every_lab_has_mutants_and_stable_unique_ids():
    for lab in FILES:
        found = mutate.mutants(lab)
        assert len(found) >= 20, lab
        assert len({m.id for m in found}) == len(found), lab
        assert [m.id for m in mutate.mutants(lab)] == [m.id for m in found]  # the same on every run
        assert mutate.sample(found, SAMPLE) == mutate.sample(found, SAMPLE)


def test_the_equivalent_list_is_current_and_reasoned():
    ids = {m.id for lab in FILES for m in mutate.mutants(lab)}
    stale = set(EQUIVALENT) - ids
    assert not stale, f"equivalent mutants no longer generated: {sorted(stale)}"
    assert all(isinstance(why, str) and len(why) > 10 for why in EQUIVALENT.values())


def test_a_sample_is_killed_and_the_equivalent_ones_survive():
    """A fixed sample of every lab's mutants, the reviewed equivalent ones, and the solution itself as a control."""
    picked = [m for lab in FILES for m in mutate.sample(mutate.mutants(lab), SAMPLE)]
    listed = [m for lab in FILES for m in mutate.mutants(lab) if m.id in EQUIVALENT]
    solution = (ROOT / "solutions" / FILES["lab2"]).read_text()
    control = mutate.Mutant("lab2", "<module>", 0, "none", "", "", solution)
    outcome = mutate.grade(picked + [m for m in listed if m not in picked] + [control])
    survived = [m.id for m in picked if not outcome[m.id][0] and m.id not in EQUIVALENT]
    assert not survived, f"mutants no check kills: {survived}"
    killed = [m.id for m in listed if outcome[m.id][0]]
    assert not killed, f"listed as equivalent, but the checks kill them: {killed}"
    assert not outcome[control.id][0], outcome[control.id]  # the solution is not killed: a kill means a failure


def test_the_same_verdicts_under_two_hash_seeds(tmp_path):
    """A sample of every lab's mutants graded in two fresh processes (PYTHONHASHSEED 1 and 2): identical verdicts."""
    import json
    import subprocess
    import sys
    out = tmp_path / "twice.json"
    proc = subprocess.run([sys.executable, "tools/mutate.py", "--sample", "3", "--twice", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    assert report["graded"] >= 3 * len(FILES), proc.stdout
    assert proc.returncode == 0 and not report["differ"], proc.stdout


def test_a_verdict_that_changes_is_reported():
    first = {"a": ("passed", 5, []), "b": ("failed", 3, ["test_x"])}
    assert mutate.differing(first, dict(first)) == []
    assert mutate.differing(first, {**first, "b": ("failed", 3, ["test_y"])}) == ["b"]
    assert mutate.differing(first, {"a": first["a"]}) == ["b"]
