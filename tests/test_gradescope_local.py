"""The autograder zip run on this machine the way Gradescope runs it: unzipped into ROOT/source (unix modes kept),
run_autograder copied to ROOT/run_autograder, an upload in ROOT/submission, and ROOT/run_autograder run from ROOT
with GRADESCOPE_ROOT=ROOT and this test's Python first on PATH. Every results.json is checked field by field
against Gradescope's autograder specification (gradescope-autograders.readthedocs.io, "Autograder
Specifications": results.json)."""
import copy
import json
import math
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from parent.report import ADVICE
from parent.verdict import expected_checks
from tests.helpers import LAB_FILES, ROOT
from tools.gradescope import build_zip
from tools.make_notebooks import expected_notebooks

GRADER_ARGS = "--timeout 120"  # CPU seconds per lab: lab 1 on the solution needs a few, on a busy machine more

# Gradescope's results.json, as its specification lists it
OUTPUT_FORMATS = ("text", "html", "simple_format", "md", "ansi")
VISIBILITIES = ("hidden", "after_due_date", "after_published", "visible")
STATUSES = ("passed", "failed")
TOP_FIELDS = {"score", "execution_time", "output", "output_format", "test_output_format", "test_name_format",
              "visibility", "stdout_visibility", "extra_data", "tests", "leaderboard"}
TEST_FIELDS = {"score", "max_score", "status", "name", "name_format", "number", "output", "output_format", "tags",
               "visibility", "extra_data"}


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def field_problems(where: str, record: dict, fields: dict) -> list:
    """What is wrong with `record`'s fields: {name: (test, what it must be)}; absent optional fields are fine."""
    return [f"{where}.{name}: {record[name]!r} is not {what}" for name, (ok, what) in fields.items()
            if name in record and not ok(record[name])]


def gradescope_problems(results) -> list:
    """Every way `results` breaks Gradescope's results.json specification (an empty list: none)."""
    if not isinstance(results, dict):
        return ["results.json is not a JSON object"]
    text = lambda v: isinstance(v, str)  # noqa: E731
    fmt = (lambda v: v in OUTPUT_FORMATS, f"one of {OUTPUT_FORMATS}")
    vis = (lambda v: v in VISIBILITIES, f"one of {VISIBILITIES}")
    problems = [f"unknown top-level field {name!r}" for name in sorted(set(results) - TOP_FIELDS)]
    problems += field_problems("results", results, {
        "score": (is_number, "a finite number"),
        "execution_time": (lambda v: is_number(v) and v >= 0, "a number of seconds, 0 or more"),
        "output": (text, "a string"), "output_format": fmt, "test_output_format": fmt, "test_name_format": fmt,
        "visibility": vis, "stdout_visibility": vis,
        "extra_data": (lambda v: isinstance(v, dict), "an object"),
        "tests": (lambda v: isinstance(v, list), "a list"),
        "leaderboard": (lambda v: isinstance(v, list), "a list")})
    tests = results.get("tests") if isinstance(results.get("tests"), list) else []
    if "score" not in results and ("tests" not in results or not all(isinstance(t, dict) and "score" in t
                                                                       for t in tests)):
        problems.append("no score: neither a top-level score nor one on every test")
    for i, test in enumerate(tests):
        where = f"tests[{i}]"
        if not isinstance(test, dict):
            problems.append(f"{where} is not an object")
            continue
        problems += [f"{where}: unknown field {name!r}" for name in sorted(set(test) - TEST_FIELDS)]
        problems += field_problems(where, test, {
            "score": (is_number, "a finite number"),
            "max_score": (lambda v: is_number(v) and v >= 0, "a finite number, 0 or more"),
            "status": (lambda v: v in STATUSES, f"one of {STATUSES}"),
            "name": (text, "a string"), "name_format": fmt, "number": (text, 'a string ("1.1")'),
            "output": (text, "a string"), "output_format": fmt,
            "tags": (lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v), "a list of strings"),
            "visibility": vis, "extra_data": (lambda v: isinstance(v, dict), "an object")})
    board = results.get("leaderboard")
    for i, entry in enumerate(board if isinstance(board, list) else []):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and (is_number(entry.get("value")) or isinstance(entry.get("value"), str))
                and entry.get("order", "desc") in ("asc", "desc")):
            problems.append(f"leaderboard[{i}]: {entry!r} is not {{name, value[, order asc|desc]}}")
    return problems


def read_results(path: Path) -> dict:
    """results.json as strict JSON reads it: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def red_zero_point_failures(results: dict) -> list:
    """The tests Gradescope would show as a red 0/0 failure: status failed with nothing at stake."""
    return [t["name"] for t in results["tests"] if t["status"] == "failed" and t["max_score"] == 0]


SAMPLE = {  # a results.json the specification accepts, every field used once
    "score": 3.0, "execution_time": 12.5, "output": "lab1: passed", "output_format": "text",
    "test_output_format": "text", "test_name_format": "text", "visibility": "after_due_date",
    "stdout_visibility": "hidden", "extra_data": {"labs": {}},
    "tests": [{"score": 2.0, "max_score": 2.0, "status": "passed", "name": "lab1 · causal mask", "name_format": "text",
               "number": "1.1", "output": "", "output_format": "md", "tags": ["lab1"], "visibility": "visible",
               "extra_data": {}},
              {"score": 1, "max_score": 0, "status": "passed", "name": "advice", "output": "ok"}],
    "leaderboard": [{"name": "Time", "value": 15.1, "order": "asc"}, {"name": "Stars", "value": "***"}],
}


def test_the_validator_accepts_the_specifications_own_example():
    assert gradescope_problems(SAMPLE) == []
    assert gradescope_problems({"tests": [{"score": 1}]}) == []  # the score may be on the tests alone


BROKEN = {  # one thing the specification does not allow, each
    "status ok": lambda r: r["tests"][0].update(status="ok"),
    "negative max_score": lambda r: r["tests"][0].update(max_score=-1),
    "infinite max_score": lambda r: r["tests"][0].update(max_score=float("inf")),
    "score as text": lambda r: r["tests"][0].update(score="2"),
    "score as a boolean": lambda r: r["tests"][0].update(score=True),
    "visibility public": lambda r: r["tests"][0].update(visibility="public"),
    "output_format markdown": lambda r: r["tests"][0].update(output_format="markdown"),
    "name_format rich": lambda r: r["tests"][0].update(name_format="rich"),
    "tags as one string": lambda r: r["tests"][0].update(tags="lab1"),
    "number as a float": lambda r: r["tests"][0].update(number=1.1),
    "output null": lambda r: r["tests"][0].update(output=None),
    "test extra_data a list": lambda r: r["tests"][0].update(extra_data=[]),
    "unknown test field": lambda r: r["tests"][0].update(points=2),
    "a test that is not an object": lambda r: r["tests"].append("lab1 · causal mask"),
    "score NaN": lambda r: r.update(score=float("nan")),
    "negative execution_time": lambda r: r.update(execution_time=-1),
    "stdout_visibility shown": lambda r: r.update(stdout_visibility="shown"),
    "output_format plain": lambda r: r.update(output_format="plain"),
    "extra_data a string": lambda r: r.update(extra_data="labs"),
    "tests an object": lambda r: r.update(tests={"lab1": []}),
    "unknown top-level field": lambda r: r.update(grade=3),
    "leaderboard order up": lambda r: r["leaderboard"].append({"name": "Time", "value": 1, "order": "up"}),
    "no score anywhere": lambda r: [r.pop("score")] + [t.pop("score", None) for t in r["tests"]],
}


@pytest.mark.parametrize("edit", BROKEN.values(), ids=BROKEN.keys())
def test_the_validator_rejects_what_the_specification_does_not_allow(edit):
    results = copy.deepcopy(SAMPLE)
    edit(results)
    assert gradescope_problems(results)


def test_strict_json_refuses_nan(tmp_path):
    (tmp_path / "r.json").write_text('{"score": NaN, "tests": []}')
    with pytest.raises(ValueError):
        read_results(tmp_path / "r.json")


# --- the zip, run as Gradescope runs it

@pytest.fixture(scope="module")
def autograder(tmp_path_factory):
    """labs -> the autograder zip grading them, each built once for the module."""
    built = {}

    def zip_for(labs: tuple) -> Path:
        if labs not in built:
            built[labs] = tmp_path_factory.mktemp("zip") / "autograder.zip"
            build_zip(built[labs], GRADER_ARGS, labs=labs)
        return built[labs]
    return zip_for


def unpack(archive: Path, folder: Path):
    """Extract with the unix modes the zip records (zipfile itself drops them; Gradescope's unzip keeps them)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = zf.extract(info, folder)
            mode = stat.S_IMODE(info.external_attr >> 16)
            if mode:
                os.chmod(path, mode)


def run_autograder(archive: Path, root: Path, upload) -> tuple:
    """Set up `root` as Gradescope's /autograder with `upload(submission folder)` as the submission, run
    run_autograder there; (the process, results.json checked against the specification)."""
    unpack(archive, root / "source")
    shutil.copy2(root / "source" / "run_autograder", root / "run_autograder")  # what Gradescope's image build does
    (root / "submission").mkdir()
    upload(root / "submission")
    env = {**os.environ, "GRADESCOPE_ROOT": str(root),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    proc = subprocess.run([str(root / "run_autograder")], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    path = root / "results" / "results.json"
    assert path.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = read_results(path)
    assert gradescope_problems(results) == [], (gradescope_problems(results), proc.stderr[-2000:])
    return proc, results


def solution(*labs, into: str = "", renamed: str = None):
    """An upload of the reference solutions of `labs`, in the sub-folder `into`, the (one) file renamed to `renamed`."""
    def upload(folder: Path):
        target = folder / into
        target.mkdir(parents=True, exist_ok=True)
        for lab in labs:
            shutil.copyfile(ROOT / "solutions" / LAB_FILES[lab], target / (renamed or LAB_FILES[lab]))
    return upload


def lab1_notebook(folder: Path):
    """notebooks/lab1_attention.ipynb with its %%lab cells holding the solution's code."""
    name = LAB_FILES["lab1"].replace(".py", ".ipynb")
    (folder / "notebooks").mkdir()
    (folder / "notebooks" / name).write_text(expected_notebooks(filled=True)[name], encoding="utf-8")


UPLOADS = [
    pytest.param(("lab1",), solution("lab1"), id="flat"),
    pytest.param(("lab1", "lab2"), solution("lab1", "lab2"), id="flat-lab1-lab2"),
    pytest.param(("lab1",), solution("lab1", into="myproject"), id="subfolder"),
    pytest.param(("lab1",), lab1_notebook, id="notebook"),
    *(pytest.param(("lab1",), solution("lab1", renamed=name), id=f"renamed {name}")
      for name in ("lab1_attention (1).py", "Copy of lab1_attention.py", "Lab1_Attention.py")),
]


@pytest.mark.parametrize("labs, upload", UPLOADS)
def test_the_solution_gets_full_marks_on_gradescope(labs, upload, autograder, tmp_path):
    proc, results = run_autograder(autograder(labs), tmp_path / "autograder", upload)
    best = sum(c.points for lab in labs for c in expected_checks(lab))
    assert best > 0 and len(results["tests"]) == sum(len(expected_checks(lab)) for lab in labs)
    tests = results["tests"]
    assert results["score"] == sum(t["score"] for t in tests) == sum(t["max_score"] for t in tests) == best, \
        results["output"]
    assert all(t["status"] == "passed" for t in tests), [t for t in tests if t["status"] != "passed"]
    assert {lab: r["status"] for lab, r in results["extra_data"]["labs"].items()} == dict.fromkeys(labs, "passed")
    assert "grader.py exited with status 0" in proc.stdout


L1_UNSCALED = ("/ math.sqrt(d_k)", "")  # lab 1 wrong, lab 2 right: lab 2's own-labs check fails, lab 2 does not


def test_a_zero_point_check_that_fails_is_advice_not_a_red_failure(autograder, tmp_path):
    def upload(folder: Path):
        solution("lab1", "lab2")(folder)
        path = folder / LAB_FILES["lab1"]
        text = path.read_text()
        assert L1_UNSCALED[0] in text
        path.write_text(text.replace(*L1_UNSCALED))
    _, results = run_autograder(autograder(("lab2",)), tmp_path / "autograder", upload)
    assert results["score"] == sum(c.points for c in expected_checks("lab2"))  # nothing of lab 2's is charged
    (chain,) = [t for t in results["tests"] if t["name"] == "lab2 · works with your own earlier labs"]
    assert chain["max_score"] == 0 and chain["score"] == 0
    assert red_zero_point_failures(results) == []
    assert chain["output"].startswith(ADVICE) and "fix lab 1 first" in chain["output"], chain["output"]
    assert "fix lab 1 first" in results["output"]  # the summary says it too
    # the assertion bites: the same results as the old rule wrote them (a failed check is a failed test)
    old = copy.deepcopy(results)
    next(t for t in old["tests"] if t["name"] == chain["name"])["status"] = "failed"
    assert red_zero_point_failures(old) == [chain["name"]]
