"""Lab 6's step cost is proven by tokens: generations that recompute the sequence fail 'one token per step', with a
message naming the mistake, however they reach the weights; correct generations of every style pass. Graded on lab 6
alone (tests/test_mutants.py grades every lab's mutants at once)."""
import pytest
import torch

from judge.oracles import llama_of, llama_steps
from tests.helpers import grade_many, submission
from tests.mutants import MUTANTS, VARIANTS

CHECK = "test_one_token_per_step"
RECOMPUTE = {m.id: m for m in MUTANTS if m.id in ("lab6-recompute-by-function", "lab6-recompute-behind-one-token",
                                                  "lab6-recompute-every-step")}
CORRECT = {m.id: m for m in VARIANTS if m.lab == "lab6"}
# a correct generation that bypasses the model's forward: the same cached steps, reached through the class
BYPASS = [("logits = model(idx, cache=cache, start_pos=0)", "logits = LlamaGPT.forward(model, idx, cache, 0)"),
          ("logits = model(next_id, cache=cache, start_pos=idx.size(1) - 1)",
           "logits = LlamaGPT.forward(model, next_id, cache, idx.size(1) - 1)")]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    specs = {"solution": (submission(tmp_path_factory.mktemp("solution")), ["lab6"]),
             "bypass": (submission(tmp_path_factory.mktemp("bypass"), "lab6", BYPASS), ["lab6"])}
    for m in [*RECOMPUTE.values(), *CORRECT.values()]:
        specs[m.id] = (submission(tmp_path_factory.mktemp(m.id), m.lab, m.edits), ["lab6"])
    return {key: labs["lab6"] for key, labs in grade_many(specs).items()}


@pytest.mark.parametrize("key", ["solution", *CORRECT])
def test_correct_generations_pass(key, graded):
    result = graded[key]
    failing = {name: c["message"][:300] for name, c in result["checks"].items() if not c["passed"]}
    assert result["status"] == "passed" and result["score"] == result["max"], failing


@pytest.mark.parametrize("key", list(RECOMPUTE))
def test_recomputing_fails_the_step_cost_only(key, graded):
    checks = graded[key]["checks"]
    assert not checks[CHECK]["passed"] and checks[CHECK]["hint"] == RECOMPUTE[key].hint, checks[CHECK]
    assert "expected" in checks[CHECK]["message"] and "got" in checks[CHECK]["message"]  # the tokens: the proof
    if key == "lab6-recompute-by-function":  # one-token calls, a cache of the right length: all else passes
        assert {name for name, c in checks.items() if not c["passed"]} == {CHECK}


def test_recompute_by_function_is_named(graded):
    """F.embedding and wk.weight read directly: no counter sees it; the tokens do, and the message says what they are."""
    message = graded["lab6-recompute-by-function"]["checks"][CHECK]["message"]
    assert "each call passed one new token" in message and "re-running the whole sequence" in message, message


def test_bypassing_the_forward_fails(graded):
    check = graded["bypass"]["checks"][CHECK]
    assert not check["passed"] and "never called the model's forward" in check["message"], check


def test_cached_steps_are_lab5_with_fixed_weights():
    """The judge's cached forward, in chunks, is lab 5's full forward when the weights stay the same."""
    D, H, KV, L, V = 32, 4, 2, 2, 11
    g = torch.Generator().manual_seed(0)
    shapes = {"tok_emb.weight": (V, D), "norm.weight": (D,), "lm_head.weight": (V, D)}
    for i in range(L):
        shapes.update({f"blocks.{i}.{n}": s for n, s in {
            "norm1.weight": (D,), "norm2.weight": (D,), "attn.wq.weight": (D, D), "attn.wk.weight": (KV * D // H, D),
            "attn.wv.weight": (KV * D // H, D), "attn.wo.weight": (D, D), "ffn.w1.weight": (4 * D, D),
            "ffn.w3.weight": (4 * D, D), "ffn.w2.weight": (D, 4 * D)}.items()})
    wts = {n: torch.randn(s, generator=g) / (s[-1] ** 0.5 if len(s) > 1 and n != "tok_emb.weight" else 1)
           for n, s in shapes.items()}
    idx = torch.randint(V, (3, 9), generator=g)
    step, past, logits = llama_steps(H, KV, L), None, []
    for start, end in ((0, 4), (4, 7), (7, 8), (8, 9)):
        out, past = step(wts, idx[:, start:end], past, start)
        logits.append(out)
    assert torch.allclose(torch.cat(logits, 1), llama_of(wts, H, KV, L)(idx), atol=1e-10)
