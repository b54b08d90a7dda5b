"""The class's gradebook: roster, columns, order, merging, regrading, shards and a Canvas import."""
import csv
import io
import json
import subprocess
from datetime import datetime

import pytest

from parent import gradebook
from parent.gradebook import Entry, LabRecord, canvas_text, in_shard, load, parse_shard, read_roster
from tests.helpers import LAB_FILES, PY, ROOT, run_grader

LAB1 = LAB_FILES["lab1"]
SOLUTION1 = (ROOT / "solutions" / LAB1).read_text()
AFTER_SOFTMAX = SOLUTION1.replace("scores = scores.masked_fill(~mask, float(\"-inf\"))", "pass")


def rows(path) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def header(path) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f))


def make_class(folder, names, broken=()):
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / LAB1).write_text(AFTER_SOFTMAX if name in broken else SOLUTION1)
    return folder


def test_a_wrong_lab1_is_wrong():  # the class below needs one failing submission
    assert AFTER_SOFTMAX != SOLUTION1


def test_a_batch_writes_a_gradebook_with_the_roster(tmp_path):
    subs = make_class(tmp_path / "subs", ["zoe", "alice", "Bob"], broken={"Bob"})
    (subs / ".trash").mkdir()
    (subs / "README.txt").write_text("hi")
    roster = tmp_path / "roster.csv"
    roster.write_text("Name,Student ID,Email,Folder\nAlice Ames,1001,alice@x.edu,alice\nBob Burns,1002,bob@x.edu,bob\n"
                      "Carol Cole,1003,carol@x.edu,\n")
    out = tmp_path / "grades.csv"
    proc = run_grader("lab1", "--batch", subs, "--csv", out, "--roster", roster, "--timeout", "30",
                      "--canvas", tmp_path / "canvas.csv")
    assert proc.returncode == 0, proc.stderr
    assert "Bob" in (tmp_path / "grades.report.html").read_text()  # the class report, beside the gradebook
    assert [line[0] for line in csv.reader(io.StringIO((tmp_path / "canvas.csv").read_text()))][1:] == [
        "Points Possible", "Bob Burns", "Alice Ames", "", "Carol Cole"]
    assert ".trash (a hidden or system folder)" in proc.stderr and "README.txt (a file" in proc.stderr
    assert "not on the roster: zoe" in proc.stderr
    assert header(out) == ["submission", "id", "name", "email", "total", "max_total", "lab1_score", "lab1_max",
                           "lab1_status", "lab1_reason", "seconds", "grader_version", "graded_at"]
    got = rows(out)
    assert [r["submission"] for r in got] == ["Bob", "alice", "zoe", ""]  # by name; the roster's absent last
    bob, alice, zoe, carol = got
    best = alice["lab1_max"]
    assert alice["lab1_score"] == best == alice["total"] == alice["max_total"] and int(best) > 10
    assert (alice["id"], alice["name"], alice["email"]) == ("1001", "Alice Ames", "alice@x.edu")
    assert (bob["id"], bob["name"]) == ("1002", "Bob Burns")  # folder names match in any case
    assert bob["lab1_status"] == "failed" and bob["lab1_reason"].startswith("failed: ") and "mask" in bob["lab1_reason"]
    assert zoe["id"] == "" and zoe["lab1_status"] == "passed"
    assert (carol["name"], carol["lab1_status"], carol["lab1_score"], carol["lab1_max"]) == ("Carol Cole", "missing",
                                                                                             "0", best)
    assert {r["grader_version"] for r in got} == {gradebook.version()}
    assert all(datetime.fromisoformat(r["graded_at"]).tzinfo for r in got)
    checks = json.loads(gradebook.checks_path(out).read_text())["submissions"]
    bob_checks = checks["Bob"]["lab1"]["checks"]
    assert {c["hint"] for c in bob_checks if not c["passed"]} >= {"mask"}
    assert all(c["passed"] for c in checks["alice"]["lab1"]["checks"])


def test_more_labs_merge_into_the_gradebook_and_regrade_replaces_a_row(tmp_path):
    subs = make_class(tmp_path / "subs", ["alice", "bob"], broken={"bob"})
    for name in ("alice", "bob"):
        (subs / name / LAB_FILES["lab2"]).write_text((ROOT / "solutions" / LAB_FILES["lab2"]).read_text())
    out = tmp_path / "grades.csv"
    assert run_grader("lab1", "--batch", subs, "--csv", out).returncode == 0
    first = {r["submission"]: r for r in rows(out)}
    proc = run_grader("lab2", "--batch", subs, "--csv", out)
    assert proc.returncode == 0 and "grading 2" in proc.stderr, proc.stderr
    both = {r["submission"]: r for r in rows(out)}
    for name in ("alice", "bob"):  # lab 1's columns are kept as they were; lab 2's are added
        assert {k: both[name][k] for k in first[name] if k.startswith("lab1_")} == \
            {k: v for k, v in first[name].items() if k.startswith("lab1_")}
        assert both[name]["lab2_status"] == "passed"
        assert int(both[name]["total"]) == int(both[name]["lab1_score"]) + int(both[name]["lab2_score"])
    assert "grading 0" in run_grader("lab1", "lab2", "--batch", subs, "--csv", out).stderr
    (subs / "bob" / LAB1).write_text(SOLUTION1)  # bob fixes lab 1: only --regrade grades it again
    assert "grading 0" in run_grader("lab1", "--batch", subs, "--csv", out).stderr
    proc = run_grader("lab1", "--batch", subs, "--csv", out, "--regrade", "bob")
    assert proc.returncode == 0 and "grading 1" in proc.stderr, proc.stderr
    after = {r["submission"]: r for r in rows(out)}
    assert after["bob"]["lab1_status"] == "passed" and after["bob"]["lab2_status"] == "passed"
    assert after["alice"] == both["alice"]
    proc = run_grader("lab1", "--batch", subs, "--csv", out, "--regrade", "nobody")
    assert proc.returncode == 2 and "--regrade nobody: no such submission" in proc.stderr


def test_keeping_columns_can_fail():
    """The old writer's columns were the labs of the run alone: a lab 2 run dropped lab 1's columns."""
    book = {"a": Entry("a", labs={"lab1": LabRecord("passed", 3, 3), "lab2": LabRecord("failed", 1, 3)})}
    assert "lab1_status" in gradebook.csv_text(book).splitlines()[0]
    assert "lab1_status" not in gradebook.columns(["lab2"])


def test_a_gradebook_reads_back_the_same_and_reads_the_old_format(tmp_path):
    book = {"b": Entry("b", "2", "=Bob", "b@x", labs={"lab1": LabRecord("failed", 1, 3, "failed: x", 0.5,
                                                                       "2026-12-01T00:00:00+00:00", "v",
                                                                       checks=[{"name": "test_x", "hint": "mask"}])}),
            "a": Entry("a", labs={"lab1": LabRecord("passed", 3, 3)})}
    path = tmp_path / "g.csv"
    gradebook.save(book, path, "v")
    back = load(path)
    assert gradebook.csv_text(back) == gradebook.csv_text(book)
    assert back["b"].name == "=Bob" and "'=Bob" in path.read_text()  # a formula guard, undone on reading
    assert back["b"].labs["lab1"].checks == [{"name": "test_x", "hint": "mask"}]
    old = tmp_path / "old.csv"
    old.write_text("submission,score,max_score,lab1_score,lab1_status,lab1_notes\nx,2,3,2,failed,fix lab 1\n")
    assert load(old)["x"].labs["lab1"].reason == "fix lab 1"
    alien = tmp_path / "alien.csv"
    alien.write_text("a,b\n1,2\n")
    with pytest.raises(gradebook.GradebookError, match="not a gradebook"):
        load(alien)


GRADESCOPE_YML = """\
submission_101:
  :submitters:
  - :name: Solo Student
    :sid: '100'
    :email: solo@x.edu
  :created_at: 2026-11-30 10:00:00.000000000 -08:00
  :score: !ruby/object:BigDecimal 18:0.5e2
submission_102:
  :submitters:
  - :name: Pair One
    :sid: '200'
    :email: one@x.edu
  - :name: Pair Two
    :sid: '201'
    :email: two@x.edu
"""


def test_gradescopes_export_is_a_roster_and_a_group_imports_as_its_members(tmp_path):
    path = tmp_path / "submission_metadata.yml"
    path.write_text(GRADESCOPE_YML)
    students = read_roster(path)
    assert [(s.folders, s.id, s.name) for s in students] == [
        (("submission_101",), "100", "Solo Student"), (("submission_102",), "200; 201", "Pair One; Pair Two")]
    book = {}
    assert gradebook.match_roster(book, students, ["submission_101", "submission_102", "stray"]) == ["stray"]
    for entry in book.values():
        entry.labs["lab1"] = LabRecord("passed", 17, 17)
    lines = list(csv.reader(io.StringIO(canvas_text(book))))
    assert lines[0][:5] == gradebook.CANVAS and lines[0][5] == "Lab 1: Scaled dot-product attention"
    assert lines[1] == ["Points Possible", "", "", "", "", "17"]
    assert [line[2] for line in lines[2:]] == ["", "100", "200", "201"]  # stray first (by name); a group: a row each
    (tmp_path / "bad.yml").write_text("just: [unclosed")
    with pytest.raises(gradebook.GradebookError, match="not readable YAML"):
        read_roster(tmp_path / "bad.yml")


def test_a_roster_without_a_folder_or_id_column_is_refused(tmp_path):
    roster = tmp_path / "r.csv"
    roster.write_text("first,second\na,b\n")
    (tmp_path / "subs").mkdir()
    proc = run_grader("lab1", "--batch", tmp_path / "subs", "--csv", tmp_path / "g.csv", "--roster", roster)
    assert proc.returncode == 2 and "no column names a student's folder, id or email" in proc.stderr
    assert run_grader("lab1", "--roster", roster).returncode == 2  # --roster goes with --batch


def test_a_canvas_roster_matches_by_login_and_keeps_its_columns(tmp_path):
    roster = tmp_path / "canvas.csv"
    roster.write_text("Student,ID,SIS User ID,SIS Login ID,Section\n    Points Possible,,,,\n"
                      "\"Ames, Alice\",77,1001,aames,S1\n")
    students = read_roster(roster)
    book = {}
    assert gradebook.match_roster(book, students, ["AAMES"]) == []
    book["AAMES"].labs["lab1"] = LabRecord("failed", 5, 17)
    assert list(csv.reader(io.StringIO(canvas_text(book))))[2] == ["Ames, Alice", "77", "1001", "aames", "S1", "5"]


def test_shards_split_a_class_and_every_name_has_one():
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x", "1/0", ""):
        with pytest.raises(ValueError):
            parse_shard(bad)
    names = [f"student{i}" for i in range(300)] + ["caf\udce9", "a b"]
    owners = [[i for i in (1, 2, 3) if in_shard(name, (i, 3))] for name in names]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(o == [i] for o in owners) for i in (1, 2, 3)]
    assert min(sizes) > 60, sizes  # about a third each


def test_three_shards_in_parallel_merge_into_what_one_batch_writes(tmp_path):
    names = ["ann", "ben", "cat", "dan", "eve", "fay", "gus"]
    subs = make_class(tmp_path / "subs", names, broken={"ben", "eve"})
    roster = tmp_path / "roster.csv"
    roster.write_text("folder,id\n" + "".join(f"{n},{i}\n" for i, n in enumerate(names)) + ",999\n")
    flags = ["--timeout", "30", "--jobs", "1", "--roster", str(roster)]
    shards = [subprocess.Popen([PY, str(ROOT / "grader.py"), "lab1", "--batch", str(subs), "--csv",
                                str(tmp_path / f"shard{i}.csv"), "--shard", f"{i}/3", *flags], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2, 3)]
    for proc in shards:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    parts = [tmp_path / f"shard{i}.csv" for i in (1, 2, 3)]
    assert sorted(r["submission"] for p in parts for r in rows(p)) == sorted(names + [""])  # each once
    proc = run_grader("merge", tmp_path / "merged.csv", *parts)
    assert proc.returncode == 0, proc.stderr
    single = run_grader("lab1", "--batch", subs, "--csv", tmp_path / "single.csv", *flags)
    assert single.returncode == 0, single.stderr

    def stable(path):  # what does not depend on when or how fast it ran
        return [{k: v for k, v in r.items() if k not in ("seconds", "graded_at")} for r in rows(path)]
    assert stable(tmp_path / "merged.csv") == stable(tmp_path / "single.csv")
    assert header(tmp_path / "merged.csv") == header(tmp_path / "single.csv")

    def checks(path):
        data = json.loads(gradebook.checks_path(path).read_text())["submissions"]
        return {k: {lab: rec["checks"] for lab, rec in labs.items()} for k, labs in data.items()}
    assert checks(tmp_path / "merged.csv") == checks(tmp_path / "single.csv")
    assert stable(parts[0]) != stable(tmp_path / "single.csv")  # the comparison can fail: one shard is not all
    proc = run_grader("merge", tmp_path / "m2.csv", tmp_path / "nope.csv")
    assert proc.returncode == 2 and "nope.csv: no such file" in proc.stderr
