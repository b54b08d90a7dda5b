"""Lab 2 checks: multi-head causal self-attention."""
import math
from contextlib import contextmanager

import torch
import torch.nn as nn

from checkers.common import (CheckFailure, attr, causal, eval_mode, expect_causal, expect_close,
                             expect_every_parameter_gets_a_gradient, expect_tensor, fail, figure, oracle_attention,
                             oracle_mha, points, randn, student, _grid)
from checkers.guards import expect_device_discipline, expect_no_shortcuts

LAB = "lab2_multihead"


def build(d_model=16, n_heads=4, **kwargs) -> nn.Module:
    return eval_mode(attr(student(LAB), "MultiHeadAttention")(d_model, n_heads, **kwargs))


def buggy_mha(mha, x, bug: str):
    """The oracle with one classic mistake in it, to name the mistake a wrong output matches."""
    B, T, D = x.shape
    H = mha.n_heads
    q, k, v = (x @ mha.qkv.weight.T + mha.qkv.bias).split(D, dim=-1)
    split = (lambda t: t.reshape(B, H, T, D // H)) if bug == "heads" else (lambda t: t.view(B, T, H, D // H).transpose(1, 2))
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-2, -1) / (1 if bug == "scale" else math.sqrt(D // H))
    if bug != "causal":
        scores = scores.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device)), float("-inf"))
    out = torch.softmax(scores, -1) @ v
    out = out.reshape(B, T, D) if bug == "merge" else out.transpose(1, 2).reshape(B, T, D)
    return out if bug == "proj" else out @ mha.proj.weight.T + mha.proj.bias


def diagnose(mha, x, out) -> str:
    for bug, hint in (("heads", "heads"), ("merge", "heads"), ("scale", "scale"), ("causal", "causal"), ("proj", "proj")):
        want = buggy_mha(mha, x, bug)
        if want.shape == out.shape and bool(((want - out.detach()).abs() < 1e-4).all()):
            return hint
    return "heads"


@contextmanager
def head0_heatmap_on_failure(mha, x):
    """If the block fails, attach head 0's attention weights beside the expected ones."""
    try:
        yield
    except CheckFailure:
        head0_heatmap(mha, x)
        raise


def head0_heatmap(mha, x):
    """Attach head 0's weights (batch 0) as the student's lab 1 call computed them, beside the expected ones."""
    seen, modules = [], [student(LAB), student("lab1_attention")]
    originals = [getattr(m, "scaled_dot_product_attention", None) for m in modules]

    def spy(*args, **kwargs):
        out = originals[1](*args, **kwargs)
        seen.append(out[1])
        return out
    try:
        for m, original in zip(modules, originals):
            if original is not None:
                m.scaled_dot_product_attention = spy
        with torch.no_grad():
            mha(x)
    except Exception:
        return
    finally:
        for m, original in zip(modules, originals):
            if original is not None:
                m.scaled_dot_product_attention = original
    B, T, D = x.shape
    d_head = D // mha.n_heads
    q, k, _ = (x @ mha.qkv.weight.T + mha.qkv.bias).split(D, dim=-1)
    want = oracle_attention(q[..., :d_head], k[..., :d_head], k[..., :d_head], causal(T))[1]
    got = seen[0] if seen else None
    if got is not None and got.dim() == 4 and got.shape[-2:] == (T, T):
        figure("heatmap", title="attention weights of head 0, batch 0", got=_grid(got[0, 0]), want=_grid(want[0]))


@points(2)
def test_mha_exists():
    """Module-level `mha` is a MultiHeadAttention with n_heads > 1, D % n_heads == 0, fused qkv and proj."""
    module = student(LAB)
    cls, mha = attr(module, "MultiHeadAttention"), attr(module, "mha")
    if not isinstance(mha, cls):
        fail(f"`mha` must be an instance of MultiHeadAttention, got {type(mha).__name__}.", "heads")
    qkv, proj = getattr(mha, "qkv", None), getattr(mha, "proj", None)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
        fail("MultiHeadAttention needs self.qkv = nn.Linear(d_model, 3 * d_model) and self.proj = "
             "nn.Linear(d_model, d_model).", "heads")
    D, n_heads = proj.in_features, getattr(mha, "n_heads", None)
    if (qkv.in_features, qkv.out_features, proj.out_features) != (D, 3 * D, D):
        fail(f"qkv must map D -> 3D and proj D -> D; got qkv {qkv.in_features} -> {qkv.out_features}, proj "
             f"{proj.in_features} -> {proj.out_features}.", "heads")
    if not (isinstance(n_heads, int) and n_heads > 1 and D % n_heads == 0):
        fail(f"mha.n_heads must be an int > 1 that divides d_model={D}; got {n_heads!r}.", "heads")
    if getattr(mha, "d_head", None) != D // n_heads:
        fail(f"mha.d_head must be d_model // n_heads = {D // n_heads}; got {getattr(mha, 'd_head', None)!r}.", "heads")


@points(1)
def test_output_shape():
    """forward maps (B, T, D) to (B, T, D)."""
    for D, H, T in ((16, 4, 8), (24, 3, 5)):
        expect_tensor(build(D, H)(randn(2, T, D)), f"MultiHeadAttention({D}, {H}) on (2, {T}, {D})", (2, T, D), "heads")


@points(3)
def test_matches_oracle():
    """Matches a recomputation from its own qkv/proj parameters under the contract's head layout."""
    cases = [(attr(student(LAB), "mha"), 2, 8), (build(24, 3), 3, 5), (build(8, 2, dropout=0.1), 2, 6), (build(16, 4), 2, 1)]
    for mha, B, T in cases:
        mha = eval_mode(mha)
        D = mha.proj.in_features
        x = randn(B, T, D)
        with torch.no_grad():
            out = mha(x)
            expect_tensor(out, f"MultiHeadAttention({D}, {mha.n_heads}) output", (B, T, D), "heads")
            with head0_heatmap_on_failure(mha, x):
                expect_close(out, oracle_mha(mha, x), f"MultiHeadAttention({D}, n_heads={mha.n_heads}) on (B={B}, T={T})",
                             hint=lambda: diagnose(mha, x, out))


@points(2)
def test_gradients_reach_every_parameter():
    """Backward works and qkv and proj (weights and biases) all receive a gradient."""
    mha = build(16, 4)
    x = randn(2, 8, 16, dtype=None).requires_grad_()
    out = mha(x)
    expect_every_parameter_gets_a_gradient(mha, (out * randn(*out.shape)).sum(), "MultiHeadAttention")
    if x.grad is None:
        fail("no gradient reached the input x.", "grad")


@points(2)
def test_causality():
    """Changing future tokens never changes earlier outputs."""
    mha = build(16, 4)
    x = randn(2, 8, 16)
    with head0_heatmap_on_failure(mha, x):
        expect_causal(mha, x, "MultiHeadAttention")


@points(1)
def test_no_shortcuts():
    """No built-in attention in the source, in the module tree, or reached at run time."""
    mha = build(16, 4)
    expect_no_shortcuts(student(LAB), lambda: mha(randn(2, 8, 16)).sum().backward(), mha)


@points(1)
def test_device_discipline():
    """forward builds every tensor (the causal mask) on the input's device."""
    expect_device_discipline(build(16, 4), torch.randn(2, 8, 16), "MultiHeadAttention")
