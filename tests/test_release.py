"""The student release (tools/release.py) and the Gradescope autograder zip (tools/gradescope.py)."""
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import LAB_FILES, ROOT
from tools.gradescope import build_zip, torch_pin
from tools.make_stubs import expected_stubs, solution_regions
from tools.release import HELD_BACK_FILES, PACKAGES, write_release

RELEASE_TOP = {"labs", "notebooks", "pack", "protocol", "parent", "judge", "checkers", "worker", "grader.py", "pytest.ini", "requirements.txt",
               "requirements-notebooks.txt", "Dockerfile", "README.md"}
RELEASE_TOP |= {".dockerignore"} if (ROOT / ".dockerignore").is_file() else set()
# Lines the grader necessarily shares with the solutions, allowed under checkers/, judge/, worker/ and pack/ (the hints) only: idioms of the hints, and
# the declarations of the contract (its docstrings name them) that the stand-ins for earlier labs must make. Any
# other overlap fails the leak test and needs a look.
ORACLE_IDIOMS = {"d_k = q.size(-1)", "if mask is not None:", "return out, weights", "loss.backward()",
                 "return torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))",
                 "self.dropout = nn.Dropout(dropout)", "self.proj = nn.Linear(expansion * d_model, d_model)",
                 "self.ln1 = nn.LayerNorm(d_model)", "self.ln2 = nn.LayerNorm(d_model)", "self.mlp = MLP(d_model)",
                 "self.attn = MultiHeadAttention(d_model, n_heads, dropout)",
                 "self.tok_emb = nn.Embedding(vocab_size, d_model)", "for block in self.blocks:",
                 # lab 5's stand-in: the contract's declarations and formulas (its docstring states them)
                 "return self.w2(F.silu(self.w1(x)) * self.w3(x))", "d = x.size(-1)",
                 "self.wv = nn.Linear(d_model, n_kv_heads * self.d_head, bias=False)",
                 "self.wo = nn.Linear(d_model, d_model, bias=False)", "positions = torch.arange(T, device=x.device)",
                 "x = x + self.attn(self.norm1(x))", "return x + self.ffn(self.norm2(x))"}


def run_in(folder: Path, *args, env=None):
    """`python grader.py ARGS` in `folder` (a release or an unpacked zip), writing no bytecode there."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    return subprocess.run([sys.executable, "grader.py", *map(str, args)], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release")
    write_release(out)
    return out


@pytest.fixture(scope="module")
def autograder_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gradescope") / "autograder.zip"
    build_zip(out, "--visibility after_due_date")
    return out


def test_release_holds_exactly_the_student_files(release):
    assert {p.name for p in release.iterdir()} == RELEASE_TOP
    assert {p.name: p.read_text() for p in (release / "labs").iterdir()} == expected_stubs()
    for package in PACKAGES:
        shipped = {p.relative_to(release) for p in (release / package).rglob("*") if p.is_file()}
        assert shipped == {p.relative_to(ROOT) for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts
                           and p.relative_to(ROOT) not in HELD_BACK_FILES}
    assert HELD_BACK_FILES and not [p for p in HELD_BACK_FILES if (release / p).exists()]  # lab 4's stand-in


def test_release_refuses_a_folder_that_is_not_empty(release):
    with pytest.raises(FileExistsError):
        write_release(release)


def test_no_solution_code_leaks_into_the_release(release):
    texts = {p.relative_to(release): p.read_text(errors="replace") for p in release.rglob("*") if p.is_file()}
    assert not [p for p in release.rglob("*") if p.is_dir() and p.name == "solutions"]
    public = "".join(expected_stubs().values())  # contract docstrings and TODOs are the stubs' own text
    for name in LAB_FILES.values():
        for region in solution_regions((ROOT / "solutions" / name).read_text()):
            for line in (line.strip() for line in region.splitlines()):
                if len(line) <= 12 or line.startswith("#") or line in public:
                    continue
                leaks = [str(p) for p, text in texts.items()
                         if line in text and not (line in ORACLE_IDIOMS and p.parts[0] in ("checkers", "judge", "worker", "pack"))]
                assert not leaks, f"solutions/{name}: {line!r} appears in {leaks}"


def test_release_readme_has_no_instructor_section(release):
    readme = (release / "README.md").read_text()
    assert "instructors-only" not in readme and "--solutions" not in readme
    assert "## For students" in readme and "\n\n\n" not in readme
    # for students: setup, the walkthrough, the options, the statuses; not the grader's internals or its limits
    assert all(s in readme for s in ("pip install -r requirements.txt", "### Lab 4", "--watch", "| not started |",
                                     "works with your own earlier labs", "will run when you submit"))
    assert not [s for s in ("How grading works", "How grading stays honest", "What is not", "zygote", "Confinement",
                            "hidden=True", "--own-labs") if s in readme]


def test_release_grades_its_stubs_and_has_no_solutions(release):
    proc = run_in(release, "lab1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not started" in proc.stdout
    assert "1 more check (2 points) will run when you submit" in " ".join(proc.stdout.replace("│", " ").split())
    proc = run_in(release, "lab1", "--solutions")
    assert proc.returncode == 2 and "no solutions/ folder" in proc.stderr


def test_bonus_labs_run_on_the_students_own_lab_4_in_the_release(release, tmp_path):
    """The release has no lab 4 stand-in: lab 5 runs on the student's own lab 4 (here the stub, so lab 5 says to fix
    lab 4 first), while lab 6 still runs on the stand-in for lab 5."""
    folder = shutil.copytree(release, tmp_path / "copy")
    for lab in ("lab5", "lab6"):
        shutil.copyfile(ROOT / "solutions" / LAB_FILES[lab], folder / "labs" / LAB_FILES[lab])
    proc = run_in(folder, "bonus", "--json", tmp_path / "r.json")
    labs = json.loads((tmp_path / "r.json").read_text())["extra_data"]["labs"]
    assert labs["lab5"]["status"] == "failed" and labs["lab6"]["status"] == "passed", proc.stdout
    assert "fix lab 4 first" in " ".join(proc.stdout.replace("│", " ").split())
    assert "Traceback" not in proc.stdout + proc.stderr


def test_gradescope_zip_layout_and_scripts(autograder_zip):
    with zipfile.ZipFile(autograder_zip) as zf:
        names = set(zf.namelist())
        assert {"setup.sh", "run_autograder", "grader.py", "pytest.ini", "requirements.txt"} <= names
        for package in PACKAGES:
            assert {f"{package}/{p.name}" for p in (ROOT / package).glob("*.py")} <= names
        assert not [n for n in names if n.split("/")[0] in ("solutions", "labs", "tests", "tools")]
        for script in ("setup.sh", "run_autograder"):
            assert stat.S_IMODE(zf.getinfo(script).external_attr >> 16) == 0o755
        run = zf.read("run_autograder").decode()
        setup = zf.read("setup.sh").decode()
    assert "grader.py all --gradescope --visibility after_due_date" in run
    assert run.rstrip().splitlines()[-1] == "exit 0"
    for script in (run, setup):  # Gradescope's root unless GRADESCOPE_ROOT names another (a zip tried locally)
        assert 'root="${GRADESCOPE_ROOT:-/autograder}"' in script and "/autograder/" not in script
    pin = torch_pin((ROOT / "requirements.txt").read_text())
    assert f"pip install {pin} --index-url https://download.pytorch.org/whl/cpu" in setup
    assert "grep -v '^torch==' requirements.txt" in setup


def test_gradescope_grades_a_submission_end_to_end(autograder_zip, tmp_path):
    source, autograder = tmp_path / "source", tmp_path / "autograder"
    with zipfile.ZipFile(autograder_zip) as zf:
        zf.extractall(source)
    nested = autograder / "submission" / "my-labs"  # students often upload a folder
    nested.mkdir(parents=True)
    for name in LAB_FILES.values():
        shutil.copyfile(ROOT / "solutions" / name, nested / name)
    proc = run_in(source, "lab1", "--gradescope", "--visibility", "after_due_date",
                  env={"GRADESCOPE_ROOT": str(autograder)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((autograder / "results" / "results.json").read_text())
    assert {"score", "execution_time", "output", "tests", "visibility", "stdout_visibility"} <= results.keys()
    assert results["tests"]
    for test in results["tests"]:
        assert {"name", "score", "max_score", "status", "output"} <= test.keys()
        assert test["status"] in ("passed", "failed")
        assert test["tags"] == ["lab1"] and test["visibility"] == "after_due_date"
    assert results["score"] == sum(t["max_score"] for t in results["tests"]) > 0
    assert results["visibility"] == "after_due_date"


def test_a_gradescope_autograder_for_one_lab(tmp_path):
    out = tmp_path / "lab1.zip"
    build_zip(out, labs=["lab1"])
    with zipfile.ZipFile(out) as zf:
        run = zf.read("run_autograder").decode()
    assert "python3 grader.py lab1 --gradescope" in run and 'chmod 0700 "$GRADESCOPE_ROOT/results"' in run
    with pytest.raises(ValueError):
        build_zip(tmp_path / "bad.zip", labs=["lab9"])
    build_zip(tmp_path / "bonus.zip", labs=["bonus"])  # the bonus labs on their own
    with zipfile.ZipFile(tmp_path / "bonus.zip") as zf:
        assert "python3 grader.py bonus --gradescope" in zf.read("run_autograder").decode()
        assert "worker/standins/lab4_gpt.py" in zf.namelist()  # held back from students, not from the autograder


def test_hidden_checks_are_shown_after_the_due_date_on_gradescope(autograder_zip, tmp_path):
    source, autograder = tmp_path / "source", tmp_path / "autograder"
    with zipfile.ZipFile(autograder_zip) as zf:
        zf.extractall(source)
    (autograder / "submission").mkdir(parents=True)
    shutil.copyfile(ROOT / "solutions" / LAB_FILES["lab2"], autograder / "submission" / LAB_FILES["lab2"])
    proc = run_in(source, "lab2", "--gradescope", env={"GRADESCOPE_ROOT": str(autograder)})
    assert proc.returncode == 0, proc.stdout + proc.stderr  # lab 2 alone: graded on the pack's lab 1
    tests = json.loads((autograder / "results" / "results.json").read_text())["tests"]
    hidden = {t["name"] for t in tests if t["visibility"] == "after_due_date"}
    assert hidden == {"lab2 · other sizes and lengths"}, hidden
    assert all(t["visibility"] == "visible" for t in tests if t["name"] not in hidden)
    assert all(t["status"] == "passed" for t in tests)


def test_gradescope_writes_results_for_an_empty_submission(autograder_zip, tmp_path):
    source, autograder = tmp_path / "source", tmp_path / "autograder"
    with zipfile.ZipFile(autograder_zip) as zf:
        zf.extractall(source)
    (autograder / "submission").mkdir(parents=True)
    proc = run_in(source, "lab1", "--gradescope", env={"GRADESCOPE_ROOT": str(autograder)})
    assert proc.returncode != 0
    results = json.loads((autograder / "results" / "results.json").read_text())
    assert results["score"] == 0 and results["tests"]
