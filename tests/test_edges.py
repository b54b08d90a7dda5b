"""Bounded edges: whatever one submission holds or is called, it gets its own row with a reason, and its honest
classmates keep exact full marks. Each hostile input below once ended a whole batch (or wrote no results.json)."""
import csv
import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from parent.grade import covering
from parent.submission import (MAX_BYTES, MAX_NESTING, find_uploads, json_nesting_ok, lab_source_from_export,
                               lab_source_from_notebook, read_submission)
from parent.verdict import clean, clean_name, expected_checks
from tests.helpers import LAB_FILES, ROOT, run_grader, submission

LAB1 = LAB_FILES["lab1"]
NOTEBOOK = LAB1.replace(".py", ".ipynb")
LAB1_POINTS = sum(c.points for c in expected_checks("lab1"))
SOLUTION = (ROOT / "solutions" / LAB1).read_text()


def notebook(cells) -> str:
    return json.dumps({"cells": [{"cell_type": "code", "source": c, "metadata": {}, "outputs": [],
                                  "execution_count": None} for c in cells], "metadata": {}, "nbformat": 4,
                       "nbformat_minor": 5})


def rows(path) -> dict:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["submission"]: r for r in csv.DictReader(f)}


def nest(base, depth: int):
    """base/d/d/.../d, `depth` levels, made one level at a time (os.makedirs and shutil.rmtree recurse)."""
    path = str(base)
    os.makedirs(path, exist_ok=True)
    for _ in range(depth):
        path += "/d"
        os.mkdir(path)
    return path


def unnest(base, depth: int):
    """Remove what nest made (files at the bottom included), from the bottom up."""
    path = str(base) + "/d" * depth
    for _ in range(depth):
        for name in os.listdir(path):
            if name != "d":
                os.unlink(os.path.join(path, name))
        os.rmdir(path)
        path = os.path.dirname(path)


def export(source: str) -> str:
    return f"# coding: utf-8\nget_ipython().run_cell_magic('lab', '', {source!r})\n"


# ---- the readers, each bounded before it starts ------------------------------------------------------------
def test_json_nesting_is_measured_without_recursion():
    assert json_nesting_ok(b"[" * MAX_NESTING + b"]" * MAX_NESTING)
    assert not json_nesting_ok(b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1))
    assert not json_nesting_ok(b"[" * 1_000_000)  # what made json.loads raise RecursionError
    assert json_nesting_ok(b'{"a": "' + b"[" * 1000 + b'\\"[[["}')  # brackets inside strings do not count
    assert json_nesting_ok((ROOT / "notebooks" / NOTEBOOK).read_bytes())


def test_a_deep_notebook_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="nested more than"):
        lab_source_from_notebook(b'{"cells": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")


def test_an_export_is_read_by_tokens_not_a_syntax_tree():
    assert lab_source_from_export(export(SOLUTION)) == SOLUTION.strip("\n") + "\n"
    chain = "run_cell_magic\nx = " + "1 + " * 200_000 + "1\n"  # ast.parse raised RecursionError on this
    assert lab_source_from_export(chain) is None
    assert lab_source_from_export("run_cell_magic(" + "(" * 100_000) is None


def test_one_cap_on_a_labs_text_whatever_its_source(tmp_path):
    big = "x = 1\n" + "# padding\n" * (MAX_BYTES // 10 + 10)
    for name, text in (("notebook", notebook(["%%lab\n" + big])), ("export", export(big))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / (NOTEBOOK if name == "notebook" else LAB1)).write_text(text)
        sources, refused, _ = read_submission(folder)
        assert LAB1 not in sources and "1 MB" in refused[LAB1], (name, refused)


def test_the_upload_search_is_bounded(tmp_path):
    deep = tmp_path / "upload"
    leaf = nest(deep, 1100)  # Path.rglob raised RecursionError here
    try:
        shutil.copyfile(ROOT / "solutions" / LAB1, os.path.join(leaf, LAB1))
        assert find_uploads(deep) == ({}, [])  # too deep to look for: every lab "not found"
        shallow = deep / "my-labs"
        shallow.mkdir()
        (shallow / LAB1).write_text(SOLUTION)
        assert [u.path for u in find_uploads(deep)[0]["lab1"]] == [f"my-labs/{LAB1}"]
    finally:
        unnest(deep, 1100)


def test_names_and_texts_are_made_safe_once():
    name = os.fsdecode(b"caf\xe9\n\x1b[2J")
    assert clean_name(name) == "caf\\xe9\\x0a\\x1b[2J" and clean_name(name).encode("utf-8")
    assert clean_name("a\u202eb") == "a\\u202eb" and clean_name("alice") == "alice"
    assert clean_name(os.fsdecode(b"x\xe9")) != clean_name(os.fsdecode(b"x\xe8"))  # two names stay two
    assert clean("bad \ud800 value\n\x07") == "bad \\ud800 value\n" and clean("\udcff").encode("utf-8")


def test_hidden_folders_are_covered_by_the_fewest():
    assert covering(["/c/b-c", "/c/b/x", "/c/b", "/c/b/x/y", "/d", "/d/"]) == ("/c/b", "/c/b-c", "/d")
    assert len(covering(["/batch", *(f"/batch/{'s' * 200}{i}" for i in range(5000))])) == 1


# ---- one class, every hostile input at once ---------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_class(tmp_path_factory):
    subs = tmp_path_factory.mktemp("edges") / "subs"
    for honest in ("honest-a", "honest-b"):
        submission(subs / honest)
    (subs / "deep-notebook").mkdir()
    (subs / "deep-notebook" / NOTEBOOK).write_bytes(b'{"cells": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    (subs / "deep-export").mkdir()
    (subs / "deep-export" / LAB1).write_text("# run_cell_magic\nx = " + "1 + " * 100_000 + "1\n")
    (subs / "huge-cell").mkdir()
    (subs / "huge-cell" / NOTEBOOK).write_text(notebook(["%%lab\n" + SOLUTION + "#" * (3 << 20) + "\n"]))
    surrogate = subs / "surrogate"
    surrogate.mkdir()
    (surrogate / LAB1).write_text(SOLUTION.replace("    d_k = q.size(-1)\n",
                                                   "    raise ValueError('bad \\ud800 \\udcff value')\n"))
    os.mkdir(os.fsencode(subs) + b"/caf\xe9-\xff")  # not UTF-8
    shutil.copyfile(ROOT / "solutions" / LAB1, os.fsencode(subs) + b"/caf\xe9-\xff/" + os.fsencode(LAB1))
    out = subs.parent / "grades.csv"
    proc = run_grader("lab1", "--batch", subs, "--csv", out, "--jobs", "2", "--memory", "1", timeout=600)
    return proc, out


def test_each_hostile_submission_gets_its_own_row(hostile_class):
    proc, out = hostile_class
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    graded = rows(out)
    assert set(graded) == {"honest-a", "honest-b", "deep-notebook", "deep-export", "huge-cell", "surrogate",
                           "caf\\xe9-\\xff"}, graded.keys()
    for honest in ("honest-a", "honest-b", "caf\\xe9-\\xff"):  # the odd name is an honest classmate too
        assert graded[honest]["total"] == graded[honest]["max_total"] == str(LAB1_POINTS), graded[honest]
    assert graded["deep-notebook"]["lab1_status"] == "error"
    assert "nested more than" in graded["deep-notebook"]["lab1_reason"]
    assert "at most 1 MB" in graded["huge-cell"]["lab1_reason"]
    assert graded["huge-cell"]["lab1_status"] == "error"
    assert graded["deep-export"]["lab1_status"] == "forbidden" and graded["deep-export"]["total"] == "0"
    assert "nests too deeply" in graded["deep-export"]["lab1_reason"]  # Python could not compile it either
    assert graded["surrogate"]["lab1_status"] == "failed"


def test_a_surrogate_in_an_exception_prints_on_the_scorecard(tmp_path):
    folder = tmp_path / "sub"
    folder.mkdir()
    (folder / LAB1).write_text(SOLUTION.replace("    d_k = q.size(-1)\n", "    raise ValueError('bad \\ud800')\n"))
    proc = run_grader("lab1", "--submission", folder, "--json", tmp_path / "r.json", env={"PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 1 and "internal error" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "\\ud800" in proc.stdout and json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["tests"]


def test_a_class_of_5000_long_names(tmp_path):
    """Every submission's folder is hidden from every worker: the spec that says so once outgrew the zygote's
    receive buffer, and an honest classmate scored 0 as "error"."""
    subs = tmp_path / "subs"
    for i in range(5000):
        (subs / f"{i:04d}-{'n' * 195}").mkdir(parents=True)  # small submissions: no lab file, an error row each
    submission(subs / f"9999-{'h' * 195}")
    out = tmp_path / "grades.csv"
    proc = run_grader("lab1", "--batch", subs, "--csv", out, "--jobs", "2", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    graded = rows(out)
    assert len(graded) == 5001
    honest = graded[f"9999-{'h' * 195}"]
    assert honest["total"] == honest["max_total"] == str(LAB1_POINTS), honest


def test_a_large_legal_lab_file_under_spawn(tmp_path):
    """Under --isolation spawn a lab file went on the judge's command line, past the system's per-argument limit."""
    folder = tmp_path / "sub"
    folder.mkdir()
    (folder / LAB1).write_text(SOLUTION + "# padding\n" * 60_000)  # 600 KB: legal (the cap is 1 MB)
    assert (folder / LAB1).stat().st_size < MAX_BYTES
    proc = run_grader("lab1", "--submission", folder, "--isolation", "spawn", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["score"] == LAB1_POINTS


@pytest.mark.parametrize("depth", [3, 1100])
def test_gradescope_always_gets_results(tmp_path, depth):
    autograder = tmp_path / "autograder"
    leaf = nest(autograder / "submission", depth)
    try:
        shutil.copyfile(ROOT / "solutions" / LAB1, os.path.join(leaf, LAB1))
        proc = run_grader("lab1", "--gradescope", env={"GRADESCOPE_ROOT": str(autograder)})
    finally:
        unnest(autograder / "submission", depth)
    results = json.loads((autograder / "results" / "results.json").read_text())
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if depth == 3:  # found and graded
        assert proc.returncode == 0 and results["score"] == LAB1_POINTS
    else:  # too deep to look for: every check "not found", and still a results.json
        assert results["score"] == 0 and results["tests"] and "not found" in json.dumps(results)


@pytest.mark.skipif(sys.platform != "linux", reason="the zygote is Linux-only")
def test_a_worker_spec_of_any_size_reaches_the_zygote():
    """A spec far past a datagram's size still starts a worker (the spec travels as a frame in a file)."""
    from judge.client import Worker
    from parent import grade
    grade.preload("fork")
    worker = Worker({LAB1: SOLUTION.encode()}, zygote=grade.ZYGOTE["socket"],
                    hide=[f"/nonexistent/{'x' * 200}{i}" for i in range(3000)])
    try:
        assert worker.call(("lab1_attention", "causal_mask"), 3).tolist() == [[True, False, False],
                                                                            [True, True, False],
                                                                            [True, True, True]]
    finally:
        worker.close()


# ---- the grader's own work on a text, under --memory too ------------------------------------------------------
def test_the_judges_scan_runs_under_the_memory_cap():
    """A 1 MB text built to make the parse grow is refused within the cap, a lab file of real size is not, and the
    process has its memory back afterwards."""
    importlib.import_module("numpy")  # native libraries start before the cap, as in a judge forked from the parent
    from judge.static import scan_source, warm
    from pack.memory import capped
    warm()
    heavy = ("x = [" + "1," * 500_000 + "]\n").encode()  # about 0.4 GB of syntax tree from 1 MB
    assert len(heavy) <= MAX_BYTES
    with capped(0.1):
        hits = scan_source(heavy, LAB1)
    assert hits and "more memory" in hits[0], hits
    with capped(0.1):
        assert scan_source(SOLUTION.encode(), LAB1) == []
    assert len(bytearray(300 << 20)) == 300 << 20  # the cap is gone
    assert scan_source(heavy, LAB1) == []  # without the cap the same text is read (a plain assignment)


def test_the_parents_read_runs_under_the_memory_cap(tmp_path):
    page = json.loads(notebook(["%%lab\nx = 1\n"]))
    page["metadata"]["numbers"] = list(range(1_000_000, 3_000_000))  # 16 MB of JSON, about 0.1 GB parsed
    (tmp_path / NOTEBOOK).write_text(json.dumps(page))
    assert (tmp_path / NOTEBOOK).stat().st_size < 20 << 20
    def read(memory):  # in a fresh process, as the parent reads it: the cap is on memory beyond what it holds
        code = ("import json, sys; from pathlib import Path; from parent.submission import read_submission\n"
                "sources, refused, _ = read_submission(Path(sys.argv[1]), float(sys.argv[2]))\n"
                "print(json.dumps([{k: v.decode() for k, v in sources.items()}, refused]))")
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(memory)], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)
    sources, refused = read(0.05)
    assert LAB1 not in sources and "--memory" in refused[LAB1], refused
    sources, refused = read(4)
    assert sources[LAB1] == "x = 1\n" and not refused
