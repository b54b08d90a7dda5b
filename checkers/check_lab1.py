"""Lab 1 checks: scaled dot-product attention with a causal mask."""
import math

import torch

from checkers.common import (attr, causal, device, expect_close, expect_tensor, fail, heatmap_on_failure,
                             oracle_attention, points, randn, student)
from checkers.guards import DeviceGuard, expect_no_shortcuts

LAB = "lab1_attention"


def lab():
    return student(LAB)


def attend(q, k, v, mask=None):
    out = attr(lab(), "scaled_dot_product_attention")(q, k, v, mask)
    if not (isinstance(out, tuple) and len(out) == 2):
        fail(f"scaled_dot_product_attention must return a tuple (out, weights), got {type(out).__name__}.", "shape")
    return out


def diagnose(q, k, mask, weights) -> str:
    """Name the mistake when the weights match a known buggy variant."""
    scores = q @ k.transpose(-2, -1)
    masked = (lambda s: s.masked_fill(~mask, float("-inf"))) if mask is not None else (lambda s: s)
    variants = {
        "scale": torch.softmax(masked(scores), -1),
        "mask": torch.softmax(scores / math.sqrt(q.size(-1)), -1) * (mask if mask is not None else 1),
        "softmax": torch.softmax(masked(scores / math.sqrt(q.size(-1))), -2).nan_to_num(),
    }
    if mask is not None:
        variants["causal"] = torch.softmax(scores / math.sqrt(q.size(-1)), -1)
    for hint, w in variants.items():
        if w.shape == weights.shape and bool(((w - weights.detach()).abs() < 1e-4).all()):
            return hint
    return "mask" if mask is not None else "scale"


def compare(q, k, v, mask, what, atol=1e-5):
    out, weights = attend(q, k, v, mask)
    want_out, want_w = oracle_attention(q, k, v, mask)
    expect_tensor(weights, f"{what}: weights", want_w.shape, "shape")
    hint = lambda: diagnose(q, k, mask, weights)
    with heatmap_on_failure(weights, want_w, f"{what}: weights of batch 0"):
        expect_close(weights, want_w, f"{what}: weights", atol=atol, hint=hint)
    expect_close(out, want_out, f"{what}: out", atol=atol, hint=hint)


def random_mask(Tq, Tk):
    mask = torch.rand(Tq, Tk) > 0.5
    mask[:, 0] = True  # every query sees at least one key
    return mask.to(device())


@points(2)
def test_causal_mask():
    """causal_mask(T) is a (T, T) bool tensor, True on and below the diagonal."""
    for T in (1, 5, 8):
        mask = expect_tensor(attr(lab(), "causal_mask")(T), f"causal_mask({T})", (T, T), hint="mask")
        if mask.dtype != torch.bool:
            fail(f"causal_mask({T}) must have dtype torch.bool, got {mask.dtype}.", "mask")
        expect_close(mask.float(), torch.tril(torch.ones(T, T)), f"causal_mask({T}) (1 = may attend)", atol=0, hint="mask")


@points(1)
def test_output_shape():
    """With B=2, T=8, D=16 the output is (2, 8, 16) and the weights (2, 8, 8)."""
    x = randn(2, 8, 16)
    out, weights = attend(x, x, x, causal(8))
    expect_tensor(out, "out", (2, 8, 16), hint="shape")
    expect_tensor(weights, "weights", (2, 8, 8), hint="shape")


@points(1)
def test_weight_rows_sum_to_one():
    """Every row of the attention weights sums to 1."""
    x = randn(2, 8, 16)
    _, weights = attend(x, x, x, causal(8))
    with heatmap_on_failure(weights, oracle_attention(x, x, x, causal(8))[1], "causal self-attention, batch 0"):
        expect_close(weights.sum(-1), torch.ones(2, 8, dtype=weights.dtype, device=device()),
                     "row sums of the weights", atol=1e-5, hint="mask")


@points(2)
def test_upper_triangle_is_zero():
    """With the causal mask, triu(weights, diagonal=1).abs().max() < 1e-6: no query sees the future."""
    x = randn(2, 8, 16)
    _, weights = attend(x, x, x, causal(8))
    expect_tensor(weights, "weights", (2, 8, 8), hint="shape")
    leak = float(torch.triu(weights.detach(), diagonal=1).abs().max())
    with heatmap_on_failure(weights, oracle_attention(x, x, x, causal(8))[1], "causal self-attention, batch 0"):
        if not leak < 1e-6:
            row = int(torch.triu(weights.detach(), diagonal=1).abs().amax(dim=(0, 2)).argmax())
            fail(f"weights above the diagonal must be 0, largest is {leak:.3g} (query {row} sees a later key).", "mask")


@points(3)
def test_matches_oracle():
    """Matches an independent attention on 3-d and 4-d inputs, Tq != Tk, d_v != d_k, random, absent and causal masks, float64."""
    x = randn(2, 8, 16)
    compare(x, x, x, causal(8), "3-d input, causal mask")
    q, k, v = randn(2, 3, 8, 16), randn(2, 3, 8, 16), randn(2, 3, 8, 16)
    compare(q, k, v, causal(8), "4-d input (B, heads, T, d), causal mask")
    q, k, v = randn(2, 5, 16), randn(2, 7, 16), randn(2, 7, 12)
    compare(q, k, v, random_mask(5, 7), "Tq=5, Tk=7, d_k=16, d_v=12, random non-causal mask")
    q, k, v = randn(2, 6, 8), randn(2, 6, 8), randn(2, 6, 8)
    compare(q, k, v, None, "no mask")
    q = randn(2, 4, 8, 16, dtype=torch.float64)
    compare(q, q, q, causal(8), "float64 input", atol=1e-10)


@points(1)
def test_gradients_flow():
    """Backward works: q, k and v receive the same gradients as the reference."""
    q, k, v = (randn(2, 6, 8, dtype=torch.float64).requires_grad_() for _ in range(3))
    out, _ = attend(q, k, v, causal(6))
    grad_out = randn(2, 6, 8, dtype=torch.float64)
    expect_tensor(out, "out", (2, 6, 8), hint="shape")
    if not out.requires_grad:
        fail("out is not connected to q, k and v (no autograd graph): avoid .detach(), .data and torch.no_grad().", "grad")
    got = torch.autograd.grad(out, (q, k, v), grad_out, allow_unused=True)
    want = torch.autograd.grad(oracle_attention(q, k, v, causal(6))[0], (q, k, v), grad_out)
    for name, g, w in zip("qkv", got, want):
        if g is None:
            fail(f"{name} received no gradient.", "grad")
        expect_close(g, w, f"gradient of {name}", atol=1e-8, hint="mask")


@points(1)
def test_no_shortcuts():
    """No built-in attention: the source does not name one, and none is reached at run time."""
    x = randn(2, 8, 16)
    expect_no_shortcuts(lab(), lambda: (attend(x, x, x, causal(8)), attend(x, x, x, None)))


@points(1)
def test_device_discipline():
    """causal_mask honours `device`, and attention runs with every tensor on the inputs' device."""
    target = device() if device().type == "cuda" else torch.device("meta")
    mask = attr(lab(), "causal_mask")(8, device=target)
    if mask.device.type != target.type:
        fail(f"causal_mask(8, device={str(target)!r}) returned a tensor on {mask.device}: pass `device` when you "
             "create it.", "device")
    x = torch.randn(2, 8, 16).to(target)
    with DeviceGuard():
        try:
            out, weights = attend(x, x, x, mask)
        except RuntimeError as exc:  # also DeviceMixError
            fail(f"attention failed with inputs on {target.type}: {exc}", "device")
    if out.device.type != target.type or weights.device.type != target.type:
        fail(f"with inputs on {target.type}, out came back on {out.device} and weights on {weights.device}.", "device")
