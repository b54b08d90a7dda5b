"""Adding a lab touches only the files README's "Adding a lab" lists: a lab 7 made from a template in a copy of the
pack (its solution, its checker and its registry entry), then its stub and notebook generated, and graded."""
import re
import shutil
import subprocess
import sys

from tests.helpers import ROOT

SOLUTION = '''"""Lab 7: a scaled residual.

Contract:
    residual(x, alpha) -> x + alpha * x.tanh(), same shape and dtype as x.
"""
import torch


def residual(x: torch.Tensor, alpha: float) -> torch.Tensor:
    # BEGIN SOLUTION: return x plus alpha times tanh(x)
    return x + alpha * x.tanh()
    # END SOLUTION
'''

CHECKER = '''"""Lab 7 checks: the scaled residual."""
import torch

from judge.checks import points
from judge.compare import expect_close, randn

LAB = "lab7_residual"


@points(2)
def test_matches_oracle(w):
    """residual(x, alpha) equals x + alpha * tanh(x)."""
    x = randn(3, 5)
    expect_close(w.call((LAB, "residual"), x, 0.5), x + 0.5 * torch.tanh(x), "residual(x, 0.5)",
                 hint="residual_tanh")
'''

ENTRY = '''    Lab("lab7", 7, "lab7_residual", "A scaled residual", try_cell="print(residual(torch.ones(2), 0.5))",
        hints={"residual_tanh": ("Add alpha * x.tanh() to x.", "")}),
'''

# what README's "Adding a lab" names (besides the generated stubs and notebooks)
TOUCHED = {"solutions/lab7_residual.py", "checkers/check_lab7.py", "pack/labs.py", "README.md"}


def test_readme_names_exactly_the_files_a_new_lab_touches():
    section = (ROOT / "README.md").read_text().split("## Adding a lab", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:solutions|checkers|pack)/[\w/<>.]+|README\.md)`", section))
    assert named == {"solutions/lab<N>_<name>.py", "checkers/check_lab<N>.py", "pack/labs.py", "README.md"}, named


def test_a_new_lab_from_the_template_is_graded(tmp_path):
    copy = tmp_path / "pack"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, copy / name)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    (copy / "solutions" / "lab7_residual.py").write_text(SOLUTION)
    (copy / "checkers" / "check_lab7.py").write_text(CHECKER)
    registry = (copy / "pack" / "labs.py").read_text()
    registry = registry.replace('        try_cell="try_cache(LlamaGPT, generate_cached)"),\n',
                                '        try_cell="try_cache(LlamaGPT, generate_cached)"),\n' + ENTRY)
    assert "lab7_residual" in registry
    (copy / "pack" / "labs.py").write_text(registry)
    readme = (copy / "README.md").read_text()
    (copy / "README.md").write_text(readme + "\n| 7 | `labs/lab7_residual.py` | `residual` |\n")

    py = [sys.executable, "-B"]
    for tool in ("tools/make_stubs.py", "tools/make_notebooks.py"):
        proc = subprocess.run([*py, tool], cwd=copy, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    changed = {str(p) for p in after if before.get(p) != after[p]}
    assert changed == TOUCHED | {"labs/lab7_residual.py", "notebooks/lab7_residual.ipynb"}, changed
    assert 'raise NotImplementedError("lab7_residual' in (copy / "labs" / "lab7_residual.py").read_text()

    def grade(*args):
        return subprocess.run([*py, "grader.py", "lab7", "--device", "cpu", *args], cwd=copy, capture_output=True,
                              text=True, timeout=300)
    solved = grade("--solutions")
    assert solved.returncode == 0 and "passed" in solved.stdout and "2/2" in solved.stdout, solved.stdout + solved.stderr
    stub = grade()
    assert stub.returncode == 1 and "not started" in stub.stdout, stub.stdout + stub.stderr
    mutant = tmp_path / "mutant"
    mutant.mkdir()
    (mutant / "lab7_residual.py").write_text(SOLUTION.replace("x + alpha * x.tanh()", "x + alpha * x.sigmoid()"))
    wrong = grade("--submission", str(mutant))
    assert wrong.returncode == 1 and "failed" in wrong.stdout, wrong.stdout + wrong.stderr
    assert "Add alpha * x.tanh() to x." in wrong.stdout, wrong.stdout
