"""Lab 1 checks: scaled dot-product attention with a causal mask.

Each check takes the worker (`w`) that runs the student's code; inputs are made here, outputs come back as
plain tensors and are compared here.
"""
import torch

from judge.client import NO_GRAD, On, Options, StudentError
from judge.checks import attach, fail, heatmap, points
from judge.compare import expect_close, expect_tensor, matches, randn
from judge.shared import device_error, expect_no_shortcuts
from judge.oracles import attention, causal, weights as attention_weights
from protocol.messages import Backward, Result

LAB = "lab1_attention"

# each contract item (tests/test_contract.py) -> the checks that fail when it is wrong
CONTRACT = {
    "causal_mask": ("test_causal_mask", "test_upper_triangle_is_zero", "test_device_discipline"),
    "causal_mask(T)": ("test_causal_mask",),
    "causal_mask(device)": ("test_device_discipline",),
    "causal_mask(device=)": ("test_causal_mask",),  # called without it: a CPU tensor with values
    "scaled_dot_product_attention": ("test_output_shape", "test_weight_rows_sum_to_one", "test_matches_oracle"),
    "scaled_dot_product_attention(q)": ("test_matches_oracle", "test_gradients_flow", "test_inputs_left_unchanged",
                                        "test_non_contiguous_inputs"),
    "scaled_dot_product_attention(k)": ("test_matches_oracle", "test_gradients_flow", "test_inputs_left_unchanged",
                                        "test_non_contiguous_inputs"),
    "scaled_dot_product_attention(v)": ("test_matches_oracle", "test_gradients_flow", "test_inputs_left_unchanged",
                                        "test_non_contiguous_inputs"),
    "scaled_dot_product_attention(mask)": ("test_upper_triangle_is_zero", "test_matches_oracle",
                                           "test_masks_broadcast", "test_inputs_left_unchanged"),
    "scaled_dot_product_attention(mask=)": ("test_matches_oracle",),  # its "no mask" case omits the argument
    "sentence: scale by 1 / sqrt(d_k)": ("test_matches_oracle", "test_gradients_flow"),
    "sentence: mask before the softmax, rows sum to 1": ("test_weight_rows_sum_to_one", "test_matches_oracle"),
    "sentence: a mask per batch item, broadcast to (..., Tq, Tk)": ("test_masks_broadcast",),
    "sentence: the arguments are left unchanged": ("test_inputs_left_unchanged",),
    "sentence: non-contiguous inputs": ("test_non_contiguous_inputs",),
    "sentence: no built-in attention": ("test_no_shortcuts",),
}

OMIT = object()  # the mask argument left out: the function's own default


def attend(w, q, k, v, mask=None):
    args = (q, k, v) if mask is OMIT else (q, k, v, mask)
    out = w.call((LAB, "scaled_dot_product_attention"), *args)
    if not (isinstance(out, tuple) and len(out) == 2):
        fail(f"scaled_dot_product_attention must return a tuple (out, weights), got {type(out).__name__}.", "shape")
    return out


def attend_with(w, opts: Options, q, k, v, mask=None) -> Result:
    """The student's attention under the grader's options: the worker's Result."""
    return w.run(opts, (LAB, "scaled_dot_product_attention"), q, k, v, mask)


def attention_mistake(q, k, mask, weights) -> str:
    """Name the mistake when the weights match a known buggy variant (each computed by torch's attention), or None
    (the caller's neutral fallback): a hint names a cause only when the weights show it."""
    if mask is OMIT:
        mask = None
    q, k = q.detach().double(), k.detach().double()
    if not bool(weights.isfinite().all()) and float(q.abs().amax() * k.abs().amax()) * q.size(-1) ** 0.5 > 88:
        return "overflow"  # scores can pass 88, where exp() overflows in float32
    flipped = mask.transpose(-2, -1) if mask is not None else None
    per_item = mask is not None and mask.dim() > 2 and mask.shape[:-2].numel() > 1
    variants = [
        ("scale", lambda: attention_weights(q, k, mask, scale=1.0)),
        ("mask", lambda: attention_weights(q, k) * (mask if mask is not None else 1)),  # masked after the softmax
        # a softmax over the queries: the keys' attention over the queries, transposed back
        ("softmax", lambda: attention_weights(k, q, flipped).transpose(-2, -1).nan_to_num()),
        ("causal", lambda: attention_weights(q, k) if mask is not None else None),
        # a per-item mask read as one: its first item for every batch item, or squeezed so it lines up wrongly
        ("mask_batch", lambda: attention_weights(q, k, mask.reshape(-1, *mask.shape[-2:])[0]) if per_item else None),
        ("mask_batch", lambda: attention_weights(q, k, mask.squeeze(1)) if per_item and mask.dim() > 3 else None),
    ]
    for hint, variant in variants:
        try:
            want = variant()
        except RuntimeError:  # a variant whose mask does not broadcast
            continue
        if want is not None and matches(want, weights):
            return hint
    if isinstance(weights, torch.Tensor) and weights.device.type != "meta":
        want = attention_weights(q, k, mask)
        if want.shape == weights.shape and bool(weights.isfinite().all()):
            err = float((want - weights.to(want.dtype)).abs().max())
            if 1e-6 < err < 1e-2:  # close, not within the tolerance: a step in lower precision
                return "precision"
    return None


def reference(q, k, v, mask=None):
    """(out, weights) in float64."""
    return attention(q.double(), k.double(), v.double(), mask)


def compare(w, q, k, v, mask, what, atol=1e-5, args=None):
    """The student's attention on (q, k, v, mask) against the reference; `args` are what the worker gets instead
    (tensors kept there), when they are not the same tensors."""
    out, weights = attend(w, *(args or (q, k, v, mask)))
    want_out, want_w = reference(q, k, v, None if mask is OMIT else mask)
    expect_tensor(weights, f"{what}: weights", want_w.shape, "shape")
    expect_tensor(out, f"{what}: out", want_out.shape, "shape")
    hint = lambda: attention_mistake(q, k, mask, weights)  # noqa: E731
    with attach(lambda: heatmap(weights, want_w, f"{what}: weights of batch 0")):
        expect_close(weights, want_w, f"{what}: weights", atol=atol, hint=hint, fallback="mismatch")
    expect_close(out, want_out, f"{what}: out", atol=atol, hint=hint, fallback="mismatch")


def random_masks(*shape):
    """Independent random masks of shape (..., Tq, Tk), each query seeing at least one key."""
    mask = torch.rand(*shape) > 0.5
    mask[..., 0] = True
    return mask


def keep(w, t):
    """A copy of t held in the worker (a Handle): passed as an argument, the student's code gets that very tensor."""
    return w.run(Options(store=True), ("torch", "clone"), t).out


def read(w, held):
    """The current value of a tensor held in the worker."""
    return w.run(NO_GRAD, ("torch", "clone"), held).out


def transposed_view(w, t, a, b):
    """A view of t, built in the worker as the transpose (a, b) of a contiguous tensor: same values, not contiguous."""
    return w.run(Options(store=True), ("torch", "transpose"), keep(w, t.transpose(a, b).contiguous()), a, b).out


def random_mask(Tq, Tk):
    mask = torch.rand(Tq, Tk) > 0.5
    mask[:, 0] = True  # every query sees at least one key
    return mask


@points(2)
def test_causal_mask(w):
    """causal_mask(T) is a (T, T) bool tensor, True on and below the diagonal."""
    for T in (1, 5, 8):
        mask = expect_tensor(w.call((LAB, "causal_mask"), T), f"causal_mask({T})", (T, T), hint="causal")
        if mask.dtype != torch.bool:
            fail(f"causal_mask({T}) must have dtype torch.bool, got {mask.dtype}.", "causal")
        expect_close(mask.float(), torch.tril(torch.ones(T, T)), f"causal_mask({T}) (1 = may attend)", atol=0,
                     hint="causal")


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
                     hint=lambda: attention_mistake(x, x, causal(8), weights), fallback="mismatch")


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
    """Matches an independent attention on 3-d and 4-d inputs, Tq != Tk (either way), one query, d_v != d_k, random, absent (the default) and causal masks, float64."""
    x = randn(2, 8, 16)
    compare(w, x, x, x, causal(8), "3-d input, causal mask")
    q, k, v = randn(2, 3, 8, 16), randn(2, 3, 8, 16), randn(2, 3, 8, 16)
    compare(w, q, k, v, causal(8), "4-d input (B, heads, T, d), causal mask")
    q, k, v = randn(2, 5, 16), randn(2, 7, 16), randn(2, 7, 12)
    compare(w, q, k, v, random_mask(5, 7), "Tq=5, Tk=7, d_k=16, d_v=12, random non-causal mask")
    q, k, v = randn(2, 7, 3), randn(2, 3, 3), randn(2, 3, 5)
    compare(w, q, k, v, random_mask(7, 3), "Tq=7 > Tk=3, d_k=3, d_v=5, random mask")
    q, k, v = randn(3, 1, 8), randn(3, 5, 8), randn(3, 5, 8)
    compare(w, q, k, v, None, "one query (Tq=1) over Tk=5, mask=None")
    q, k, v = randn(2, 6, 8), randn(2, 6, 8), randn(2, 6, 8)
    compare(w, q, k, v, OMIT, "no mask (the argument left out)")
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
    forward_right = matches(attention(q.detach(), k.detach(), v.detach(), causal(6))[0], out[0])
    for i, (name, wanted) in enumerate(zip("qkv", want)):
        g = got[i] if i < len(got) else None
        if not isinstance(g, torch.Tensor):
            fail(f"{name} received no gradient.", "grad")
        # a wrong forward names its own mistake; a right one with wrong gradients points at the autograd graph
        expect_close(g, wanted, f"gradient of {name}", atol=1e-8,
                     hint=lambda: attention_mistake(q.detach(), k.detach(), causal(6), out[1]) or
                     ("grad_partial" if forward_right else None), fallback="mismatch")


@points(1)
def test_masks_broadcast(w):
    """A mask per batch item, (B, Tq, Tk) or (B, 1, Tq, Tk), or per head, is honoured as given, and a (Tq, Tk) mask broadcasts over (B, H, Tq, d)."""
    q, k, v = randn(3, 6, 8), randn(3, 6, 8), randn(3, 6, 8)
    compare(w, q, k, v, random_masks(3, 6, 6), "3-d input, a different (B, T, T) mask for each batch item")
    q, k, v = randn(2, 2, 6, 8), randn(2, 2, 6, 8), randn(2, 2, 6, 8)  # B == H: a mask lined up with the heads fits
    compare(w, q, k, v, random_masks(2, 1, 6, 6), "(B, H, T, d) input, a (B, 1, T, T) mask (one per batch item)")
    compare(w, q, k, v, random_masks(2, 2, 6, 6), "(B, H, T, d) input, a (B, H, T, T) mask (one per head)")
    q, k, v = randn(2, 3, 4, 8), randn(2, 3, 6, 8), randn(2, 3, 6, 8)
    compare(w, q, k, v, random_mask(4, 6), "(B, H, Tq=4, d) input, Tk=6, one (Tq, Tk) mask for all")


@points(1)
def test_inputs_left_unchanged(w):
    """q, k, v and the mask the caller passed hold the same values after the call (no in-place change to an argument)."""
    q, k, v = randn(2, 3, 6, 8), randn(2, 3, 6, 8), randn(2, 3, 6, 5)
    mask = random_mask(6, 6)
    mask[torch.arange(6), torch.arange(6)] = True
    given = {"q": q, "k": k, "v": v, "mask": mask}
    held = {name: keep(w, t) for name, t in given.items()}
    compare(w, q, k, v, mask, "tensors held by the caller", args=tuple(held.values()))
    for name, t in given.items():
        after = read(w, held[name])
        if not (isinstance(after, torch.Tensor) and after.shape == t.shape and torch.equal(after.cpu(), t)):
            fail(f"scaled_dot_product_attention changed its argument `{name}` in place: after the call the caller's "
                 f"{name} no longer holds the values it passed.", "inplace")


@points(1)
def test_non_contiguous_inputs(w):
    """Transposed views (not contiguous, as lab 2 passes them) of q, k, v and the mask give the same result."""
    B, H, Tq, Tk = 2, 3, 5, 7
    q, k, v = randn(B, H, Tq, 8), randn(B, H, Tk, 8), randn(B, H, Tk, 6)
    mask = random_mask(Tq, Tk)
    # q, k, v as (B, T, H, d) tensors transposed to (B, H, T, d), the mask as the transpose of a (Tk, Tq) one
    views = (*(transposed_view(w, t, 1, 2) for t in (q, k, v)), transposed_view(w, mask, -2, -1))
    try:
        compare(w, q, k, v, mask, "transposed (non-contiguous) q, k, v and mask", args=views)
    except StudentError as exc:
        text = exc.message.lower()
        if exc.type == "NotImplementedError" or not any(word in text for word in ("view", "contiguous", "stride")):
            raise  # not about the layout: the error as it is
        fail(f"with transposed (non-contiguous) views as q, k, v and mask, your code raised {exc.type}: "
             f"{exc.message[:300]}", "contiguous")


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
