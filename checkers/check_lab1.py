"""Lab 1 checks: scaled dot-product attention with a causal mask.

Each check takes the worker (`w`) that runs the student's code; inputs are made here, outputs come back as
plain tensors and are compared here.
"""
import torch

from judge.client import On, Options, StudentError
from judge.checks import attach, fail, heatmap, points
from judge.compare import expect_close, expect_tensor, matches, randn
from judge.shared import device_error, expect_no_shortcuts
from judge.oracles import attention, causal, weights as attention_weights
from protocol.messages import Backward, Result

LAB = "lab1_attention"


def attend(w, q, k, v, mask=None):
    out = w.call((LAB, "scaled_dot_product_attention"), q, k, v, mask)
    if not (isinstance(out, tuple) and len(out) == 2):
        fail(f"scaled_dot_product_attention must return a tuple (out, weights), got {type(out).__name__}.", "shape")
    return out


def attend_with(w, opts: Options, q, k, v, mask=None) -> Result:
    """The student's attention under the grader's options: the worker's Result."""
    return w.run(opts, (LAB, "scaled_dot_product_attention"), q, k, v, mask)


def attention_mistake(q, k, mask, weights) -> str:
    """Name the mistake when the weights match a known buggy variant (each computed by torch's attention)."""
    q, k = q.detach().double(), k.detach().double()
    if not bool(weights.isfinite().all()) and float(q.abs().amax() * k.abs().amax()) * q.size(-1) ** 0.5 > 88:
        return "overflow"  # scores can pass 88, where exp() overflows in float32
    flipped = mask.transpose(-2, -1) if mask is not None else None
    variants = {
        "scale": lambda: attention_weights(q, k, mask, scale=1.0),
        "mask": lambda: attention_weights(q, k) * (mask if mask is not None else 1),  # masked after the softmax
        # a softmax over the queries: the keys' attention over the queries, transposed back
        "softmax": lambda: attention_weights(k, q, flipped).transpose(-2, -1).nan_to_num(),
        "causal": lambda: attention_weights(q, k) if mask is not None else None,
    }
    for hint, variant in variants.items():
        want = variant()
        if want is not None and matches(want, weights):
            return hint
    return "mask" if mask is not None else "scale"


def reference(q, k, v, mask=None):
    """(out, weights) in float64."""
    return attention(q.double(), k.double(), v.double(), mask)


def compare(w, q, k, v, mask, what, atol=1e-5):
    out, weights = attend(w, q, k, v, mask)
    want_out, want_w = reference(q, k, v, mask)
    expect_tensor(weights, f"{what}: weights", want_w.shape, "shape")
    hint = lambda: attention_mistake(q, k, mask, weights)  # noqa: E731
    with attach(lambda: heatmap(weights, want_w, f"{what}: weights of batch 0")):
        expect_close(weights, want_w, f"{what}: weights", atol=atol, hint=hint)
    expect_close(out, want_out, f"{what}: out", atol=atol, hint=hint)


def random_mask(Tq, Tk):
    mask = torch.rand(Tq, Tk) > 0.5
    mask[:, 0] = True  # every query sees at least one key
    return mask


@points(2)
def test_causal_mask(w):
    """causal_mask(T) is a (T, T) bool tensor, True on and below the diagonal."""
    for T in (1, 5, 8):
        mask = expect_tensor(w.call((LAB, "causal_mask"), T), f"causal_mask({T})", (T, T), hint="mask")
        if mask.dtype != torch.bool:
            fail(f"causal_mask({T}) must have dtype torch.bool, got {mask.dtype}.", "mask")
        expect_close(mask.float(), torch.tril(torch.ones(T, T)), f"causal_mask({T}) (1 = may attend)", atol=0, hint="mask")


@points(1)
def test_output_shape(w):
    """With B=2, T=8, D=16 the output is (2, 8, 16) and the weights (2, 8, 8)."""
    x = randn(2, 8, 16)
    out, weights = attend(w, x, x, x, causal(8))
    expect_tensor(out, "out", (2, 8, 16), hint="shape")
    expect_tensor(weights, "weights", (2, 8, 8), hint="shape")


@points(1)
def test_weight_rows_sum_to_one(w):
    """Every row of the attention weights sums to 1."""
    x = randn(2, 8, 16)
    _, weights = attend(w, x, x, x, causal(8))
    expect_tensor(weights, "weights", (2, 8, 8), hint="shape")
    with attach(lambda: heatmap(weights, reference(x, x, x, causal(8))[1], "causal self-attention, batch 0")):
        expect_close(weights.sum(-1), torch.ones(2, 8, dtype=weights.dtype), "row sums of the weights", atol=1e-5,
                     hint=lambda: attention_mistake(x, x, causal(8), weights))


@points(2)
def test_upper_triangle_is_zero(w):
    """With the causal mask, triu(weights, diagonal=1).abs().max() < 1e-6: no query sees the future."""
    x = randn(2, 8, 16)
    _, weights = attend(w, x, x, x, causal(8))
    expect_tensor(weights, "weights", (2, 8, 8), hint="shape")
    upper = torch.triu(weights.to(torch.float64), diagonal=1).abs()
    leak = float(upper.max())
    if not leak < 1e-6:  # NaN fails too
        row = int(upper.nan_to_num(1.0).amax(dim=(0, 2)).argmax())
        fail(f"weights above the diagonal must be 0, largest is {leak:.3g} (query {row} sees a later key).", "mask",
             figures=heatmap(weights, reference(x, x, x, causal(8))[1], "causal self-attention, batch 0"))


@points(3)
def test_matches_oracle(w):
    """Matches an independent attention on 3-d and 4-d inputs, Tq != Tk, d_v != d_k, random, absent and causal masks, float64."""
    x = randn(2, 8, 16)
    compare(w, x, x, x, causal(8), "3-d input, causal mask")
    q, k, v = randn(2, 3, 8, 16), randn(2, 3, 8, 16), randn(2, 3, 8, 16)
    compare(w, q, k, v, causal(8), "4-d input (B, heads, T, d), causal mask")
    q, k, v = randn(2, 5, 16), randn(2, 7, 16), randn(2, 7, 12)
    compare(w, q, k, v, random_mask(5, 7), "Tq=5, Tk=7, d_k=16, d_v=12, random non-causal mask")
    q, k, v = randn(2, 6, 8), randn(2, 6, 8), randn(2, 6, 8)
    compare(w, q, k, v, None, "no mask")
    q = randn(2, 4, 8, 16, dtype=torch.float64)
    compare(w, q, q, q, causal(8), "float64 input", atol=1e-10)


@points(1)
def test_gradients_flow(w):
    """Backward works: q, k and v receive the same gradients as the reference."""
    q, k, v = (randn(2, 6, 8, dtype=torch.float64) for _ in range(3))
    grad_out = randn(2, 6, 8, dtype=torch.float64)
    result = attend_with(w, Options(backward=Backward(grad_out, index=0)), On(q, grad=True), On(k, grad=True),
                         On(v, grad=True), causal(6))
    out = result.out
    if not (isinstance(out, tuple) and len(out) == 2):
        fail(f"scaled_dot_product_attention must return a tuple (out, weights), got {type(out).__name__}.", "shape")
    expect_tensor(out[0], "out", (2, 6, 8), hint="shape")
    grads = result.grads
    if not (grads and grads.connected):
        fail("out is not connected to q, k and v (no autograd graph): avoid .detach(), .data and torch.no_grad().", "grad")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    want = torch.autograd.grad(attention(q, k, v, causal(6))[0], (q, k, v), grad_out)
    got = grads.inputs if type(grads.inputs) is list else []
    for i, (name, wanted) in enumerate(zip("qkv", want)):
        g = got[i] if i < len(got) else None
        if not isinstance(g, torch.Tensor):
            fail(f"{name} received no gradient.", "grad")
        expect_close(g, wanted, f"gradient of {name}", atol=1e-8,
                     hint=lambda: attention_mistake(q.detach(), k.detach(), causal(6), out[1]))


@points(1)
def test_no_shortcuts(w):
    """No built-in attention: the source does not name one, and none is reached at run time."""
    x = randn(2, 8, 16)
    guard = Options(guard=True)
    expect_no_shortcuts(w, lambda: (attend_with(w, guard, x, x, x, causal(8)), attend_with(w, guard, x, x, x, None)))


@points(1)
def test_device_discipline(w):
    """causal_mask honours `device`, and attention runs with every tensor on the inputs' device."""
    target = "cuda" if w.device == "cuda" else "meta"
    mask = expect_tensor(w.call((LAB, "causal_mask"), 8, device=target), "causal_mask(8)", (8, 8), "mask")
    if not mask.remote_device.startswith(target):
        fail(f"causal_mask(8, device={target!r}) returned a tensor on {mask.remote_device}: pass `device` when you "
             "create it.", "device")
    x = torch.randn(2, 8, 16)
    try:
        out = attend_with(w, Options(device_guard=True), On(x, target), On(x, target), On(x, target),
                          On(causal(8), target)).out
    except StudentError as exc:
        if not device_error(exc):
            raise  # the same code fails on any device: a plain error, not a device one
        fail(f"attention failed with inputs on {target}: {exc.message}", "device")
    if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        fail("scaled_dot_product_attention must return a tuple (out, weights).", "shape")
    if not all(t.remote_device.startswith(target) for t in out):
        fail(f"with inputs on {target}, out came back on {out[0].remote_device} and weights on "
             f"{out[1].remote_device}.", "device")


@points(2, hidden=True)
def test_unusual_shapes_and_scales(w):
    """Matches torch's attention on 5-d inputs, a (1, Tq, Tk) mask, T=1, d_k=1, and scores in the hundreds."""
    q, k, v = randn(2, 2, 3, 6, 8), randn(2, 2, 3, 6, 8), randn(2, 2, 3, 6, 5)
    compare(w, q, k, v, causal(6), "5-d input (B, groups, heads, T, d), causal mask")
    q = randn(3, 1, 4)
    compare(w, q, q, q, causal(1), "T=1")
    compare(w, randn(2, 5, 1), randn(2, 5, 1), randn(2, 5, 3), None, "d_k=1, no mask")
    compare(w, randn(2, 7, 6), randn(2, 9, 6), randn(2, 9, 4), random_mask(7, 9)[None], "a (1, Tq, Tk) mask")
    x = randn(2, 7, 16) * 8  # scores of several hundred: exp() of them overflows, softmax does not
    compare(w, x, x, x, causal(7), "large scores (inputs scaled by 8)", atol=1e-4)
