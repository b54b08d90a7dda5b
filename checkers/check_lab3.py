"""Lab 3 checks: the pre-norm transformer block, compared with recomputations from weights the judge chose."""
import torch
import torch.nn.functional as F

from judge.client import NO_GRAD, On, Options
from judge.checks import fail, points
from judge.compare import expect_close, expect_tensor, first_match, matches, randn
from judge.shared import (expect_causal, expect_device_discipline, expect_dropout_follows_p,
                          expect_dropout_only_in_training, expect_no_shortcuts, expect_own_chain, expect_params, fill,
                          gelu_flavour, sub, zeroed)
from judge.oracles import block as reference, block_gradients, layer_norm, mha, mlp as reference_mlp
from protocol.messages import Backward

LAB = "lab3_block"

# each contract item (tests/test_contract.py) -> the checks that fail when it is wrong (visible checks only: the
# eps each LayerNorm holds is observed by a held-back check as well)
CONTRACT = {
    "MLP": ("test_mlp_matches_oracle",),
    "MLP(d_model)": ("test_mlp_matches_oracle",),
    "MLP(expansion)": ("test_mlp_matches_oracle",),
    "MLP(expansion=)": ("test_mlp_matches_oracle",),  # MLP(16) must be 16 -> 64 -> 16
    "MLP.fc": ("test_mlp_matches_oracle", "test_gradients_reach_every_parameter"),
    "MLP.proj": ("test_mlp_matches_oracle", "test_gradients_reach_every_parameter", "test_residual_gradient"),
    "MLP.forward": ("test_mlp_matches_oracle",),
    "MLP.forward(x)": ("test_mlp_matches_oracle",),
    "TransformerBlock": ("test_output_shape_preserved", "test_matches_oracle"),
    "TransformerBlock(d_model)": ("test_output_shape_preserved", "test_matches_oracle"),
    "TransformerBlock(n_heads)": ("test_matches_oracle",),
    "TransformerBlock(dropout)": ("test_dropout_only_in_training",),
    "TransformerBlock(dropout=)": ("test_dropout_only_in_training",),
    "TransformerBlock.ln1": ("test_matches_oracle", "test_gradients_reach_every_parameter"),
    "TransformerBlock.attn": ("test_matches_oracle", "test_gradients_reach_every_parameter", "test_causality"),
    "TransformerBlock.ln2": ("test_matches_oracle", "test_gradients_reach_every_parameter"),
    "TransformerBlock.mlp": ("test_matches_oracle", "test_gradients_reach_every_parameter"),
    "TransformerBlock.dropout": ("test_dropout_only_in_training",),  # what it does, whatever it is called
    "TransformerBlock.forward": ("test_output_shape_preserved", "test_matches_oracle"),
    "TransformerBlock.forward(x)": ("test_matches_oracle", "test_residual_gradient"),
    "sentence: pre-norm residuals": ("test_matches_oracle", "test_residual_gradient"),
    "sentence: GELU, exact or tanh": ("test_mlp_matches_oracle",),
    "sentence: causal": ("test_causality",),
    "sentence: no built-in transformer layers": ("test_no_shortcuts",),
}


def contract(D: int) -> dict:
    mlp = {"mlp.fc.weight": (4 * D, D), "mlp.fc.bias": (4 * D,), "mlp.proj.weight": (D, 4 * D), "mlp.proj.bias": (D,)}
    attn = {"attn.qkv.weight": (3 * D, D), "attn.qkv.bias": (3 * D,), "attn.proj.weight": (D, D),
            "attn.proj.bias": (D,)}
    return {"ln1.weight": (D,), "ln1.bias": (D,), **attn, "ln2.weight": (D,), "ln2.bias": (D,), **mlp}


OPTIONAL = ("attn.qkv.bias", "attn.proj.bias", "mlp.fc.bias", "mlp.proj.bias")


def build(w, d_model=16, n_heads=4, **kwargs):
    """The student's TransformerBlock with judge-chosen weights: (handle, weights)."""
    block = w.new(LAB, "TransformerBlock", d_model, n_heads, **kwargs)
    for name in ("ln1", "attn", "ln2", "mlp"):
        if name not in block.modules:
            fail(f"TransformerBlock needs a sub-module self.{name} (contract: ln1, attn, ln2, mlp).", "prenorm")
    expect_params(block, contract(d_model), f"TransformerBlock({d_model}, {n_heads})", "prenorm", optional=OPTIONAL)
    return block, fill(block)


def eps_of(block) -> tuple:
    """(ln1's eps, ln2's eps) as the student's LayerNorm modules hold them (the contract names no eps); 1e-5, torch's
    default, for a module that holds none."""
    found = []
    for name in ("ln1", "ln2"):
        try:
            eps = block.get(name).attr("eps")
        except Exception:
            eps = None
        found.append(float(eps) if type(eps) in (int, float) and 0 <= eps < 1 else 1e-5)
    return tuple(found)


def block_mistake(wts, x, n_heads, out, approximate="none", again=None, eps=(1e-5, 1e-5), default=None) -> str:
    """Name the mistake when the output matches a classic wrong wiring: torch's layer post-norm, with ReLU or with
    ln1's weights in ln2's place, a block missing a residual connection, or a LayerNorm with its eps misplaced,
    the unbiased variance or torch's default eps instead of the one it holds; `default` (None: the caller's
    neutral fallback) when it matches none."""
    for flavour in dict.fromkeys((approximate, "none", "tanh")):  # a wrong output may have suggested the wrong GELU
        hint = first_match(_wirings(wts, n_heads, flavour, eps), x, out)
        if hint is not None:
            return hint
    return first_match({}, x, out, again, default)


def _wirings(wts, n_heads, approximate, eps) -> dict:
    """block_mistake's wrong blocks, {hint: [function of x]}, with one GELU flavour."""
    attn = lambda h: mha(sub(wts, "attn"), h, n_heads)  # noqa: E731
    ffn = lambda h: reference_mlp(sub(wts, "mlp"), h, approximate)  # noqa: E731
    ln1, ln2 = (lambda h, n=n, e=e: layer_norm(sub(wts, n), h, e) for n, e in zip(("ln1", "ln2"), eps))
    ln1_twice = {**wts, **{f"ln2.{k}": v for k, v in sub(wts, "ln1").items()}}

    def norm(name, e, outside):  # a LayerNorm written out with a mistake: eps outside the root, or the unbiased variance
        w = {k: v.double() for k, v in sub(wts, name).items()}

        def f(h):
            centred = h - h.mean(-1, keepdim=True)
            var = centred.pow(2).mean(-1, keepdim=True) if outside else h.var(-1, keepdim=True)
            y = centred / (var.sqrt() + e) if outside else centred / (var + e).sqrt()
            return y * w.get("weight", 1) + w.get("bias", 0)
        return f

    def with_norms(outside):
        n1, n2 = norm("ln1", eps[0], outside), norm("ln2", eps[1], outside)
        return lambda x: (lambda y: y + ffn(n2(y)))(x.double() + attn(n1(x.double())))
    return {
        "prenorm": [lambda x: reference(wts, x, n_heads, approximate, norm_first=False, eps=eps),
                    lambda x: reference(ln1_twice, x, n_heads, approximate, eps=eps)],
        "mlp": [lambda x: reference(wts, x, n_heads, "relu", eps=eps)],
        "residual": [lambda x: ffn(ln2(attn(ln1(x)))),  # no residual at all
                     lambda x: ffn(ln2(x + attn(ln1(x)))),  # none around the MLP
                     lambda x: (lambda y: y + ffn(ln2(y)))(attn(ln1(x)))],  # none around attention
        "layer_norm": [with_norms(True), with_norms(False), lambda x: reference(wts, x, n_heads, approximate)],
    }


@points(1)
def test_output_shape_preserved(w):
    """forward maps (B, T, D) to (B, T, D)."""
    for D, H, T in ((16, 4, 8), (24, 3, 5)):
        block, _ = build(w, D, H)
        expect_tensor(block.run(NO_GRAD, randn(2, T, D)).out, f"TransformerBlock({D}, {H}) on (2, {T}, {D})", (2, T, D),
                      "mismatch")


@points(2)
def test_residual_gradient(w):
    """With the sub-layers' output projections zeroed the block is the identity and d out / d x = I."""
    block, wts = build(w, 16, 4)
    block.load(zeroed(wts, "attn.proj.", "mlp.proj."))
    x, grad_out = randn(2, 8, 16), randn(2, 8, 16)
    result = block.run(Options(backward=Backward(grad_out)), On(x, grad=True))
    expect_close(result.out, x, "output with attn.proj and mlp.proj zeroed (should equal the input)",
                 hint=lambda: block_mistake(zeroed(wts, "attn.proj.", "mlp.proj."), x, 4, result.out, eps=eps_of(block)),
                 fallback="mismatch")
    inputs = result.grads.inputs if result.grads and result.grads.connected else None
    if not (type(inputs) is list and inputs and isinstance(inputs[0], torch.Tensor)):
        fail("no gradient reached the input x through the block.", "residual")
    expect_close(inputs[0], grad_out, "d out / d x applied to a random vector (should be the vector itself)",
                 hint="grad_partial")  # the output is already the identity: the graph is what is wrong


@points(2)
def test_mlp_matches_oracle(w):
    """MLP: fc (D -> expansion*D, default 4), GELU (exact or tanh), proj back to D, recomputed from its own parameters."""
    mlp = w.new(LAB, "MLP", 16)
    shapes = {name: shape for name, (shape, _) in mlp.params.items()}
    if not all("Linear" in mlp.modules.get(name, ("", "", []))[2] for name in ("fc", "proj")):
        fail("MLP needs self.fc = nn.Linear(d_model, 4 * d_model) and self.proj = nn.Linear(4 * d_model, d_model).", "mlp")
    if (shapes.get("fc.weight"), shapes.get("proj.weight")) != ((64, 16), (16, 64)):
        fail(f"MLP(16): fc must map 16 -> 64 and proj 64 -> 16; got fc weight {shapes.get('fc.weight')}, "
             f"proj weight {shapes.get('proj.weight')}.", "mlp")
    narrow = w.new(LAB, "MLP", 8, expansion=2)
    got = {name: shape for name, (shape, _) in narrow.params.items()}
    if (got.get("fc.weight"), got.get("proj.weight")) != ((16, 8), (8, 16)):
        fail(f"MLP(8, expansion=2): fc must map 8 -> 16 and proj 16 -> 8; got fc weight {got.get('fc.weight')}, "
             f"proj weight {got.get('proj.weight')}: use `expansion`.", "mlp")
    wts = fill(mlp)
    x = randn(2, 8, 16) * 2
    out = expect_tensor(mlp.run(NO_GRAD, x).out, "MLP output", (2, 8, 16), "mlp")
    approximate = gelu_flavour(out, lambda a: reference_mlp(wts, x, a))
    acts = {"relu": torch.relu, "no activation": lambda h: h, "silu": F.silu}  # anything but GELU
    w64 = {n: v.double() for n, v in wts.items()}
    wrong = [lambda act=act: F.linear(act(F.linear(x.double(), w64["fc.weight"], w64.get("fc.bias"))),
                                      w64["proj.weight"], w64.get("proj.bias")) for act in acts.values()]
    expect_close(out, reference_mlp(wts, x, approximate), "MLP output",
                 hint=lambda: "mlp" if any(matches(f(), out) for f in wrong) else None, fallback="mismatch")


@points(3)
def test_matches_oracle(w):
    """Matches x + attn(ln1(x)), then + mlp(ln2(.)), recomputed with random LayerNorm and bias values."""
    for D, H, kwargs in ((16, 4, {}), (24, 3, {"dropout": 0.1})):
        block, wts = build(w, D, H, **kwargs)
        eps = eps_of(block)
        x = randn(2, 6, D)
        out = expect_tensor(block.run(NO_GRAD, x).out, "block output", x.shape, "mismatch")
        approximate = gelu_flavour(out, lambda a: reference(wts, x, H, a, eps=eps))
        expect_close(out, reference(wts, x, H, approximate, eps=eps), f"TransformerBlock({D}, {H}) output",
                     hint=lambda: block_mistake(wts, x, H, out, approximate, eps=eps,
                                                again=lambda: block.run(Options(no_grad=True, seed=1), x).out),
                     fallback="mismatch")


def expect_gradient(got, want: torch.Tensor, what: str):
    """One parameter's gradient against the recomputation's: none at all, rows left at zero, or wrong values."""
    if not (isinstance(got, torch.Tensor) and got.device.type != "meta"):
        fail(f"{what} received no gradient.", "grad")
    if got.shape == want.shape:
        rows = lambda t: t.detach().double().reshape(t.shape[0], -1).abs().sum(-1) if t.dim() else t.abs()[None]  # noqa: E731
        need = rows(want)
        dead = ((rows(got) == 0) & (need > 1e-6 * (1 + float(need.max())))).nonzero().flatten().tolist()
        if dead:
            shown = ", ".join(map(str, dead[:8])) + (", ..." if len(dead) > 8 else "")
            fail(f"{what}: {len(dead)} of its {want.shape[0]} rows received a zero gradient (rows {shown}), though "
                 "they take part in the output.", "grad_partial")
    expect_close(got, want, f"gradient of {what}", atol=1e-4, rtol=1e-3, hint="grad_partial")


@points(2)
def test_gradients_reach_every_parameter(w):
    """Backward gives x and every parameter (both LayerNorms, attention, MLP), every row of each, the gradients of a recomputation from the same weights."""
    block, wts = build(w, 16, 4)
    eps = eps_of(block)
    block.method("train")  # dropout 0: the same function, with autograd as training sees it
    x, grad_out = randn(2, 8, 16), randn(2, 8, 16)
    result = block.run(Options(backward=Backward(grad_out)), On(x, grad=True))
    out = expect_tensor(result.out, "TransformerBlock output", x.shape, "mismatch")
    approximate = gelu_flavour(out, lambda a: reference(wts, x, 4, a, eps=eps))
    want_out, want = block_gradients(wts, x, 4, grad_out, approximate, eps)
    expect_close(out, want_out, "TransformerBlock(16, 4) output (before its gradients)",
                 hint=lambda: block_mistake(wts, x, 4, out, approximate, eps=eps), fallback="mismatch")
    grads = result.grads
    if not (grads is not None and grads.connected):
        fail("TransformerBlock: the output is not connected to the parameters (no autograd graph): avoid .detach(), "
             ".data and torch.no_grad() in forward.", "grad")
    params = grads.params if type(grads.params) is dict else {}
    for name in (n for n in contract(16) if n in wts):  # the contract's parameters
        expect_gradient(params.get(name), want[name], name)
    inputs = grads.inputs
    expect_gradient(inputs[0] if type(inputs) is list and inputs else None, want["x"], "the input x")


@points(1)
def test_causality(w):
    """Changing future tokens never changes earlier outputs."""
    block, _ = build(w, 16, 4)
    expect_causal(lambda t: block.run(NO_GRAD, t).out, randn(2, 8, 16), "TransformerBlock", positions=(0, 4))


@points(1)
def test_dropout_only_in_training(w):
    """TransformerBlock(16, 4, dropout=p) drops values in training mode only, none at p=0 (the default), more at p=0.9 than at p=0.1."""
    block, _ = build(w, 16, 4, dropout=0.5)
    x = randn(2, 8, 16)
    expect_dropout_only_in_training(block, x, "TransformerBlock(16, 4, dropout=0.5)")
    expect_dropout_follows_p(lambda **kwargs: build(w, 16, 4, **kwargs)[0], x, "TransformerBlock(16, 4)")


@points(1)
def test_no_shortcuts(w):
    """No built-in attention or transformer layers in the source, the module tree, or at run time."""
    block, _ = build(w, 16, 4)
    expect_no_shortcuts(w, lambda: block.run(Options(guard=True), randn(2, 8, 16)).out, block)


@points(1)
def test_device_discipline(w):
    """forward keeps every tensor on the input's device."""
    block, _ = build(w, 16, 4)
    expect_device_discipline(w, block, torch.randn(2, 8, 16), "TransformerBlock")


@points(2, hidden=True)
def test_extreme_inputs_and_sizes(w):
    """Matches on inputs of scale 1e-3 (LayerNorm's eps matters: the one ln1 and ln2 hold), inputs shifted by 50, and d_model=40 with 5 heads."""
    block, wts = build(w, 16, 4)
    eps = eps_of(block)
    for x, what in ((randn(2, 7, 16) * 1e-3, "inputs of scale 1e-3"), (randn(2, 7, 16) + 50, "inputs shifted by 50")):
        out = expect_tensor(block.run(NO_GRAD, x).out, "block output", x.shape, "mismatch")
        approximate = gelu_flavour(out, lambda a: reference(wts, x, 4, a, eps=eps))
        expect_close(out, reference(wts, x, 4, approximate, eps=eps),
                     f"TransformerBlock(16, 4) on {what} (LayerNorm eps {eps[0]:g} and {eps[1]:g}, as ln1 and ln2 "
                     "hold them)", atol=1e-4,
                     hint=lambda: block_mistake(wts, x, 4, out, approximate, eps=eps), fallback="mismatch")
    block, wts = build(w, 40, 5)
    eps = eps_of(block)
    x = randn(3, 11, 40)
    out = expect_tensor(block.run(NO_GRAD, x).out, "block output", x.shape, "mismatch")
    approximate = gelu_flavour(out, lambda a: reference(wts, x, 5, a, eps=eps))
    expect_close(out, reference(wts, x, 5, approximate, eps=eps), "TransformerBlock(40, 5) output",
                 hint=lambda: block_mistake(wts, x, 5, out, approximate, eps=eps), fallback="mismatch")


@points(0)
def test_works_with_your_own_earlier_labs(w):
    """Integration (no points: labs 1-2 score in their own labs): the block still matches on your own labs 1-2."""
    def probe(worker):
        block, wts = build(worker, 16, 4)
        eps = eps_of(block)
        x = randn(2, 6, 16)
        out = expect_tensor(block.run(NO_GRAD, x).out, "block output", x.shape)
        expect_close(out, reference(wts, x, 4, gelu_flavour(out, lambda a: reference(wts, x, 4, a, eps=eps)), eps=eps),
                     "TransformerBlock(16, 4) output")
    expect_own_chain(w, probe, "TransformerBlock")
