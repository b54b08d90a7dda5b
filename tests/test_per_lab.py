"""Each lab is graded on its own: lab N runs on the pack's stand-ins for labs < N, so one bug costs points in its
own lab only; a 0-point check runs the student's own chain and names the earlier lab to fix."""
import csv
import json
from pathlib import Path

import pytest

from parent.verdict import expected_checks
from tests.helpers import LAB_FILES, ROOT, grade_many, run_grader, submission

MERGE = "out = out.transpose(1, 2).contiguous().view(B, T, D)"
L2_ATTEND = "out, _ = scaled_dot_product_attention(q, k, v, causal_mask(T, device=x.device))"
L3_LN1 = "self.ln1 = nn.LayerNorm(d_model)"
CHAIN = "test_works_with_your_own_earlier_labs"
LABS = list(LAB_FILES)
MAX = {lab: sum(c.points for c in expected_checks(lab)) for lab in LABS}


def stub_lab2(folder: Path) -> Path:
    submission(folder)
    (folder / LAB_FILES["lab2"]).write_text((ROOT / "labs" / LAB_FILES["lab2"]).read_text())
    return folder


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    made = tmp_path_factory.mktemp
    return {
        "lab2-bug": submission(made("lab2-bug"), "lab2", [(MERGE, "out = out.contiguous().view(B, T, D)")]),
        "lab2-stub": stub_lab2(made("lab2-stub")),
        "lab1-bug": submission(made("lab1-bug"), "lab1", [("/ math.sqrt(d_k)", "")]),
        "lab3-alone": made("lab3-alone"),
        # torch's built-ins reached through a stand-in's own imports: the static scan sees them
        "reach-through-lab2": submission(made("reach-lab2"), "lab2", [(L2_ATTEND, L2_ATTEND.replace(
            "scaled_dot_product_attention(q, k, v, causal_mask(T, device=x.device))",
            "lab1_attention.F.scaled_dot_product_attention(q, k, v, is_causal=True), None")),
            ("from lab1_attention import", "import lab1_attention\nfrom lab1_attention import")]),
        "reach-through-lab3": submission(made("reach-lab3"), "lab3", [(L3_LN1, L3_LN1 + "\n        self.fused = "
                                                                      "lab2_multihead.nn.TransformerEncoderLayer(d_model, n_heads)"),
                                                                      ("from lab2_multihead import", "import lab2_multihead\nfrom lab2_multihead import")]),
        "lab1-as-a-module": submission(made("lab1-as-module"), "lab2", [(L2_ATTEND, L2_ATTEND.replace(
            "scaled_dot_product_attention(q, k, v", "L1.scaled_dot_product_attention(q, k, v")),
            ("from lab1_attention import", "import lab1_attention as L1\nfrom lab1_attention import")]),
        **{f"copied-stand-in-{lab}": submission(made(f"copied-{lab}"), lab, source=(
            ROOT / "worker" / "standins" / LAB_FILES[lab]).read_text()) for lab in ("lab1", "lab2", "lab3")},
    }


@pytest.fixture(scope="module")
def graded(cases):
    (cases["lab3-alone"] / LAB_FILES["lab3"]).write_text((ROOT / "solutions" / LAB_FILES["lab3"]).read_text())
    specs = {key: (folder, LABS) for key, folder in cases.items() if key != "lab3-alone"}
    specs["lab3-alone"] = (cases["lab3-alone"], ["lab3"])
    for key in ("reach-through-lab2", "reach-through-lab3", "lab1-as-a-module"):
        specs[key] = (cases[key], ["lab2" if "lab3" not in key else "lab3"])
    out = grade_many({k: v for k, v in specs.items() if not k.startswith("copied")})
    out.update(grade_many({k: (f, [k.rsplit("-", 1)[1]]) for k, (f, _) in specs.items() if k.startswith("copied")}))
    return out


@pytest.mark.parametrize("case", ["lab2-bug", "lab2-stub"])
def test_a_lab2_mistake_costs_points_in_lab2_only(case, graded):
    labs = graded[case]
    assert labs["lab1"]["score"] == MAX["lab1"] and labs["lab1"]["status"] == "passed"
    assert labs["lab2"]["score"] < MAX["lab2"] and labs["lab2"]["status"] in ("failed", "not started")
    for lab in ("lab3", "lab4"):
        result = labs[lab]
        assert (result["score"], result["status"]) == (MAX[lab], "passed"), result["detail"]
        chain = result["checks"][CHAIN]
        assert not chain["passed"] and chain["hint"] == "chain" and "lab2_multihead.py" in chain["message"]
        assert [n for n in result["notes"] if "fix lab 2 first" in n], result["notes"]
    assert not labs["lab2"]["notes"]


def test_the_earlier_lab_at_fault_is_the_one_named(graded):
    """A lab 1 bug under correct labs 2 and 3: lab 3's note names lab 1, not lab 2."""
    labs = graded["lab1-bug"]
    assert labs["lab1"]["score"] < MAX["lab1"]
    for lab in ("lab2", "lab3", "lab4"):
        assert labs[lab]["score"] == MAX[lab]
        assert any("fix lab 1 first" in n for n in labs[lab]["notes"]), labs[lab]["notes"]


def test_a_lab_submitted_alone_is_graded_on_the_stand_ins(graded):
    result = graded["lab3-alone"]["lab3"]
    assert (result["score"], result["status"]) == (MAX["lab3"], "passed")
    chain = result["checks"][CHAIN]
    assert chain["passed"] and "not tried" in chain["message"] and "lab1_attention.py" in chain["message"]


@pytest.mark.parametrize("lab", ["lab1", "lab2", "lab3"])
def test_a_copied_stand_in_breaks_the_shortcut_rule(lab, graded):
    result = graded[f"copied-stand-in-{lab}"][lab]
    assert (result["status"], result["score"]) == ("forbidden", 0), result["detail"]


@pytest.mark.parametrize("case", ["reach-through-lab2", "reach-through-lab3"])
def test_a_built_in_reached_through_a_stand_in_is_forbidden_by_the_scan(case, graded):
    (result,) = graded[case].values()
    assert (result["status"], result["score"]) == ("forbidden", 0)
    assert result["detail"].startswith("forbidden: line"), result["detail"]  # the static scan, not a run-time guard


def test_lab1_used_as_a_module_is_lab1_not_a_shortcut(graded):
    result = graded["lab1-as-a-module"]["lab2"]
    assert (result["status"], result["score"]) == ("passed", MAX["lab2"]), result["detail"]


def test_own_labs_grades_on_the_submissions_own_chain(cases):
    own = run_grader("lab3", "--submission", cases["lab2-bug"], "--own-labs", "--json", cases["lab2-bug"] / "own.json")
    result = json.loads((cases["lab2-bug"] / "own.json").read_text())
    assert own.returncode == 1 and result["score"] < MAX["lab3"]
    assert "fix lab 2 first" in result["output"]


def test_the_note_reaches_the_scorecard_json_and_csv(cases, tmp_path):
    proc = run_grader("lab3", "--submission", cases["lab2-bug"], "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # lab 3 itself passes
    assert "fix lab 2 first" in " ".join(proc.stdout.split())
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["score"] == MAX["lab3"]
    assert "fix lab 2 first" in result["output"]
    assert any("fix lab 2 first" in n for n in result["extra_data"]["labs"]["lab3"]["notes"])
    chain = next(t for t in result["tests"] if t["name"].endswith("works with your own earlier labs"))
    assert chain["max_score"] == 0 and "fix lab 2 first" in chain["output"]
    batch = tmp_path / "class"
    submission(batch / "ann", "lab2", [(MERGE, "out = out.contiguous().view(B, T, D)")])
    submission(batch / "bob")
    proc = run_grader("lab2", "lab3", "--batch", batch, "--csv", tmp_path / "grades.csv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["submission"]: r for r in csv.DictReader(open(tmp_path / "grades.csv"))}
    assert "fix lab 2 first" in rows["ann"]["lab3_reason"] and rows["ann"]["lab3_score"] == str(MAX["lab3"])
    assert rows["bob"]["lab3_reason"] == "" and rows["bob"]["total"] == str(MAX["lab2"] + MAX["lab3"])
