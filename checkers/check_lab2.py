"""Lab 2 checks: multi-head causal self-attention.

The judge builds the student's MultiHeadAttention in the worker, loads weights it chose, and compares what the
worker returns with a recomputation from those weights.
"""
import math

import torch

from judge.client import NO_GRAD, Handle, On, Options, StudentError
from judge.checks import attach, fail, grid, points
from judge.compare import expect_close, expect_tensor, first_match, randn
from judge.shared import (expect_causal, expect_device_discipline, expect_dropout_follows_p,
                          expect_dropout_only_in_training, expect_no_shortcuts, expect_own_chain, expect_params, fill)
from protocol.messages import Backward, Capture, Figure
from judge.oracles import causal, mha as reference, mha_gradients, weights as attention_weights

LAB = "lab2_multihead"

# each contract item (tests/test_contract.py) -> the checks that fail when it is wrong
CONTRACT = {
    "MultiHeadAttention": ("test_output_shape", "test_matches_oracle"),
    "MultiHeadAttention(d_model)": ("test_output_shape", "test_matches_oracle"),
    "MultiHeadAttention(n_heads)": ("test_matches_oracle", "test_instances_are_independent"),
    "MultiHeadAttention(dropout)": ("test_dropout_only_in_training",),
    "MultiHeadAttention(dropout=)": ("test_dropout_only_in_training", "test_instances_are_independent"),
    "MultiHeadAttention.n_heads": ("test_mha_exists",),
    "MultiHeadAttention.d_head": ("test_mha_exists",),
    "MultiHeadAttention.qkv": ("test_mha_exists", "test_matches_oracle", "test_gradients_reach_every_parameter"),
    "MultiHeadAttention.proj": ("test_mha_exists", "test_matches_oracle", "test_gradients_reach_every_parameter"),
    "MultiHeadAttention.dropout": ("test_dropout_only_in_training",),  # what it does, whatever it is called
    "MultiHeadAttention.forward": ("test_output_shape", "test_matches_oracle"),
    "MultiHeadAttention.forward(x)": ("test_matches_oracle", "test_gradients_reach_every_parameter", "test_causality"),
    "mha": ("test_mha_exists", "test_matches_oracle"),
    "sentence: qkv's layout [queries | keys | values], head h owns h*d_head:(h+1)*d_head": ("test_matches_oracle",),
    "sentence: gradients reach the query, key and value rows of qkv": ("test_gradients_reach_every_parameter",),
    "sentence: causal self-attention": ("test_causality",),
    "sentence: instances are independent": ("test_instances_are_independent",),
    "sentence: no built-in attention": ("test_no_shortcuts",),
}


def contract(D: int) -> dict:
    return {"qkv.weight": (3 * D, D), "qkv.bias": (3 * D,), "proj.weight": (D, D), "proj.bias": (D,)}


def build(w, d_model=16, n_heads=4, **kwargs):
    """The student's MultiHeadAttention with judge-chosen weights: (handle, weights)."""
    mha = w.new(LAB, "MultiHeadAttention", d_model, n_heads, **kwargs)
    expect_params(mha, contract(d_model), f"MultiHeadAttention({d_model}, {n_heads})", "heads",
                  optional=("qkv.bias", "proj.bias"))
    return mha, fill(mha)


ORDERS = ("qvk", "kqv", "kvq", "vqk", "vkq")  # qkv split in another order


def variants(wts: dict, D: int, H: int) -> dict:
    """Classic mistakes, each as torch's multi-head attention on changed weights: {hint: [variant(x)]}."""
    W, b = wts["qkv.weight"], wts.get("qkv.bias")

    def reorder(order):  # the student took queries from the block named order[0], and so on
        pick = lambda t: torch.cat([t[D * "qkv".index(c):D * ("qkv".index(c) + 1)] for c in order])  # noqa: E731
        return {**wts, "qkv.weight": pick(W), "qkv.bias": pick(b) if b is not None else None}
    unscaled = math.sqrt(D // H)  # queries scaled up by sqrt(d_head) cancel the 1/sqrt(d_head)
    no_scale = {**wts, "qkv.weight": torch.cat([W[:D] * unscaled, W[D:]]),
                "qkv.bias": torch.cat([b[:D] * unscaled, b[D:]]) if b is not None else None}
    no_proj = {**wts, "proj.weight": torch.eye(D), "proj.bias": None}

    return {"order": [lambda x, o=o: reference(reorder(o), x, H) for o in ORDERS],
            "scale": [lambda x: reference(no_scale, x, H)],
            "causal": [lambda x: reference(wts, x, H, mask=False)],
            "proj": [lambda x: reference(no_proj, x, H)]}


def mha_mistake(wts, x, n_heads, out, again=None, module=None) -> str:
    """The mistake a wrong output matches: a known bug, or dropout still on in eval mode (`again` runs the same
    forward once more). Past those, with the student's `module`: when changing only the last token moves earlier
    outputs, the future leaks in, and `leak_of` says whether through the mask ("causal") or through a head split or
    merge that mixes time steps, which no change of weights gives ("heads"). None otherwise: the caller's neutral
    fallback."""
    hint = first_match(variants(wts, x.size(-1), n_heads), x, out, again)
    if hint is None and module is not None and x.size(1) > 1 and isinstance(out, torch.Tensor):
        changed = x.clone()
        changed[:, -1] = randn(*changed[:, -1].shape)
        moved = module.run(NO_GRAD, changed).out
        if isinstance(moved, torch.Tensor) and moved.shape == out.shape and \
                not torch.allclose(moved[:, :-1], out[:, :-1], atol=1e-6):
            return leak_of(module, x)
    return hint


SPY = Options(no_grad=True, capture=Capture("lab1_attention", "scaled_dot_product_attention"))


def head0_heatmap(mha, wts, x) -> list:
    """[head 0's weights (batch 0) as the student's lab 1 call computed them, beside the expected ones]."""
    try:
        got = mha.run(SPY, x).captured or []
    except Exception:
        return []
    B, T, D = x.shape
    d_head = D // int(mha.attr("n_heads") or 4)
    q, k, _ = torch.nn.functional.linear(x, wts["qkv.weight"], wts.get("qkv.bias")).split(D, dim=-1)
    want = attention_weights(q[..., :d_head], k[..., :d_head], causal(T))  # head 0 owns the first d_head features
    got = got[0] if got else None
    if isinstance(got, torch.Tensor) and got.dim() == 4 and got.shape[-2:] == (T, T):
        return [Figure("heatmap", title="attention weights of head 0, batch 0", got=grid(got[0, 0]), want=grid(want[0]))]
    return []


@points(2)
def test_mha_exists(w):
    """Module-level `mha` is MultiHeadAttention(d_model=16, n_heads=4) with dropout 0: fused qkv and proj, n_heads and d_head as built."""
    mha = w.get(LAB, "mha")
    if not isinstance(mha, Handle) or mha.type != "MultiHeadAttention" or mha.module != LAB:
        got = mha.type if isinstance(mha, Handle) else getattr(mha, "type_name", type(mha).__name__)
        fail(f"`mha` must be an instance of MultiHeadAttention, got {got}.", "heads")
    modules = mha.modules
    if not all("Linear" in modules.get(name, ("", "", []))[2] for name in ("qkv", "proj")):
        fail("MultiHeadAttention needs self.qkv = nn.Linear(d_model, 3 * d_model) and self.proj = "
             "nn.Linear(d_model, d_model).", "heads")
    shapes = {name: shape for name, (shape, _) in mha.params.items()}
    D = shapes.get("proj.weight", (0, 0))[1]
    if (shapes.get("qkv.weight"), shapes.get("proj.weight")) != ((3 * D, D), (D, D)):
        fail(f"qkv must map D -> 3D and proj D -> D; got qkv weight {shapes.get('qkv.weight')}, proj weight "
             f"{shapes.get('proj.weight')}.", "heads")
    n_heads = mha.attr("n_heads")
    if not (type(n_heads) is int and n_heads > 1 and D % n_heads == 0):
        fail(f"mha.n_heads must be an int > 1 that divides d_model={D}; got {n_heads!r}.", "heads")
    if mha.attr("d_head") != D // n_heads:
        fail(f"mha.d_head must be d_model // n_heads = {D // n_heads}; got {mha.attr('d_head')!r}.", "heads")
    if (D, n_heads) != (16, 4):
        fail(f"mha must be MultiHeadAttention(d_model=16, n_heads=4); it has d_model={D}, n_heads={n_heads}.",
             "mha_spec")
    mha.method("train")  # as the module was built: dropout, if any, is on
    x = randn(2, 8, 16)
    first, second = (expect_tensor(mha.run(Options(no_grad=True, seed=seed), x).out, "mha output", (2, 8, 16),
                                   "heads") for seed in (1, 2))
    if not torch.equal(first, second):
        fail("mha in training mode gave different outputs under two seeds: it must be built with dropout 0 (the "
             "contract: mha = MultiHeadAttention(d_model=16, n_heads=4)).", "mha_spec")


@points(1)
def test_output_shape(w):
    """forward maps (B, T, D) to (B, T, D)."""
    for D, H, T in ((16, 4, 8), (24, 3, 5)):
        mha, _ = build(w, D, H)
        expect_tensor(mha.run(NO_GRAD, randn(2, T, D)).out, f"MultiHeadAttention({D}, {H}) on (2, {T}, {D})", (2, T, D),
                      "heads")


@points(3)
def test_matches_oracle(w):
    """Matches a recomputation from its own qkv/proj parameters under the contract's head layout."""
    module_level = w.get(LAB, "mha")
    cases = [(module_level, 2, 8, {}), (None, 3, 5, {"d_model": 24, "n_heads": 3}),
             (None, 2, 6, {"d_model": 8, "n_heads": 2, "dropout": 0.1}), (None, 2, 1, {})]
    for mha, B, T, kwargs in cases:
        if mha is None:
            mha, wts = build(w, **kwargs)
            H = kwargs.get("n_heads", 4)
        else:
            if not hasattr(mha, "params"):
                fail("`mha` must be a MultiHeadAttention module.", "heads")
            D = mha.params.get("proj.weight", ((0, 0),))[0][1]
            expect_params(mha, contract(D), "mha", "heads", optional=("qkv.bias", "proj.bias"))
            wts, H = fill(mha), mha.attr("n_heads")
            if type(H) is not int or H < 1 or D % H:
                fail(f"mha.n_heads must be an int that divides d_model; got {H!r}.", "heads")
            mha.method("eval")
        D = wts["proj.weight"].shape[1]
        x = randn(B, T, D)
        out = expect_tensor(mha.run(NO_GRAD, x).out, f"MultiHeadAttention({D}, {H}) output", (B, T, D), "heads")
        again = lambda: mha.run(Options(no_grad=True, seed=1), x).out  # noqa: E731
        with attach(lambda: head0_heatmap(mha, wts, x)):
            expect_close(out, reference(wts, x, H), f"MultiHeadAttention({D}, n_heads={H}) on (B={B}, T={T})",
                         hint=lambda: mha_mistake(wts, x, H, out, again=again,
                                                  module=mha), fallback="mismatch")


ROLES = ("query", "key", "value")  # qkv's row blocks, D each


def expect_gradient(got, want: torch.Tensor, what: str, atol=1e-4):
    """One parameter's (or block's) gradient against the recomputation's: none at all, or wrong values."""
    if not (isinstance(got, torch.Tensor) and got.device.type != "meta"):
        fail(f"{what} received no gradient.", "grad")
    if got.shape == want.shape and not bool(got.abs().sum() > 0) and float(want.abs().sum()) > 1e-6:  # key biases: ~0
        fail(f"{what} received a zero gradient: it takes part in the output, so backward must reach it.",
             "grad_partial")
    expect_close(got, want, what, atol=atol, rtol=1e-3, hint="grad_partial")


@points(2)
def test_gradients_reach_every_parameter(w):
    """Backward gives x, proj and each block of qkv (query, key and value rows, weights and biases) the gradients of a recomputation from the same weights."""
    D, H = 16, 4
    mha, wts = build(w, D, H)
    mha.method("train")
    x, grad_out = randn(2, 8, D), randn(2, 8, D)
    result = mha.run(Options(backward=Backward(grad_out)), On(x, grad=True))
    out = expect_tensor(result.out, "MultiHeadAttention output", (2, 8, D), "heads")
    want_out, want = mha_gradients(wts, x, H, grad_out)
    expect_close(out, want_out, "MultiHeadAttention(16, 4) output (before its gradients)",
                 hint=lambda: mha_mistake(wts, x, H, out, module=mha), fallback="mismatch")
    grads = result.grads
    if not (grads is not None and grads.connected):
        fail("MultiHeadAttention: the output is not connected to the parameters (no autograd graph): avoid .detach(), "
             ".data and torch.no_grad() in forward.", "grad")
    params = grads.params if type(grads.params) is dict else {}
    for name in (n for n in contract(D) if n in wts):  # the contract's parameters
        got = params.get(name)
        if name.startswith("qkv.") and isinstance(got, torch.Tensor) and got.shape == want[name].shape:
            for i, role in enumerate(ROLES):  # each block on its own: one detached block shows as just that block
                expect_gradient(got[i * D:(i + 1) * D], want[name][i * D:(i + 1) * D],
                                f"the {role} rows of {name} (rows {i * D}..{(i + 1) * D - 1})")
        expect_gradient(got, want[name], f"{name}")
    inputs = grads.inputs
    expect_gradient(inputs[0] if type(inputs) is list and inputs else None, want["x"], "the input x")


def leak_of(mha, x) -> str:
    """Why the output sees the future: lab 1's weights (as the student's call computed them) attend to later keys
    ("causal": the mask is missing or wrong), or they do not and the head split or merge mixes time steps ("heads")."""
    try:
        got = (mha.run(SPY, x).captured or [None])[0]
    except Exception:
        got = None
    T = x.size(1)
    if isinstance(got, torch.Tensor) and got.device.type != "meta" and got.dim() >= 2 and got.shape[-2:] == (T, T):
        return "causal" if float(torch.triu(got.double(), diagonal=1).abs().max()) > 1e-6 else "heads"
    return "causal"


@points(2)
def test_causality(w):
    """Changing future tokens never changes earlier outputs."""
    mha, wts = build(w, 16, 4)
    x = randn(2, 8, 16)
    with attach(lambda: head0_heatmap(mha, wts, x)):
        expect_causal(lambda t: mha.run(NO_GRAD, t).out, x, "MultiHeadAttention", hint=lambda out: leak_of(mha, x))


@points(1)
def test_dropout_only_in_training(w):
    """MultiHeadAttention(16, 4, dropout=p) drops values in training mode only, none at p=0 (the default), more at p=0.9 than at p=0.1."""
    mha, _ = build(w, 16, 4, dropout=0.5)
    x = randn(2, 8, 16)
    expect_dropout_only_in_training(mha, x, "MultiHeadAttention(16, 4, dropout=0.5)")
    expect_dropout_follows_p(lambda **kwargs: build(w, 16, 4, **kwargs)[0], x, "MultiHeadAttention(16, 4)")


@points(1)
def test_instances_are_independent(w):
    """A MultiHeadAttention(16, 4) still matches, in eval and training mode, after (24, 3) and (16, 2, dropout=0.5) are built in the same process."""
    first, wts = build(w, 16, 4)
    x = randn(2, 8, 16)
    out = expect_tensor(first.run(NO_GRAD, x).out, "MultiHeadAttention(16, 4) output", (2, 8, 16), "heads")
    expect_close(out, reference(wts, x, 4), "MultiHeadAttention(16, 4), before any other instance is built",
                 hint=lambda: mha_mistake(wts, x, 4, out, module=first), fallback="mismatch")
    build(w, 24, 3)
    second, wts2 = build(w, 16, 2, dropout=0.5)  # built last: a setting kept on the class is now its
    for h, what, H, want, mode in ((first, "the first MultiHeadAttention(16, 4)", 4, wts, "eval"),
                                   (first, "the first MultiHeadAttention(16, 4)", 4, wts, "train"),
                                   (second, "MultiHeadAttention(16, 2, dropout=0.5)", 2, wts2, "eval")):
        h.method(mode)
        try:
            out = h.run(Options(no_grad=True, seed=1), x).out
        except StudentError as exc:
            fail(f"after MultiHeadAttention(24, 3) and (16, 2, dropout=0.5) were built, {what} raised {exc.type}: "
                 f"{exc.message[:300]}", "shared_state")
        expect_close(expect_tensor(out, f"{what} output", (2, 8, 16), "shared_state"), reference(want, x, H),
                     f"{what} in {mode} mode, after MultiHeadAttention(24, 3) and (16, 2, dropout=0.5) were built",
                     hint="shared_state")


@points(1)
def test_no_shortcuts(w):
    """No built-in attention in the source, in the module tree, or reached at run time."""
    mha, _ = build(w, 16, 4)
    expect_no_shortcuts(w, lambda: mha.run(Options(guard=True), randn(2, 8, 16)).out, mha)


@points(1)
def test_device_discipline(w):
    """forward builds every tensor (the causal mask) on the input's device."""
    mha, _ = build(w, 16, 4)
    expect_device_discipline(w, mha, torch.randn(2, 8, 16), "MultiHeadAttention")


@points(2, hidden=True)
def test_other_sizes_and_lengths(w):
    """Matches on sizes the other checks do not use: d_head=6, one head, and sequences of 13 and 20 tokens."""
    for D, H, B, T in ((30, 5, 1, 13), (12, 1, 3, 4), (16, 4, 2, 20)):
        mha, wts = build(w, D, H)
        x = randn(B, T, D)
        out = expect_tensor(mha.run(NO_GRAD, x).out, f"MultiHeadAttention({D}, {H}) output", (B, T, D), "heads")
        expect_close(out, reference(wts, x, H), f"MultiHeadAttention({D}, n_heads={H}) on (B={B}, T={T})",
                     hint=lambda: mha_mistake(wts, x, H, out, module=mha),
                     fallback="mismatch")


@points(0)
def test_works_with_your_own_earlier_labs(w):
    """Integration (no points: lab 1 scores in lab 1): MultiHeadAttention still matches on your own lab 1."""
    def probe(worker):
        mha, wts = build(worker, 16, 4)
        x = randn(2, 8, 16)
        expect_close(expect_tensor(mha.run(NO_GRAD, x).out, "MultiHeadAttention output", (2, 8, 16)), reference(wts, x, 4),
                     "MultiHeadAttention(16, 4) output")
    expect_own_chain(w, probe, "MultiHeadAttention")
