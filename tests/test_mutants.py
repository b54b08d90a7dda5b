"""Every checker can fail: each classic mistake is caught by the checks it should be, with the right hint."""
import pytest

from pack.hints import HINTS
from pack.labs import LABS
from parent.verdict import expected_checks
from tests.helpers import grade_many, submission
from tests.mutants import MUTANTS, VARIANTS


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    specs = {}
    for m in MUTANTS + VARIANTS:
        folder = submission(tmp_path_factory.mktemp(m.id), m.lab, m.edits)
        specs[m.id] = (folder, [m.seen_from or m.lab])
    return grade_many(specs)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_mutant_is_caught(mutant, graded):
    result = graded[mutant.id][mutant.seen_from or mutant.lab]
    checks = result["checks"]
    assert result["status"] == mutant.status, (result["status"], result["detail"])
    if mutant.seen_from:  # an earlier lab's mistake costs the later lab nothing, and its note names that lab
        assert result["score"] == result["max"] and any(f"fix lab {mutant.lab[3]} first" in n for n in result["notes"])
    else:
        assert result["score"] < result["max"]
    still_passing = {name for name in mutant.fails if checks[name]["passed"]}
    assert not still_passing, f"{mutant.id} passed {still_passing}"
    if mutant.hint:
        hints = {checks[name]["hint"] for name in mutant.fails}
        assert mutant.hint in hints, f"{mutant.id}: wanted hint {mutant.hint!r}, got {hints}"
    for name in mutant.fails:  # every failure says something
        assert checks[name]["message"].strip(), name


def test_every_scorecard_renders(graded):
    """In colour and without, at 80 and 160 columns, whatever a mutant produced (NaN weights and losses included)."""
    broken = {key: lab["render"] for key, labs in graded.items() for lab in labs.values() if lab["render"]}
    assert not broken, broken


@pytest.mark.parametrize("lab", list(LABS))
def test_every_check_has_a_mutant(lab):
    caught = set().union(*(m.fails for m in MUTANTS if (m.seen_from or m.lab) == lab))
    assert {c.name for c in expected_checks(lab)} <= caught, "checks no mutant makes fail"


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_every_failure_carries_a_hint(mutant, graded):
    checks = graded[mutant.id][mutant.seen_from or mutant.lab]["checks"]
    unhinted = [name for name, c in checks.items() if not c["passed"] and c["hint"] not in HINTS]
    assert not unhinted, f"{mutant.id}: failures without a hint: {unhinted}"


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.id for v in VARIANTS])
def test_correct_variant_passes(variant, graded):
    result = graded[variant.id][variant.lab]
    failing = {name: c["message"][:200] for name, c in result["checks"].items() if not c["passed"]}
    assert result["status"] == "passed" and result["score"] == result["max"], failing
