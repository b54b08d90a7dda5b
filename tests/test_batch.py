"""Batch grading: one CSV row per submission, hangs and crashes recorded and skipped over, re-runs resume."""
import csv

from tests.helpers import TOTAL, run_grader, submission
from worker.zygote import confinement


def rows(path):
    with open(path, newline="") as f:
        return {r["submission"]: r for r in csv.DictReader(f)}


def test_batch_grades_records_and_resumes(tmp_path):
    subs = tmp_path / "submissions"
    submission(subs / "good")
    submission(subs / "broken", "lab3", [("nn.GELU()", "nn.ReLU()")])
    submission(subs / "hanging", "lab4", [("    seq_len = seq_len or model.max_seq_len\n", "    while True:\n        pass\n")])
    submission(subs / "crashing", "lab2", [("        B, T, D = x.shape\n", "        B, T, D = x.shape\n        import os; os.abort()\n")])
    (subs / "empty").mkdir()
    out = tmp_path / "grades.csv"
    proc = run_grader("all", "--batch", subs, "--csv", out, "--timeout", "10", "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    graded = rows(out)
    assert set(graded) == {"good", "broken", "hanging", "crashing", "empty"}
    assert graded["good"]["total"] == graded["good"]["max_total"] == str(TOTAL)
    assert graded["broken"]["lab3_status"] == "failed" and graded["broken"]["lab1_status"] == "passed"
    # the hang costs the checks that need the trained model, not the whole lab (10 s: room for a loaded machine)
    assert graded["hanging"]["lab4_status"] == "timeout" and int(graded["hanging"]["lab4_score"]) < 25
    assert graded["crashing"]["lab2_status"] == "crashed" and graded["crashing"]["lab1_status"] == "passed"
    assert {graded["empty"][f"lab{n}_status"] for n in range(1, 5)} == {"error"}

    again = run_grader("all", "--batch", subs, "--csv", out)  # everything is graded already
    assert "grading 0" in again.stderr and rows(out) == graded

    lines = out.read_text().splitlines()
    out.write_text("\n".join(line for line in lines if not line.startswith("broken,")) + "\n")
    resumed = run_grader("all", "--batch", subs, "--csv", out, "--timeout", "10")
    timeless = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "graded_at")}  # noqa: E731
    assert "grading 1" in resumed.stderr and timeless(rows(out)["broken"]) == timeless(graded["broken"])


def test_batch_warns_when_workers_cannot_be_confined(tmp_path):
    (tmp_path / "subs").mkdir()
    proc = run_grader("lab1", "--batch", tmp_path / "subs", "--csv", tmp_path / "g.csv", "--isolation", "spawn")
    assert proc.returncode == 0 and "workers cannot be confined" in proc.stderr, proc.stderr
    if confinement():  # where workers can be confined, the default isolation says nothing
        assert "cannot be confined" not in run_grader("lab1", "--batch", tmp_path / "subs", "--csv",
                                                      tmp_path / "g.csv").stderr


def test_csv_cells_are_text(tmp_path):
    from parent.gradebook import cell
    assert cell("=cmd|' /C calc'!A0") == "'=cmd|' /C calc'!A0" and cell("+1") == "'+1" and cell("@x") == "'@x"
    assert cell("-2") == "'-2" and cell("alice") == "alice" and cell("a\x1b[31mb\x07") == "a[31mb"
