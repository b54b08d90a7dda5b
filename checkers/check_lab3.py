"""Lab 3 checks: the pre-norm transformer block."""
import torch
import torch.nn as nn

from checkers.common import (attr, eval_mode, expect_causal, expect_close, expect_every_parameter_gets_a_gradient,
                             expect_tensor, fail, gelu_flavour, oracle_block, oracle_layer_norm, oracle_mha, oracle_mlp,
                             points, randn, randomize_norms_and_biases, student)
from checkers.guards import expect_device_discipline, expect_no_shortcuts

LAB = "lab3_block"


def build(d_model=16, n_heads=4, **kwargs) -> nn.Module:
    block = eval_mode(attr(student(LAB), "TransformerBlock")(d_model, n_heads, **kwargs))
    for name in ("ln1", "attn", "ln2", "mlp"):
        if not isinstance(getattr(block, name, None), nn.Module):
            fail(f"TransformerBlock needs a sub-module self.{name} (contract: ln1, attn, ln2, mlp).", "prenorm")
    return block


def diagnose(block, x, out, approximate) -> str:
    """Name the mistake when the output matches a classic wrong wiring."""
    attn = lambda h: oracle_mha(block.attn, h)
    mlp = lambda h: oracle_mlp(block.mlp, h, approximate)
    ln1, ln2 = (lambda h: oracle_layer_norm(block.ln1, h)), (lambda h: oracle_layer_norm(block.ln2, h))
    wirings = {
        "post-norm": lambda x: (lambda y: ln2(y + mlp(y)))(ln1(x + attn(x))),
        "ln1 used twice": lambda x: (lambda y: y + mlp(ln1(y)))(x + attn(ln1(x))),
        "no residual": lambda x: mlp(ln2(attn(ln1(x)))),
        "no residual around the MLP": lambda x: mlp(ln2(x + attn(ln1(x)))),
        "no residual around attention": lambda x: (lambda y: y + mlp(ln2(y)))(attn(ln1(x))),
    }
    for name, wiring in wirings.items():
        want = wiring(x)
        if want.shape == out.shape and bool(((want - out.detach()).abs() < 1e-4).all()):
            return "residual" if "residual" in name else "prenorm"
    return "prenorm"


@points(1)
def test_output_shape_preserved():
    """forward maps (B, T, D) to (B, T, D)."""
    for D, H, T in ((16, 4, 8), (24, 3, 5)):
        expect_tensor(build(D, H)(randn(2, T, D)), f"TransformerBlock({D}, {H}) on (2, {T}, {D})", (2, T, D), "residual")


@points(2)
def test_residual_gradient():
    """With the sub-layers' output projections zeroed the block is the identity and d out / d x = I."""
    block = build(16, 4)
    with torch.no_grad():
        for proj in (block.attn.proj, block.mlp.proj):
            for p in proj.parameters():
                p.zero_()
    x = randn(2, 8, 16).requires_grad_()
    out = block(x)
    expect_close(out, x, "output with attn.proj and mlp.proj zeroed (should equal the input)", hint="residual")
    grad_out = randn(2, 8, 16)
    (grad_x,) = torch.autograd.grad(out, x, grad_out)
    expect_close(grad_x, grad_out, "d out / d x applied to a random vector (should be the vector itself)", hint="residual")


@points(2)
def test_mlp_matches_oracle():
    """MLP: fc (D -> 4D), GELU (exact or tanh), proj (4D -> D), recomputed from its own parameters."""
    mlp = eval_mode(attr(student(LAB), "MLP")(16))
    fc, proj = getattr(mlp, "fc", None), getattr(mlp, "proj", None)
    if not (isinstance(fc, nn.Linear) and isinstance(proj, nn.Linear)):
        fail("MLP needs self.fc = nn.Linear(d_model, 4 * d_model) and self.proj = nn.Linear(4 * d_model, d_model).", "mlp")
    if (fc.in_features, fc.out_features, proj.out_features) != (16, 64, 16):
        fail(f"MLP(16): fc must map 16 -> 64 and proj 64 -> 16; got fc {fc.in_features} -> {fc.out_features}, "
             f"proj {proj.in_features} -> {proj.out_features}.", "mlp")
    x = randn(2, 8, 16) * 2
    with torch.no_grad():
        out = mlp(x)
        expect_close(out, oracle_mlp(mlp, x, gelu_flavour(mlp, x)), "MLP output", hint="mlp")


@points(3)
def test_matches_oracle():
    """Matches x + attn(ln1(x)), then + mlp(ln2(.)), recomputed with random LayerNorm and bias values."""
    for D, H, kwargs in ((16, 4, {}), (24, 3, {"dropout": 0.1})):
        block = build(D, H, **kwargs)
        randomize_norms_and_biases(block)
        x = randn(2, 6, D)
        with torch.no_grad():
            out = block(x)
            approximate = gelu_flavour(block.mlp, x)
            expect_tensor(out, "block output", x.shape, "residual")
            expect_close(out, oracle_block(block, x, approximate), f"TransformerBlock({D}, {H}) output",
                         hint=lambda: diagnose(block, x, out, approximate))


@points(2)
def test_gradients_reach_every_parameter():
    """Backward works and every parameter (both LayerNorms, attention, MLP) receives a gradient."""
    block = build(16, 4)
    randomize_norms_and_biases(block)
    out = block(randn(2, 8, 16))
    expect_every_parameter_gets_a_gradient(block, (out * randn(*out.shape)).sum(), "TransformerBlock")


@points(1)
def test_causality():
    """Changing future tokens never changes earlier outputs."""
    block = build(16, 4)
    randomize_norms_and_biases(block)
    x = randn(2, 8, 16)
    expect_causal(block, x, "TransformerBlock", positions=(0, 4))


@points(1)
def test_no_shortcuts():
    """No built-in attention or transformer layers in the source, the module tree, or at run time."""
    block = build(16, 4)
    expect_no_shortcuts(student(LAB), lambda: block(randn(2, 8, 16)).sum().backward(), block)


@points(1)
def test_device_discipline():
    """forward keeps every tensor on the input's device."""
    expect_device_discipline(build(16, 4), torch.randn(2, 8, 16), "TransformerBlock")
