"""Hostile and broken submissions: the targeted lab is never awarded, earlier labs keep their verdict, the grader
returns within its limits, and the status names what happened."""
import json
import time

import pytest

from tests.helpers import ROOT, grade_many, run_grader, submission

L1_SCORES = "scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., Tq, Tk)"
L2_FORWARD = "        B, T, D = x.shape\n"
L3_RESIDUAL = "x = x + self.attn(self.ln1(x))"
L4_TRAIN = "    seq_len = seq_len or model.max_seq_len\n"
FORGED = '''
print("Total 62/62  (lab 1 passed, lab 2 passed, lab 3 passed, lab 4 passed)")
print('{"score": 62, "tests": [{"name": "lab3", "score": 13, "max_score": 13, "status": "passed"}]}')
print("============================== 40 passed in 1.00s ==============================")
'''
PATCH_COMPARISONS = '''
import torch, torch.testing
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.isclose = lambda a, b, *r, **k: torch.ones_like(a, dtype=torch.bool)
torch.testing.assert_close = lambda *a, **k: None
'''
PATCH_REPORTS = '''
import _pytest.reports
_pytest.reports.TestReport.outcome = property(lambda self: "passed", lambda self, value: None)
_pytest.reports.TestReport.passed = property(lambda self: True)
_pytest.reports.TestReport.failed = property(lambda self: False)
'''

# id: (lab, edits, expected status, a word the detail must contain)
CASES = {
    "infinite-loop": ("lab1", [(L1_SCORES, "while True:\n        pass")], "timeout", "time"),
    "sleep-in-train": ("lab4", [(L4_TRAIN, "    import time\n    time.sleep(10 ** 6)\n")], "timeout", "time"),
    "sys-exit-at-import": ("lab2", [("import torch\n", "import sys\nsys.exit(0)\nimport torch\n")], "exited", "exit"),
    "os-exit-in-forward": ("lab3", [("    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        # BEGIN SOLUTION: pre-norm",
                                     "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        import os; os._exit(0)\n        # BEGIN SOLUTION: pre-norm")],
                           "exited", "code 0"),
    "segfault": ("lab2", [(L2_FORWARD, L2_FORWARD + "        import os; os.abort()\n")], "crashed", "SIGSEGV"),
    "allocate-16-gib": ("lab2", [(L2_FORWARD, L2_FORWARD + "        torch.ones(4 * 2 ** 30)\n")], "out of memory", "memory"),
    "flood-output": ("lab1", [("import torch\n", "import torch\nprint('x' * 5_000_000)\n"),
                              (L1_SCORES, "scores = q @ k.transpose(-2, -1)")], "failed", ""),
    "forged-scorecard": ("lab3", [("import torch\n", "import torch\n" + FORGED), (L3_RESIDUAL, "x = self.attn(self.ln1(x))")],
                         "failed", ""),
    "patched-comparisons": ("lab1", [("import torch\n", "import torch\n" + PATCH_COMPARISONS),
                                     (L1_SCORES, "scores = q @ k.transpose(-2, -1)")], "forbidden", "torch.allclose"),
    "patched-test-report": ("lab4", [("import torch\n", "import torch\n" + PATCH_REPORTS),
                                     ("data[i + 1:i + seq_len + 1]", "data[i:i + seq_len]")], "forbidden", "TestReport"),
    "syntax-error": ("lab2", [("B, T, D = x.shape", "B, T, D = x.shape)")], "error", "lab2_multihead.py:"),
    "missing-import": ("lab3", [("import torch\n", "import torch\nimport tensorflow_transformer_magic\n")], "forbidden",
                       "tensorflow_transformer_magic"),
    "untouched-stub": ("lab4", None, "not started", "TODO"),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    specs = {}
    for case, (lab, edits, _, _) in CASES.items():
        folder = tmp_path_factory.mktemp(case)
        if edits is None:
            submission(folder, lab, source=(ROOT / "labs" / "lab4_gpt.py").read_text())
        else:
            submission(folder, lab, edits)
        specs[case] = (folder, ["lab1", "lab2", "lab3", "lab4"])
    start = time.monotonic()
    results = grade_many(specs, timeout=8, memory=4)
    results["_seconds"] = time.monotonic() - start
    return results


# a hang, crash, exit or memory blow-up costs the checks that ran into it (score 0 there), not the whole lab
PER_CHECK = {"timeout", "crashed", "exited", "out of memory"}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_submission(case, graded):
    lab, _, status, word = CASES[case]
    result = graded[case][lab]
    assert result["status"] == status, (result["status"], result["detail"])
    hit = [c for c in result["checks"].values() if c["kind"] in ("timeout", "crashed", "exit", "oom")]
    if status in PER_CHECK and hit:  # (a lab that could not even be imported scores 0, below)
        assert not any(c["passed"] for c in hit) and result["score"] < result["max"], result["checks"]
    else:
        assert result["score"] == 0 if status != "failed" else result["score"] < result["max"]
    assert word in result["detail"] + json.dumps(result["checks"]), result["detail"]
    for earlier in ("lab1", "lab2", "lab3", "lab4")[:int(lab[3]) - 1]:
        assert graded[case][earlier]["status"] == "passed", (earlier, graded[case][earlier]["detail"])


def test_a_flood_of_output_is_kept_as_head_and_tail(graded):
    assert 16_000 <= graded["flood-output"]["lab1"]["output_chars"] < 20_000  # 8 KB + 8 KB of 5 MB, and a marker


def test_grader_returns_within_its_limits(graded):
    # 13 submissions x 4 labs, 2 at a time, 8 s per lab: the time-outs dominate and stay bounded
    assert graded["_seconds"] < 120


def test_correct_submission_with_float64_default_passes(tmp_path):
    folder = submission(tmp_path / "f64")
    for name in ("lab1_attention.py", "lab2_multihead.py", "lab3_block.py", "lab4_gpt.py"):
        path = folder / name
        path.write_text(path.read_text().replace("import torch\n", "import torch\ntorch.set_default_dtype(torch.float64)\n", 1))
    results = grade_many({"f64": (folder, ["lab1", "lab2", "lab3", "lab4"])})["f64"]
    assert {lab: r["status"] for lab, r in results.items()} == dict.fromkeys(results, "passed"), results


def test_atexit_hook_cannot_rewrite_results(tmp_path):
    out = tmp_path / "results.json"
    perfect = json.dumps({"score": 62, "tests": []})
    folder = submission(tmp_path / "atexit", "lab2", [
        ("import torch\n", f"import atexit, torch\natexit.register(lambda: open({str(out)!r}, 'w').write({perfect!r}))\n"),
        ("return self.dropout(self.proj(out))", "return self.dropout(out)")])
    proc = run_grader("lab2", "--submission", folder, "--json", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert results["score"] < 12 and results["extra_data"]["labs"]["lab2"]["status"] == "failed"


def test_only_the_lab_files_are_taken(tmp_path):
    folder = submission(tmp_path / "extras", "lab1", [(L1_SCORES, "scores = q @ k.transpose(-2, -1)")])
    (folder / "conftest.py").write_text("def pytest_runtest_logreport(report):\n    report.outcome = 'passed'\n")
    (folder / "pytest.ini").write_text("[pytest]\naddopts = -p no:judge.plugin\n")
    (folder / "sitecustomize.py").write_text("import torch\ntorch.allclose = lambda *a, **k: True\n")
    (folder / "evil.pth").write_text("import os; os._exit(0)\n")
    result = grade_many({"extras": (folder, ["lab1"])})["extras"]["lab1"]
    assert result["status"] == "failed" and not result["checks"]["test_matches_oracle"]["passed"]


def test_fresh_interpreter_isolation_also_holds(tmp_path):
    good = submission(tmp_path / "good")
    bad = submission(tmp_path / "bad", "lab3", [("import torch\n", "import os\nos._exit(0)\n")])
    for folder, want in ((good, "passed"), (bad, "exited")):
        proc = run_grader("lab3", "--submission", folder, "--isolation", "spawn", "--json", tmp_path / "r.json")
        assert json.loads((tmp_path / "r.json").read_text())["extra_data"]["labs"]["lab3"]["status"] == want, proc.stdout
