"""What a student sees (captured with colour off): heatmaps, the loss sparkline, hints, trimmed tracebacks."""
from pack.hints import HINTS
from parent.verdict import expected_checks
from judge.shared import TrainingRun
from tests.helpers import run_grader, submission

LAB1 = sum(c.points for c in expected_checks("lab1"))


def flat(out: str) -> str:
    """The scorecard's words in order, without panel borders or line wraps."""
    return " ".join(out.replace("│", " ").split())


def test_a_leaking_mask_is_drawn_as_a_heatmap_with_its_hint(tmp_path):
    folder = submission(tmp_path / "s", "lab1", [('scores = scores.masked_fill(~mask, float("-inf"))', "pass  #")])
    out = run_grader("lab1", "--submission", folder, "-k", "upper_triangle_is_zero", "--hints").stdout
    assert "\x1b[" not in out  # no colour codes when not a terminal
    assert "yours (row = query, column = key)" in out and "expected (row = query, column = key)" in out
    yours_row0 = out.split("yours (row = query")[1].splitlines()[1]
    assert "·" not in yours_row0.split("  ")[0].strip("│ ")  # the student's first row leaks into the future
    assert HINTS["mask"][0][:40] in flat(out) and "Hint:" in out
    assert HINTS["mask"][1][:30] in flat(out)  # --hints adds the second, deeper hint


def test_lab2_draws_head_0_when_causality_fails(tmp_path):
    folder = submission(tmp_path / "s", "lab2", [("causal_mask(T, device=x.device))", "None)")])
    out = run_grader("lab2", "--submission", folder, "-k", "causality").stdout
    assert "attention weights of head 0, batch 0" in out and "█" in out
    assert HINTS["causal"][0][:40] in flat(out)


def test_lab4_shows_the_loss_curve_and_the_sample():
    out = run_grader("lab4", "--solutions", "-k", "loss_drops_30_percent", "-k", "greedy_continues_pattern").stdout
    line = next(l for l in out.splitlines() if f"over {TrainingRun.STEPS} steps" in l)
    assert set("▁▂▃▄▅▆▇█") & set(line)
    assert "greedy sample: 'hello transformer! hello" in out


def test_crashes_show_the_students_frames_and_verbose_the_full_traceback(tmp_path):
    folder = submission(tmp_path / "s", "lab3", [("return self.proj(self.act(self.fc(x)))", "return self.proj(self.act(self.fc(x, 1)))")])
    out = run_grader("lab3", "--submission", folder, "-k", "mlp_matches_oracle").stdout
    assert "TypeError" in out and "your code, innermost last" in out and "lab3_block.py:" in out
    assert "Traceback (most recent call last)" not in out
    verbose = run_grader("lab3", "--submission", folder, "-k", "mlp_matches_oracle", "--verbose").stdout
    assert "Traceback (most recent call last)" in verbose and HINTS["crash"][0][:30] in flat(verbose)


def test_one_exception_is_shown_once_and_not_blamed_on_devices(tmp_path):
    folder = submission(tmp_path / "s", "lab1", [("q @ k.transpose(-2, -1) / math.sqrt(d_k)", "q @ k.T / math.sqrt(d_k)")])
    out = flat(run_grader("lab1", "--submission", folder).stdout)
    others = len(expected_checks("lab1")) - 2  # every check but the mask's and the first to fail
    assert out.count("must match the size") == 1 and f"(the same error in {others} more checks)" in out
    assert out.count("the same error as in “output shape”") == others and HINTS["device"][0][:30] not in out


def test_checks_are_selected_by_the_name_as_printed():
    out = run_grader("lab1", "--solutions", "-k", "upper triangle", "-k", "device-discipline").stdout
    assert "upper triangle is zero" in out and "device discipline" in out and "Total 3/3" in out


def test_a_missing_package_says_how_to_install_it():
    import subprocess
    import sys
    from tests.helpers import ROOT
    proc = subprocess.run([sys.executable, "-S", str(ROOT / "grader.py"), "lab1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "'torch' is not installed" in proc.stderr
    assert "pip install -r requirements.txt" in proc.stderr and "Traceback" not in proc.stderr


def test_watch_mode_grades_again_when_a_lab_file_is_saved(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from tests.helpers import ROOT
    folder = submission(tmp_path / "w")
    # Ctrl-C as at a terminal, however the tests were started (a background job inherits SIGINT ignored)
    proc = subprocess.Popen([sys.executable, str(ROOT / "grader.py"), "lab1", "--submission", str(folder), "--watch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        def next_total():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if line.startswith("Total"):
                    return line
            raise AssertionError("no scorecard within 60 s")
        assert f"Total {LAB1}/{LAB1}" in next_total()
        path = folder / "lab1_attention.py"
        path.write_text(path.read_text().replace("q @ k.transpose(-2, -1) / math.sqrt(d_k)", "q @ k.transpose(-2, -1)"))
        assert "lab 1 failed" in next_total()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()


def test_verbose_shows_what_the_code_printed_and_nothing_of_the_grader(tmp_path):
    folder = submission(tmp_path / "s", "lab1", [("import torch\n", "import torch\nprint('hello from lab 1')\n")])
    out = run_grader("lab1", "--submission", folder, "--verbose").stdout
    assert "What your code printed" in out and "hello from lab 1" in out and f"passed · {LAB1}/{LAB1}" in out
    assert "labgrade-" not in out and "site-packages" not in out and "Warning" not in out
    quiet = run_grader("lab1", "--submission", folder).stdout
    assert "hello from lab 1" not in quiet  # a passing lab without --verbose stays short
