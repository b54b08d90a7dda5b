"""What the grader skips or remembers to go faster gives the same answers as the work it saves: the GELU flavour
decided without the tanh oracle, the shortcut guard's remembered verdicts, seeding without CUDA's queue, and the
checkers' parsed source. Each beside the case that must still take the long way."""
import os
import time

import pytest
import torch
import torch.nn.functional as F

from judge.shared import SAME_GELU, gelu_flavour
from parent import verdict
from protocol.values import seed
from worker.guards import ForbiddenShortcut, ShortcutGuard


def mlp(x, approximate):
    return F.gelu(x @ torch.linspace(-2, 2, 12).view(3, 4).double(), approximate=approximate)


@pytest.mark.parametrize("used", ["none", "tanh"])
def test_the_gelu_flavour_is_the_closest_oracle_and_tanh_is_built_only_when_needed(used):
    x = torch.linspace(-3, 3, 15).view(5, 3).double()
    asked = []

    def oracle(approximate):
        asked.append(approximate)
        return mlp(x, approximate)
    assert gelu_flavour(mlp(x, used).float(), oracle) == used
    assert asked == (["none"] if used == "none" else ["none", "tanh"])
    # the two differ far beyond the bound under which 'none' is taken without asking for 'tanh'
    assert float((mlp(x, "none") - mlp(x, "tanh")).abs().max()) > 10 * SAME_GELU


def test_a_nearly_none_output_still_compares_both_flavours():
    x = torch.linspace(-3, 3, 15).view(5, 3).double()
    asked = []
    out = mlp(x, "none") + 0.6 * (mlp(x, "tanh") - mlp(x, "none"))  # closer to tanh, not within SAME_GELU of none
    assert gelu_flavour(out, lambda a: asked.append(a) or mlp(x, a)) == "tanh" and asked == ["none", "tanh"]


def test_the_guard_remembers_allowed_functions_and_never_a_forbidden_one():
    hits = []
    guard = ShortcutGuard(hits, set(), "/nowhere")
    q = torch.randn(1, 2, 4, 8)
    with guard:
        for _ in range(3):
            torch.matmul(q, q.transpose(-1, -2))
        assert torch.matmul in guard.allowed
        for _ in range(2):  # caught at every call, not only the first
            with pytest.raises(ForbiddenShortcut):
                F.scaled_dot_product_attention(q, q, q)
    assert hits == ["scaled_dot_product_attention"] * 2 and F.scaled_dot_product_attention not in guard.allowed


def test_the_guard_lets_a_stand_in_through_and_still_catches_the_student_after_it():
    def standin(q):  # plays the pack's stand-in: its code object is trusted
        return F.scaled_dot_product_attention(q, q, q)
    hits = []
    guard = ShortcutGuard(hits, {id(standin.__code__)}, os.path.dirname(__file__))
    q = torch.randn(1, 2, 4, 8)
    with guard:
        standin(q)
        with pytest.raises(ForbiddenShortcut):
            F.scaled_dot_product_attention(q, q, q)  # this file is the "lab folder": the student's own call
    assert hits == ["scaled_dot_product_attention"]


def test_seeding_draws_what_torch_manual_seed_draws_without_seeding_cuda(monkeypatch):
    torch.manual_seed(3)
    want = torch.randn(5), torch.randint(10, (4,))
    cuda_seeds = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda n: cuda_seeds.append(n))
    seed(3)
    assert all(torch.equal(a, b) for a, b in zip(want, (torch.randn(5), torch.randint(10, (4,)))))
    assert cuda_seeds == ([3] if torch.cuda.is_initialized() else [])  # its stack trace costs ~0.5 ms a call
    seed(4, cuda=True)  # a process that grades on CUDA seeds it as torch.manual_seed does
    assert cuda_seeds[-1] == 4


def test_a_checker_is_parsed_again_when_it_changes(tmp_path, monkeypatch):
    (tmp_path / "check_labx.py").write_text("def test_one(w):\n    '''one'''\n")
    monkeypatch.setattr(verdict, "CHECKERS", tmp_path)
    monkeypatch.setattr(verdict, "_PARSED", {})
    assert [c.name for c in verdict.expected_checks("labx")] == ["test_one"]
    assert verdict.expected_checks("labx") and len(verdict._PARSED) == 1  # read once
    later = time.time_ns() + 10_000_000
    (tmp_path / "check_labx.py").write_text("def test_one(w):\n    '''one'''\n\n\ndef test_two(w):\n    '''two'''\n")
    os.utime(tmp_path / "check_labx.py", ns=(later, later))
    assert [c.name for c in verdict.expected_checks("labx")] == ["test_one", "test_two"]
