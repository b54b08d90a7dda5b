"""Lab 3 checks: the pre-norm transformer block, compared with recomputations from weights the judge chose."""
import torch

from judge.client import NO_GRAD, On, Options
from judge.checks import fail, points
from judge.compare import expect_close, expect_tensor, first_match, randn
from judge.shared import (expect_causal, expect_device_discipline, expect_dropout_only_in_training,
                          expect_every_parameter_gets_a_gradient, expect_no_shortcuts, expect_own_chain,
                          expect_params, fill, gelu_flavour, sub, zeroed)
from judge.oracles import block as reference, layer_norm, mha, mlp as reference_mlp
from protocol.messages import Backward

LAB = "lab3_block"


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


def block_mistake(wts, x, n_heads, out, approximate="none", again=None) -> str:
    """Name the mistake when the output matches a classic wrong wiring: torch's layer post-norm, with ReLU or with
    ln1's weights in ln2's place, or a block missing a residual connection."""
    attn = lambda h: mha(sub(wts, "attn"), h, n_heads)  # noqa: E731
    ffn = lambda h: reference_mlp(sub(wts, "mlp"), h, approximate)  # noqa: E731
    ln1, ln2 = (lambda h, n=n: layer_norm(sub(wts, n), h) for n in ("ln1", "ln2"))
    ln1_twice = {**wts, **{f"ln2.{k}": v for k, v in sub(wts, "ln1").items()}}
    wirings = {
        "prenorm": [lambda x: reference(wts, x, n_heads, approximate, norm_first=False),
                    lambda x: reference(ln1_twice, x, n_heads, approximate)],
        "mlp": [lambda x: reference(wts, x, n_heads, "relu")],
        "residual": [lambda x: ffn(ln2(attn(ln1(x)))),  # no residual at all
                     lambda x: ffn(ln2(x + attn(ln1(x)))),  # none around the MLP
                     lambda x: (lambda y: y + ffn(ln2(y)))(attn(ln1(x)))],  # none around attention
    }
    return first_match(wirings, x, out, again, "prenorm")


@points(1)
def test_output_shape_preserved(w):
    """forward maps (B, T, D) to (B, T, D)."""
    for D, H, T in ((16, 4, 8), (24, 3, 5)):
        block, _ = build(w, D, H)
        expect_tensor(block.run(NO_GRAD, randn(2, T, D)).out, f"TransformerBlock({D}, {H}) on (2, {T}, {D})", (2, T, D),
                      "residual")


@points(2)
def test_residual_gradient(w):
    """With the sub-layers' output projections zeroed the block is the identity and d out / d x = I."""
    block, wts = build(w, 16, 4)
    block.load(zeroed(wts, "attn.proj.", "mlp.proj."))
    x, grad_out = randn(2, 8, 16), randn(2, 8, 16)
    result = block.run(Options(backward=Backward(grad_out)), On(x, grad=True))
    expect_close(result.out, x, "output with attn.proj and mlp.proj zeroed (should equal the input)",
                 hint=lambda: block_mistake(zeroed(wts, "attn.proj.", "mlp.proj."), x, 4, result.out), fallback="residual")
    inputs = result.grads.inputs if result.grads and result.grads.connected else None
    if not (type(inputs) is list and inputs and isinstance(inputs[0], torch.Tensor)):
        fail("no gradient reached the input x through the block.", "residual")
    expect_close(inputs[0], grad_out, "d out / d x applied to a random vector (should be the vector itself)",
                 hint="residual")


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
    expect_close(out, reference_mlp(wts, x, approximate), "MLP output", hint="mlp")


@points(3)
def test_matches_oracle(w):
    """Matches x + attn(ln1(x)), then + mlp(ln2(.)), recomputed with random LayerNorm and bias values."""
    for D, H, kwargs in ((16, 4, {}), (24, 3, {"dropout": 0.1})):
        block, wts = build(w, D, H, **kwargs)
        x = randn(2, 6, D)
        out = expect_tensor(block.run(NO_GRAD, x).out, "block output", x.shape, "residual")
        approximate = gelu_flavour(out, lambda a: reference(wts, x, H, a))
        expect_close(out, reference(wts, x, H, approximate), f"TransformerBlock({D}, {H}) output",
                     hint=lambda: block_mistake(wts, x, H, out, approximate, again=lambda: block.run(Options(no_grad=True, seed=1), x).out),
                     fallback="prenorm")


@points(2)
def test_gradients_reach_every_parameter(w):
    """Backward works and every parameter (both LayerNorms, attention, MLP) receives a gradient."""
    block, _ = build(w, 16, 4)
    expect_every_parameter_gets_a_gradient(block, randn(2, 8, 16), "TransformerBlock")


@points(1)
def test_causality(w):
    """Changing future tokens never changes earlier outputs."""
    block, _ = build(w, 16, 4)
    expect_causal(lambda t: block.run(NO_GRAD, t).out, randn(2, 8, 16), "TransformerBlock", positions=(0, 4))


@points(1)
def test_dropout_only_in_training(w):
    """TransformerBlock(16, 4, dropout=0.5) drops values in training mode and none in eval mode."""
    block, _ = build(w, 16, 4, dropout=0.5)
    expect_dropout_only_in_training(block, randn(2, 8, 16), "TransformerBlock(16, 4, dropout=0.5)")


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
    """Matches on inputs of scale 1e-3 (LayerNorm's eps matters), inputs shifted by 50, and d_model=40 with 5 heads."""
    block, wts = build(w, 16, 4)
    for x, what in ((randn(2, 7, 16) * 1e-3, "inputs of scale 1e-3"), (randn(2, 7, 16) + 50, "inputs shifted by 50")):
        out = expect_tensor(block.run(NO_GRAD, x).out, "block output", x.shape, "residual")
        expect_close(out, reference(wts, x, 4, gelu_flavour(out, lambda a: reference(wts, x, 4, a))),
                     f"TransformerBlock(16, 4) on {what}", atol=1e-4, hint="prenorm")
    block, wts = build(w, 40, 5)
    x = randn(3, 11, 40)
    out = expect_tensor(block.run(NO_GRAD, x).out, "block output", x.shape, "residual")
    expect_close(out, reference(wts, x, 5, gelu_flavour(out, lambda a: reference(wts, x, 5, a))),
                 "TransformerBlock(40, 5) output", hint=lambda: block_mistake(wts, x, 5, out), fallback="prenorm")


@points(0)
def test_works_with_your_own_earlier_labs(w):
    """Integration (no points: labs 1-2 score in their own labs): the block still matches on your own labs 1-2."""
    def probe(worker):
        block, wts = build(worker, 16, 4)
        x = randn(2, 6, 16)
        out = expect_tensor(block.run(NO_GRAD, x).out, "block output", x.shape)
        expect_close(out, reference(wts, x, 4, gelu_flavour(out, lambda a: reference(wts, x, 4, a))),
                     "TransformerBlock(16, 4) output")
    expect_own_chain(w, probe, "TransformerBlock")
