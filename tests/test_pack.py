"""The pack as a whole: solutions pass, stubs are "not started", exit codes, JSON, stubs generated from solutions."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pack.labs import BONUS, CORE
from parent.verdict import expected_checks
from tests.helpers import PY, ROOT, TOTAL, run_grader, submission
from tools.make_stubs import expected_stubs, solution_regions, stub_source


def test_solutions_pass_every_check(tmp_path):
    proc = run_grader("all", "--solutions", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert all(t["status"] == "passed" and t["score"] == t["max_score"] for t in results["tests"])
    assert results["score"] == sum(c.points for lab in CORE for c in expected_checks(lab))
    assert f"Total {TOTAL}/{TOTAL}" in proc.stdout
    assert set(results["extra_data"]["labs"]) == set(CORE)  # `all` is the core labs: the bonus labs are asked for


def test_bonus_grades_labs_5_and_6(tmp_path):
    proc = run_grader("bonus", "--solutions", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results["extra_data"]["labs"]) == set(BONUS) == {"lab5", "lab6"}
    total = sum(c.points for lab in BONUS for c in expected_checks(lab))
    assert results["score"] == total and f"Total {total}/{total}" in proc.stdout
    assert all(t["status"] == "passed" for t in results["tests"])


def test_stubs_fail_every_lab_as_not_started(tmp_path):
    proc = run_grader("all", "--json", tmp_path / "r.json")
    assert proc.returncode == 1
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["score"] == 0
    assert {lab: r["status"] for lab, r in results["extra_data"]["labs"].items()} == dict.fromkeys(CORE, "not started")
    assert "Traceback" not in proc.stdout + proc.stderr


def test_json_follows_the_gradescope_schema(tmp_path):
    run_grader("lab2", "--solutions", "--json", tmp_path / "r.json")
    results = json.loads((tmp_path / "r.json").read_text())
    assert {"score", "execution_time", "output", "tests"} <= results.keys()
    assert len(results["tests"]) == len(expected_checks("lab2"))
    for test in results["tests"]:
        assert {"name", "score", "max_score", "status", "output", "tags"} <= test.keys()
        assert test["status"] in ("passed", "failed") and test["tags"] == ["lab2"]


L1_SOFTMAX = "weights = torch.softmax(scores, dim=-1)"
NAIVE_SOFTMAX = "weights = scores.exp() / scores.exp().sum(-1, keepdim=True)"  # fails the held-back check only


def test_a_held_back_check_shows_nothing_before_its_time(tmp_path):
    """A lab 1 failing only its held-back check: the summary and every visible test count the visible checks alone
    (no failure, no 14), the held-back test itself is there with its own visibility; shown with the others
    (--hidden-visibility visible), the summary counts it; a visible failure always shows."""
    checks = expected_checks("lab1")
    held = [c for c in checks if c.hidden]
    everything, visible = sum(c.points for c in checks), sum(c.points for c in checks if not c.hidden)
    assert held and visible < everything

    def graded(name, edit, *extra):
        folder = submission(tmp_path / name, "lab1", [edit])
        run_grader("lab1", "--submission", folder, "--json", tmp_path / f"{name}.json", *extra)
        return json.loads((tmp_path / f"{name}.json").read_text())

    results = graded("naive", (L1_SOFTMAX, NAIVE_SOFTMAX))
    shown = [t for t in results["tests"] if t["visibility"] == "visible"]
    (hidden,) = [t for t in results["tests"] if t["visibility"] != "visible"]
    assert hidden["visibility"] == "after_due_date" and hidden["status"] == "failed" and hidden["score"] == 0
    assert len(shown) == len(checks) - 1 and all(t["status"] == "passed" for t in shown), shown
    assert results["output"].startswith(f"lab1: passed {visible}/{visible} (visible checks"), results["output"]
    for text in [results["output"]] + [t["output"] for t in shown]:
        assert "fail" not in text and str(everything) not in text, text
    assert results["score"] == visible  # the grade itself counts every check (Gradescope's setting hides it)

    together = graded("together", (L1_SOFTMAX, NAIVE_SOFTMAX), "--hidden-visibility", "visible")
    assert together["output"].startswith(f"lab1: failed {visible}/{everything}"), together["output"]

    broken = graded("no-scale", ("/ math.sqrt(d_k)", ""))
    assert broken["output"].startswith("lab1: failed ") and "(visible checks" in broken["output"], broken["output"]
    assert any(t["status"] == "failed" and t["output"] for t in broken["tests"] if t["visibility"] == "visible")


def test_usage_errors_exit_2():
    proc = run_grader("lab9")
    assert proc.returncode == 2 and "all or bonus" in proc.stderr
    assert run_grader("lab1", "--submission", "/no/such/folder").returncode == 2
    assert run_grader("lab1", "--solutions", "--check", "no_such_check").returncode == 2


def test_one_check_can_be_selected(tmp_path):
    proc = run_grader("lab1", "--solutions", "-k", "causal_mask", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout
    assert [t["name"] for t in json.loads((tmp_path / "r.json").read_text())["tests"]] == ["lab1 · causal mask"]


def test_a_missing_lab_file_is_reported(tmp_path):
    (tmp_path / "lab1_attention.py").write_text((ROOT / "solutions" / "lab1_attention.py").read_text())
    proc = run_grader("all", "--submission", tmp_path, "--json", tmp_path / "r.json")
    labs = json.loads((tmp_path / "r.json").read_text())["extra_data"]["labs"]
    assert labs["lab1"]["status"] == "passed" and labs["lab2"]["status"] == "error"
    assert "lab2_multihead.py not found" in labs["lab2"]["detail"] and proc.returncode == 1


def test_stubs_are_generated_from_the_solutions():
    for name, text in expected_stubs().items():
        assert (ROOT / "labs" / name).read_text() == text, f"labs/{name} drifted: run python tools/make_stubs.py"
        solution = (ROOT / "solutions" / name).read_text()
        for region in solution_regions(solution):
            assert region.strip() not in text
        assert "raise NotImplementedError" in text


def test_stub_markers_are_checked():
    bad = "def f():\n    # BEGIN SOLUTION: x\n    return 1\n"
    try:
        stub_source(bad, "lab")
    except ValueError as exc:
        assert "unterminated" in str(exc)
    else:
        raise AssertionError("an unterminated region must be an error")


def test_checkers_run_under_plain_pytest(tmp_path):
    proc = subprocess.run([PY, "-m", "pytest", "checkers/", "-q", "-p", "no:cacheprovider", "--lab-dir", "solutions"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    stub = subprocess.run([PY, "-m", "pytest", "checkers/check_lab1.py", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    from parent.verdict import expected_checks
    assert stub.returncode == 1 and f"{len(expected_checks('lab1'))} failed" in stub.stdout
    (tmp_path / "lab3_block.py").write_bytes((ROOT / "solutions" / "lab3_block.py").read_bytes())
    alone = subprocess.run([PY, "-m", "pytest", "checkers/check_lab3.py", "-q", "-p", "no:cacheprovider", "-rs",
                            "--lab-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0 and "1 skipped" in alone.stdout and "not tried" in alone.stdout, alone.stdout[-2000:]


def test_with_own_labs_a_lab_failing_because_of_an_earlier_lab_points_at_it(tmp_path):
    from tests.helpers import submission
    folder = submission(tmp_path / "sub", "lab2", [("out.transpose(1, 2).contiguous().view(B, T, D)", "out.contiguous().view(B, T, D)")])
    proc = run_grader("lab4", "--submission", folder, "--json", tmp_path / "r.json", "--own-labs")
    labs = json.loads((tmp_path / "r.json").read_text())["extra_data"]["labs"]
    assert list(labs) == ["lab4"] and labs["lab4"]["status"] == "failed"
    assert "builds on lab 2" in proc.stdout


def requirement_pins() -> list:
    """(name, version, marker) of every pin in requirements.txt and requirements-notebooks.txt."""
    pins = []
    for line in "\n".join((ROOT / f).read_text() for f in ("requirements.txt", "requirements-notebooks.txt")).splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-r"):
            spec, _, marker = line.partition(";")
            name, _, version = spec.strip().partition("==")
            pins.append((name, version, marker.strip()))
    return pins


@pytest.mark.parametrize("python", ["3.10", "3.13"])
def test_every_pin_installs_on_the_pythons_courses_run(python, tmp_path):
    """Gradescope's default image has Python 3.10, Colab a newer one: each pin (after its marker) has a wheel there."""
    from packaging.markers import Marker
    env = {"python_version": python, "python_full_version": python + ".0"}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    for name, version, marker in requirement_pins():
        assert version, f"{name} is not pinned exactly"
        if marker and not Marker(marker).evaluate(env):
            continue
        if name == "torch":  # its wheel is ~0.5 GB: ask the index which versions it has for this Python
            proc = subprocess.run(pip + ["index", "versions", name, "--python-version", python, "--only-binary=:all:"],
                                  capture_output=True, text=True, timeout=300)
            assert version in proc.stdout.split("Available versions:")[-1].splitlines()[0].replace(",", " ").split(), \
                (name, python, proc.stdout[-500:], proc.stderr[-500:])
            continue
        proc = subprocess.run(pip + ["download", "--no-deps", "--python-version", python, "--only-binary=:all:",
                                     "-d", str(tmp_path), f"{name}=={version}"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (name, python, proc.stderr[-800:])


@pytest.mark.parametrize("python", ["3.10", "3.13"])
def test_the_pins_resolve_together_on_the_pythons_courses_run(python, tmp_path):
    """Not only each pin alone: every pin (torch aside: its wheel is ~0.5 GB) with all it depends on resolves as one
    set there, JupyterLab's own dependencies included, so `pip install -r requirements-notebooks.txt` works."""
    from packaging.markers import Marker
    env = {"python_version": python, "python_full_version": python + ".0"}
    wanted = [f"{name}=={version}" for name, version, marker in requirement_pins()
              if name != "torch" and (not marker or Marker(marker).evaluate(env))]
    assert "jupyterlab" in {w.split("==")[0] for w in wanted}  # a front end: README's `jupyter lab` command
    (tmp_path / "pins.txt").write_text("\n".join(wanted) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--dry-run",
                           "--ignore-installed", "--python-version", python, "--only-binary=:all:",
                           "--target", str(tmp_path / "target"), "-r", str(tmp_path / "pins.txt")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "Would install" in proc.stdout, (python, proc.stderr[-1500:])


def test_readmes_jupyter_command_starts_a_server(tmp_path):
    """README's `.venv/bin/jupyter lab notebooks/`: the pinned front end starts and serves (headless, a free port,
    no browser), and its kernel spec is there."""
    import socket
    import time
    import urllib.request
    jupyter = Path(sys.executable).with_name("jupyter")
    assert jupyter.is_file()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    server = subprocess.Popen([str(jupyter), "lab", str(ROOT / "notebooks"), "--no-browser", "--allow-root",
                               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=t",
                               "--ServerApp.ip=127.0.0.1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, answer = time.monotonic() + 120, None
        while answer is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernelspecs?token=t", timeout=5) as r:
                    answer = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert answer is not None, server.stderr.read1().decode(errors="replace")[-1500:] if server.poll() is not None else "no answer"
        assert "python3" in answer["kernelspecs"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token=t", timeout=10) as r:
            assert r.status == 200 and b"JupyterLab" in r.read()
    finally:
        server.terminate()
        server.wait(timeout=30)
