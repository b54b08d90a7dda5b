"""No answer key ships with the checkers: their expected values come from torch's fused operators, which a lab
file may not call, and no hidden check reaches the student release."""
import json
import subprocess
import sys

import pytest

from tests.answer_key import hand_written
from tests.helpers import LAB_FILES, ROOT
from tools.release import write_release

HAND_WRITTEN_ATTENTION = '''
def attention(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights
'''


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    write_release(out)
    return out


def checker_files(folder):
    """The grader's code that could hold an answer: the judge, the checkers and the stand-ins the worker runs."""
    return sorted(p.relative_to(folder).as_posix() for package in ("judge", "checkers", "worker/standins")
                  for p in (folder / package).rglob("*.py") if p.relative_to(folder).as_posix() != "judge/main.py")
    # judge/main.py is the judge process's entry point: its `run` ends the process it runs in


def look(folder, files) -> list:
    proc = subprocess.run([sys.executable, "-m", "tests.answer_key", str(folder), *files], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@")]
    assert marker, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(marker[-1][2:])


def test_the_scan_finds_attention_and_head_splits_written_by_hand():
    assert hand_written(HAND_WRITTEN_ATTENTION)
    assert any("softmax" in h for h in hand_written((ROOT / "solutions" / LAB_FILES["lab1"]).read_text()))
    lab2 = hand_written((ROOT / "solutions" / LAB_FILES["lab2"]).read_text())
    assert any("head split" in h for h in lab2) and any("swapped" in h for h in lab2)


@pytest.mark.parametrize("where", ["pack", "release"])
def test_no_checker_writes_attention_or_a_head_split_by_hand(where, release):
    folder = ROOT if where == "pack" else release
    found = {f: hand_written((folder / f).read_text()) for f in checker_files(folder)}
    assert not {f: hits for f, hits in found.items() if hits}


def test_the_run_time_look_finds_the_solutions():
    found = look(ROOT / "solutions", [LAB_FILES[lab] for lab in ("lab1", "lab2", "lab3")])
    assert {"lab1_attention.py:scaled_dot_product_attention reproduces lab1",
            "lab2_multihead.py:MultiHeadAttention reproduces lab2", "lab3_block.py:TransformerBlock reproduces lab3"} <= set(found)


# torch has no rope and no SwiGLU: their oracles (and the lab 5 stand-in's) are the contract's formulas, which the
# stub's docstring states; nothing else of lab 5 may be reproduced (README: No answer key)
FORMULAS = {"judge/oracles.py:rope reproduces lab5 rope", "judge/oracles.py:swiglu reproduces lab5 swiglu",
            "worker/standins/lab5_llama.py:rope reproduces lab5 rope",
            "worker/standins/lab5_llama.py:SwiGLU reproduces lab5 swiglu"}


def test_nothing_released_reproduces_a_lab_without_torchs_fused_operators(release):
    assert set(look(release, checker_files(release))) == FORMULAS


def test_the_run_time_look_finds_lab5_by_hand():
    found = set(look(ROOT / "solutions", [LAB_FILES["lab5"]]))
    assert {f"lab5_llama.py:{name}" for name in ("RMSNorm reproduces lab5 rmsnorm", "rope reproduces lab5 rope",
                                                  "GQAttention reproduces lab5 attention",
                                                  "LlamaBlock reproduces lab5 block")} <= found


def test_no_hidden_check_reaches_the_release(release):
    from parent.verdict import expected_checks
    for lab, name in LAB_FILES.items():
        hidden = [c for c in expected_checks(lab) if c.hidden]
        assert hidden, f"{lab} has no hidden check"
        text = (release / "checkers" / f"check_{lab}.py").read_text()
        assert "hidden=True" not in text
        assert not [c.name for c in hidden if c.name in text]
        assert f"HELD_BACK = ({len(hidden)}, {sum(c.points for c in hidden)})" in text
