"""Lab 5 checks: RMSNorm, SwiGLU, rope, grouped-query attention, the Llama block and model, and its training.

Every expected value comes from judge/oracles.py on the weights the judge loaded into the student's modules.
The model trains with lab 4's `train` (the pack's own, when lab 5 is graded on its own) and the judge evaluates
the weights it reports.
"""
import math

import torch
import torch.nn.functional as F

from judge.client import NO_GRAD, Options
from judge.checks import fail, points
from judge.compare import expect_close, expect_tensor, first_match, randn
from judge.shared import (expect_causal, expect_device_discipline, expect_every_parameter_gets_a_gradient,
                          expect_no_shortcuts, expect_own_chain, expect_params, fill, sub)
from judge.shared import OURS, TrainingRun
from protocol.messages import Backward, Figure
from judge.oracles import gqa, greedy_of, llama_block, llama_of, loss_of, rms_norm, rope, swiglu

# Each contract item of the stub (tests/test_contract.py) and the checks that would fail were it wrong; `f(arg=)` is
# the default, exercised by a call that leaves the argument out.
RMS, ROPE, ATTN = "test_rmsnorm_matches_formula", "test_rope_matches_formula", "test_attention_matches_oracle"
STRUCTURE, BLOCK, MODEL = "test_module_structure", "test_block_matches_oracle", "test_model_matches_oracle"
CONTRACT = {
    "RMSNorm": (RMS,),
    "RMSNorm(d_model)": (RMS,),
    "RMSNorm(eps)": (RMS, STRUCTURE),
    "RMSNorm(eps=)": (RMS, STRUCTURE),
    "RMSNorm.eps": (STRUCTURE,),
    "RMSNorm.weight": (RMS,),
    "RMSNorm.forward": (RMS, "test_rmsnorm_keeps_half_precision"),
    "RMSNorm.forward(x)": (RMS, "test_rmsnorm_keeps_half_precision"),
    "SwiGLU": ("test_swiglu_matches_formula",),
    "SwiGLU(d_model)": ("test_swiglu_matches_formula",),
    "SwiGLU(d_ff)": ("test_swiglu_matches_formula",),
    "SwiGLU.w1": ("test_swiglu_matches_formula",),
    "SwiGLU.w2": ("test_swiglu_matches_formula",),
    "SwiGLU.w3": ("test_swiglu_matches_formula",),
    "SwiGLU.forward": ("test_swiglu_matches_formula",),
    "SwiGLU.forward(x)": ("test_swiglu_matches_formula",),
    "rope": (ROPE, "test_rope_relative_positions"),
    "rope(x)": (ROPE,),
    "rope(positions)": (ROPE, "test_rope_relative_positions"),
    "rope(theta)": (ROPE,),
    "rope(theta=)": (ROPE,),
    "GQAttention": (ATTN,),
    "GQAttention(d_model)": (ATTN, STRUCTURE),
    "GQAttention(n_heads)": (ATTN, STRUCTURE),
    "GQAttention(n_kv_heads)": (ATTN, STRUCTURE),
    "GQAttention(theta)": (ATTN, STRUCTURE),
    "GQAttention(theta=)": (ATTN, STRUCTURE),
    "GQAttention.n_heads": (STRUCTURE,),
    "GQAttention.n_kv_heads": (STRUCTURE,),
    "GQAttention.d_head": (STRUCTURE,),
    "GQAttention.theta": (STRUCTURE,),
    "GQAttention.wq": (ATTN,),
    "GQAttention.wk": (ATTN,),
    "GQAttention.wv": (ATTN,),
    "GQAttention.wo": (ATTN,),
    "GQAttention.forward": (ATTN,),
    "GQAttention.forward(x)": (ATTN,),
    "LlamaBlock": (BLOCK,),
    "LlamaBlock(d_model)": (BLOCK,),
    "LlamaBlock(n_heads)": (BLOCK,),
    "LlamaBlock(n_kv_heads)": (BLOCK,),
    "LlamaBlock(d_ff)": (BLOCK,),
    "LlamaBlock.norm1": (BLOCK,),
    "LlamaBlock.attn": (BLOCK,),
    "LlamaBlock.norm2": (BLOCK,),
    "LlamaBlock.ffn": (BLOCK,),
    "LlamaBlock.forward": (BLOCK,),
    "LlamaBlock.forward(x)": (BLOCK,),
    "LlamaGPT": (MODEL, STRUCTURE),
    "LlamaGPT(vocab_size)": (MODEL,),
    "LlamaGPT(d_model)": (MODEL,),
    "LlamaGPT(d_model=)": (MODEL,),
    "LlamaGPT(n_heads)": (MODEL,),
    "LlamaGPT(n_heads=)": (MODEL,),
    "LlamaGPT(n_kv_heads)": (MODEL,),
    "LlamaGPT(n_kv_heads=)": (MODEL,),
    "LlamaGPT(n_layers)": (STRUCTURE, MODEL),
    "LlamaGPT(n_layers=)": (MODEL,),
    "LlamaGPT(max_seq_len)": (STRUCTURE,),
    "LlamaGPT(max_seq_len=)": (MODEL,),
    "LlamaGPT(d_ff)": (MODEL,),
    "LlamaGPT(d_ff=)": (MODEL,),
    "LlamaGPT.tok_emb": (STRUCTURE, MODEL),
    "LlamaGPT.blocks": (STRUCTURE, MODEL),
    "LlamaGPT.norm": (STRUCTURE, MODEL),
    "LlamaGPT.lm_head": (STRUCTURE, MODEL),
    "LlamaGPT.max_seq_len": (STRUCTURE,),
    "LlamaGPT.forward": (MODEL, "test_causality"),
    "LlamaGPT.forward(idx)": (MODEL,),
    "sentence: RMSNorm computes in float32 and returns x's dtype": ("test_rmsnorm_keeps_half_precision",),
    "sentence: n_layers distinct blocks": (STRUCTURE,),
    "sentence: no position table, positions through rope": (STRUCTURE,),
    "sentence: trained with lab 4's train, sampled with lab 4's sample": ("test_loss_drops_30_percent",
                                                                         "test_greedy_continues_pattern"),
    "sentence: no built-in attention or RMSNorm": ("test_no_shortcuts",),
}

LAB = "lab5_llama"
TEXT, STEPS = TrainingRun.TEXT, TrainingRun.STEPS
PROMPT, NEW_TOKENS = TrainingRun.PROMPT, TrainingRun.NEW_TOKENS
SEQ_LEN = 16
D, H, KV, L = 32, 4, 2, 2


# ---- the contract's parameters, and the student's modules with the judge's weights ---------------------------
def attn_contract(D: int, H: int, KV: int) -> dict:
    return {"wq.weight": (D, D), "wk.weight": (KV * (D // H), D), "wv.weight": (KV * (D // H), D), "wo.weight": (D, D)}


def block_contract(D: int, H: int, KV: int, d_ff: int) -> dict:
    return {"norm1.weight": (D,), **{f"attn.{n}": s for n, s in attn_contract(D, H, KV).items()},
            "norm2.weight": (D,), "ffn.w1.weight": (d_ff, D), "ffn.w3.weight": (d_ff, D), "ffn.w2.weight": (D, d_ff)}


def model_contract(V: int, D: int, H: int, KV: int, n_layers: int, d_ff: int) -> dict:
    want = {"tok_emb.weight": (V, D)}
    for i in range(n_layers):
        want.update({f"blocks.{i}.{n}": s for n, s in block_contract(D, H, KV, d_ff).items()})
    return {**want, "norm.weight": (D,), "lm_head.weight": (V, D)}


def build(w, name: str, want: dict, *args, style="check", lab=LAB, hint="llama", **kwargs):
    """The student's `name`(*args) with exactly the contract's parameters, filled with the judge's values."""
    h = w.new(lab, name, *args, **kwargs)
    what = f"{name}({', '.join([*map(str, args), *(f'{k}={v}' for k, v in kwargs.items())])})"
    expect_params(h, want, what, hint)
    extra = sorted(set(h.params) - set(want) - {n for g in h.ties for n in g})
    if extra:
        fail(f"{what} has parameters the contract does not list: {', '.join(extra)} (no biases in lab 5).", hint)
    return h, fill(h, style=style)


def build_gpt(w, V=11, d_model=D, n_heads=H, n_kv_heads=KV, n_layers=L, max_seq_len=SEQ_LEN, style="check", lab=LAB,
              d_ff=None, hint="llama"):
    return build(w, "LlamaGPT", model_contract(V, d_model, n_heads, n_kv_heads, n_layers, d_ff or 4 * d_model), V,
                 d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, n_layers=n_layers, max_seq_len=max_seq_len,
                 style=style, lab=lab, hint=hint, **({} if d_ff is None else {"d_ff": d_ff}))


def tokens(B, T, V=11):
    return torch.randint(V, (B, T))


# ---- diagnoses: each known mistake is the oracle with one thing changed ----------------------------------------
def rms_mistake(weight, x, out) -> str:
    x64, wt = x.double(), weight.double()
    ms = x64.pow(2).mean(-1, keepdim=True)
    variants = {
        "rms_sqrt": [lambda x: x64 / (ms + 1e-5) * wt, lambda x: x64 * (ms + 1e-5) * wt],
        "rms_dim": [lambda x: x64 / (x64.pow(2).mean(-2, keepdim=True) + 1e-5).sqrt() * wt,
                    lambda x: x64 / (x64.pow(2).mean() + 1e-5).sqrt() * wt],
        "rms_center": [lambda x: F.layer_norm(x64, (x.size(-1),), wt, None, 1e-5)],
        "rms_eps": [lambda x: x64 / (ms.sqrt() + 1e-5) * wt],
        "rms_weight": [lambda x: rms_norm(torch.ones_like(wt), x)],
    }
    return first_match(variants, x, out, default="compare")


def swiglu_mistake(wts, x, out) -> str:
    swapped = {"w1.weight": wts["w3.weight"], "w3.weight": wts["w1.weight"], "w2.weight": wts["w2.weight"]}
    variants = {
        "swiglu_gate": [lambda x: swiglu(swapped, x)],
        "swiglu_act": [lambda x: swiglu(wts, x, F.gelu), lambda x: swiglu(wts, x, F.relu),
                       lambda x: swiglu(wts, x, torch.sigmoid), lambda x: swiglu(wts, x, lambda t: t)],
    }
    return first_match(variants, x, out, default="swiglu")


def rope_mistake(x, positions, out, theta=10000.0) -> str:
    variants = {
        "rope_pairs": [lambda x: rope(x, positions, theta, halves=True)],
        "rope_freq": [lambda x: rope(x, positions, theta, rate=1.0), lambda x: rope(x, positions, theta, rate=-2.0),
                      lambda x: rope(x, positions, 10000.0)],
        "rope_rotation": [lambda x: rope(x, positions, theta, sign=-1)],
        "rope_positions": [lambda x: x.double(), lambda x: rope(x, torch.zeros_like(positions), theta),
                           lambda x: rope(x, torch.arange(x.size(-2)).expand_as(positions), theta)],
    }
    return first_match(variants, x, out, default="rope")


def attn_mistake(wts, x, n_heads, n_kv_heads, out) -> str:
    T = x.size(1)
    variants = {
        "gqa_order": [lambda x: gqa(wts, x, n_heads, n_kv_heads, interleave=False)],
        "rope_values": [lambda x: gqa(wts, x, n_heads, n_kv_heads, rope_on="qkv")],
        "rope_qk": [lambda x, on=on: gqa(wts, x, n_heads, n_kv_heads, rope_on=on) for on in ((), ("q",), ("k",))],
        "causal": [lambda x: gqa(wts, x, n_heads, n_kv_heads, mask=torch.ones(T, T, dtype=torch.bool))],
        "scale": [lambda x: gqa(wts, x, n_heads, n_kv_heads, scale=1.0)],
    }
    return first_match(variants, x, out, default="gqa")


def block_mistake(wts, x, out) -> str:
    attn = lambda h: gqa(sub(wts, "attn"), h, H, KV)  # noqa: E731
    ffn = lambda h: swiglu(sub(wts, "ffn"), h)  # noqa: E731
    norm1, norm2 = (lambda h, n=n: rms_norm(wts[f"{n}.weight"], h) for n in ("norm1", "norm2"))
    variants = {
        "llama_prenorm": [lambda x: llama_block(wts, x, H, KV, post_norm=True),
                          lambda x: llama_block(wts, x, H, KV, norm2="norm1")],
        "llama_residual": [lambda x: ffn(norm2(attn(norm1(x)))), lambda x: ffn(norm2(x + attn(norm1(x)))),
                     lambda x: (lambda y: y + ffn(norm2(y)))(attn(norm1(x)))],
    }
    return first_match(variants, x, out, default="compare")


# ---- the checks --------------------------------------------------------------------------------------------------
@points(2)
def test_rmsnorm_matches_formula(w):
    """RMSNorm: x / sqrt(mean(x**2, -1) + eps) * weight, on inputs whose mean is not zero, with the default eps
    (1e-5, on inputs small enough for it to count) and a given one."""
    # a large eps on small inputs, and the default eps on inputs whose mean square is about 1e-5: eps counts
    for eps, scale in ((None, 2.0), (None, 3e-3), (0.5, 0.3)):
        norm, wts = build(w, "RMSNorm", {"weight": (24,)}, 24, **({} if eps is None else {"eps": eps}))
        x = randn(2, 5, 24) * scale + 0.5 * scale
        out = expect_tensor(norm.run(NO_GRAD, x).out, "RMSNorm output", x.shape, "compare")
        what = f"RMSNorm(24{'' if eps is None else f', eps={eps}'}) on inputs of scale {scale:g}"
        expect_close(out, rms_norm(wts["weight"], x, eps or 1e-5), what, atol=1e-5 if scale > 0.1 else 1e-4,
                     hint=(lambda: rms_mistake(wts["weight"], x, out)) if scale == 2.0 else "rms_eps",
                     fallback="compare")


@points(1)
def test_rmsnorm_keeps_half_precision(w):
    """RMSNorm computes in float32 and returns the input's dtype: float16 inputs near 300 (whose squares overflow
    float16) and bfloat16 inputs."""
    norm, wts = build(w, "RMSNorm", {"weight": (64,)}, 64)
    for dtype, x in ((torch.float16, randn(2, 4, 64) * 300), (torch.bfloat16, randn(2, 4, 64) * 3)):
        half = x.to(dtype)
        out = expect_tensor(norm.run_method(NO_GRAD, "forward", half).out, f"RMSNorm on {dtype}", half.shape,
                            "rms_float32")
        if out.dtype != dtype:
            fail(f"RMSNorm on a {str(dtype)[6:]} input returned {str(out.dtype)[6:]}: return the input's dtype "
                 "(compute in float32, then .to(x.dtype)).", "rms_float32")
        expect_close(out, rms_norm(wts["weight"], half).to(dtype), f"RMSNorm on {str(dtype)[6:]} inputs", atol=2e-2,
                     rtol=2e-2, hint="rms_float32")


@points(2)
def test_swiglu_matches_formula(w):
    """SwiGLU: w2(silu(w1 x) * w3 x) with w1, w3 (D -> d_ff) and w2 (d_ff -> D), no biases."""
    ffn, wts = build(w, "SwiGLU", {"w1.weight": (40, 16), "w3.weight": (40, 16), "w2.weight": (16, 40)}, 16, 40)
    x = randn(2, 6, 16)
    out = expect_tensor(ffn.run(NO_GRAD, x).out, "SwiGLU output", x.shape, "swiglu")
    expect_close(out, swiglu(wts, x), "SwiGLU(16, 40)", atol=1e-5, hint=lambda: swiglu_mistake(wts, x, out),
                 fallback="swiglu")


@points(2)
def test_rope_matches_formula(w):
    """rope turns each adjacent pair (2i, 2i+1) by position * theta ** (-2i / d): positions (T,) or (B, 1, T), any theta
    (10000 by default)."""
    x = randn(2, 3, 7, 8)
    cases = ((torch.arange(7), 10000.0, "positions 0..6"),
             (torch.randint(0, 50, (2, 1, 7)), 10000.0, "positions of shape (2, 1, 7)"),
             (torch.arange(7) + 3, 100.0, "positions 3..9 and theta=100"),
             (torch.arange(7) + 5, None, "positions 5..11, theta left to its default (10000)"))  # last: the rest passed
    for positions, given, what in cases:
        theta = given or 10000.0
        out = w.call((LAB, "rope"), x, positions, *(() if given is None else (given,)))
        out = expect_tensor(out, f"rope(x of shape {tuple(x.shape)}, {what})", x.shape, "rope")
        expect_close(out, rope(x, positions, theta), f"rope with {what}", atol=1e-4,
                     hint=(lambda: rope_mistake(x, positions, out, theta)) if given else "defaults", fallback="rope")


@points(1)
def test_rope_relative_positions(w):
    """Scores between rope'd queries and keys depend only on position differences, and rope keeps each vector's length."""
    q, k, base = randn(1, 1, 6, 16), randn(1, 1, 6, 16), torch.arange(6)
    scores = []
    for shift in (0, 7, 100):
        q_rot, k_rot = (expect_tensor(w.call((LAB, "rope"), t, base + shift), "rope's output", t.shape, "rope")
                        for t in (q, k))
        if shift == 0:
            expect_close(q_rot.norm(dim=-1), q.norm(dim=-1), "lengths of vectors after rope (a rotation keeps them)",
                         atol=1e-4, hint="rope_rotation")
        scores.append((q_rot @ k_rot.transpose(-2, -1)).double())
    for shift, s in zip((7, 100), scores[1:]):
        expect_close(s, scores[0], f"q . k scores with every position moved by {shift} (should not change)",
                     atol=1e-3, hint="rope_rotation")


@points(3)
def test_attention_matches_oracle(w):
    """GQAttention with n_kv_heads in {1, 2, n_heads} (n_heads: plain multi-head attention), and with theta=100 given:
    rope on queries and keys, query head h reading key/value head h // (n_heads // n_kv_heads), causal, lab 1's
    attention, wo."""
    x = randn(2, 9, D)
    for n_kv in (1, 2, H):
        attn, wts = build(w, "GQAttention", attn_contract(D, H, n_kv), D, H, n_kv)
        out = expect_tensor(attn.run(NO_GRAD, x).out, f"GQAttention({D}, {H}, {n_kv}) output", x.shape, "gqa")
        expect_close(out, gqa(wts, x, H, n_kv), f"GQAttention({D}, n_heads={H}, n_kv_heads={n_kv})", atol=1e-4,
                     hint=lambda: attn_mistake(wts, x, H, n_kv, out), fallback="compare")
    attn, wts = build(w, "GQAttention", attn_contract(D, H, KV), D, H, KV, theta=100.0)  # theta given to the constructor
    out = expect_tensor(attn.run(NO_GRAD, x).out, f"GQAttention({D}, {H}, {KV}, theta=100.0) output", x.shape, "gqa")
    expect_close(out, gqa(wts, x, H, KV, theta=100.0), f"GQAttention({D}, n_heads={H}, n_kv_heads={KV}, theta=100.0)",
                 atol=1e-4, hint=lambda: first_match({"gqa_theta": [lambda x: gqa(wts, x, H, KV)]}, x, out),
                 fallback="compare")


@points(1)
def test_module_structure(w):
    """The contract's sub-modules: LlamaBlock's norm1, attn, norm2, ffn; LlamaGPT's tok_emb, blocks, norm, lm_head and
    no position table; n_layers distinct blocks; GQAttention keeps n_heads, n_kv_heads, d_head and theta (default
    10000.0), RMSNorm its eps (default 1e-5)."""
    attn = w.new(LAB, "GQAttention", 24, 6, 2)
    for name, want in (("n_heads", 6), ("n_kv_heads", 2), ("d_head", 4)):
        if attn.attr(name) != want:
            fail(f"GQAttention(24, 6, 2).{name} should be {want}, got {attn.attr(name)!r}.", "gqa")
    for args, kwargs, want in (((24, 6, 2), {}, 10000.0), ((24, 6, 2), {"theta": 500.0}, 500.0)):
        got = w.new(LAB, "GQAttention", *args, **kwargs).get("theta")
        if got != want:
            fail(f"GQAttention(24, 6, 2{', theta=500.0' if kwargs else ''}).theta should be {want}, got {got!r}.",
                 "gqa_theta")
    for kwargs, want in (({}, 1e-5), ({"eps": 0.25}, 0.25)):
        got = w.new(LAB, "RMSNorm", 8, **kwargs).get("eps")
        if got != want:
            fail(f"RMSNorm(8{', eps=0.25' if kwargs else ''}).eps should be {want}, got {got!r}.", "rms_eps")
    gpt, _ = build_gpt(w, n_layers=3)
    modules = gpt.modules
    owners = [{n.split(".")[1] for n in group if n.startswith("blocks.")} for group in gpt.ties]
    shared = sorted(set().union(*(blocks for blocks in owners if len(blocks) > 1)))  # one tensor in two blocks
    if shared:
        fail(f"LlamaGPT(n_layers=3)'s blocks {', '.join(shared)} share their parameters: each layer must be a "
             "LlamaBlock of its own.", "llama_blocks")
    for name, kind in (("tok_emb", "Embedding"), ("blocks", "ModuleList"), ("norm", None), ("lm_head", "Linear")):
        if name not in modules or (kind and kind not in modules[name][2]):
            fail(f"LlamaGPT needs self.{name} ({kind or 'an RMSNorm'}).", "llama")
    blocks = [m for n, m in modules.items() if n.startswith("blocks.") and n.count(".") == 1]
    if len(blocks) != 3 or not all(m[0] == "LlamaBlock" for m in blocks):
        fail(f"blocks must hold n_layers=3 LlamaBlocks, got {[m[0] for m in blocks]}.", "llama")
    if any("Embedding" in kinds for n, (_, _, kinds) in modules.items() if n and n != "tok_emb"):
        fail("LlamaGPT has an embedding besides tok_emb: positions enter through rope, not a table.", "llama")
    if gpt.attr("max_seq_len") != SEQ_LEN:
        fail("LlamaGPT must keep max_seq_len as self.max_seq_len (lab 4's generate crops with it).", "llama")


@points(2)
def test_block_matches_oracle(w):
    """LlamaBlock: x = x + attn(norm1(x)), then x = x + ffn(norm2(x)), recomputed from its own parameters."""
    block, wts = build(w, "LlamaBlock", block_contract(D, H, KV, 64), D, H, KV, 64)
    x = randn(2, 8, D)
    out = expect_tensor(block.run(NO_GRAD, x).out, "LlamaBlock output", x.shape, "llama")
    expect_close(out, llama_block(wts, x, H, KV), f"LlamaBlock({D}, {H}, {KV}, 64)", atol=1e-4,
                 hint=lambda: block_mistake(wts, x, out), fallback="compare")


@points(2)
def test_model_matches_oracle(w):
    """LlamaGPT's logits: tok_emb, the blocks, norm, lm_head, recomputed from its own parameters, at other sizes given
    (d_model, n_heads, n_kv_heads, n_layers, d_ff) and at the defaults."""
    gpt, wts = build_gpt(w)
    idx = tokens(2, 10)
    logits = expect_tensor(gpt.run(NO_GRAD, idx).out, "logits", (2, 10, 11), "llama")
    expect_close(logits, llama_of(wts, H, KV, L)(idx), "LlamaGPT logits", atol=1e-4, hint="llama")
    # other sizes, each given: d_model, n_heads, n_kv_heads, n_layers and d_ff are passed on
    gpt, wts = build_gpt(w, d_model=24, n_heads=6, n_kv_heads=3, n_layers=1, d_ff=40, hint="llama_args")
    logits = expect_tensor(gpt.run(NO_GRAD, idx).out, "logits", (2, 10, 11), "llama")
    expect_close(logits, llama_of(wts, 6, 3, 1)(idx), "LlamaGPT(11, d_model=24, n_heads=6, n_kv_heads=3, n_layers=1, "
                 "d_ff=40) logits", atol=1e-4, hint="llama_args")
    # the defaults: LlamaGPT(11) is d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, max_seq_len=32, d_ff=4 * d_model
    gpt, wts = build(w, "LlamaGPT", model_contract(11, 32, 4, 2, 2, 128), 11, hint="defaults")
    if gpt.attr("max_seq_len") != 32:
        fail(f"LlamaGPT(11).max_seq_len should be 32 by default, got {gpt.attr('max_seq_len')!r}.", "defaults")
    logits = expect_tensor(gpt.run(NO_GRAD, idx).out, "LlamaGPT(11) logits", (2, 10, 11), "defaults")
    expect_close(logits, llama_of(wts, 4, 2, 2)(idx), "LlamaGPT(11) logits, against n_heads=4 and n_kv_heads=2 (the "
                 "defaults)", atol=1e-4, hint="defaults")


@points(1)
def test_gradients_reach_every_parameter(w):
    """Backward works and every parameter receives a gradient."""
    gpt, _ = build_gpt(w)
    expect_every_parameter_gets_a_gradient(gpt, tokens(2, 12), "LlamaGPT")


@points(1)
def test_causality(w):
    """Changing future tokens never changes earlier logits."""
    gpt, _ = build_gpt(w)
    expect_causal(lambda t: gpt.run(NO_GRAD, t).out, tokens(2, 12), "LlamaGPT logits", positions=(0, 5))


@points(1)
def test_device_discipline(w):
    """forward builds positions, angles and masks on the input's device."""
    gpt, _ = build_gpt(w)
    expect_device_discipline(w, gpt, tokens(2, 8), "LlamaGPT forward")


@points(1)
def test_no_shortcuts(w):
    """No built-in attention, RMSNorm or transformer layers in the source, the module tree, or at run time."""
    gpt, _ = build_gpt(w)
    expect_no_shortcuts(w, lambda: gpt.run(Options(guard=True, backward=Backward(randn(2, 8, 11))), tokens(2, 8)),
                        gpt)


class Run(TrainingRun):
    """The student's LlamaGPT trained from default weights by lab 4's `train` on the text; the judge's own losses."""
    hint = "llama"

    def build(self, w, vocab_size):
        return build_gpt(w, vocab_size, style="default")

    def __init__(self, w):
        super().__init__(w)
        self.logged = [round(x, 4) for x in self.losses]
        self.forward = llama_of(self.after, H, KV, L)
        self.loss_before = loss_of(llama_of(self.before, H, KV, L), self.data, SEQ_LEN)
        self.loss_after = loss_of(self.forward, self.data, SEQ_LEN)


def trained(w) -> Run:
    return Run.of(w)


@points(2)
def test_loss_drops_30_percent(w):
    """Trained by lab 4's train (60 steps), the model's next-token loss, as the grader computes it, drops by more than 30%."""
    run = trained(w)
    shown = [Figure("losses", values=run.logged)] if len(run.logged) >= 2 else []
    if not (math.isfinite(run.loss_after) and run.loss_after < 0.7 * run.loss_before):
        fail(f"next-token loss went from {run.loss_before:.3f} to {run.loss_after:.3f} after {STEPS} steps of lab 4's "
             "train: a drop of more than 30% is expected.", "llama_train", figures=shown)
    return shown


@points(2)
def test_greedy_continues_pattern(w):
    """After training, greedy sampling with lab 4's sample (top_k=1) continues the text exactly, past max_seq_len."""
    run = trained(w)
    ours = greedy_of(run.forward, run.prompt(), NEW_TOKENS, SEQ_LEN)
    got = w.call(("lab4_gpt", "sample"), run.model, run.tok, PROMPT, NEW_TOKENS, top_k=1)
    return run.expect_continuation(ours, [(got, "sample")], lambda at, whose: "llama_train" if whose == OURS else "sampling")


@points(2, hidden=True)
def test_other_sizes_and_positions(w):
    """GQAttention(48, 6, 3) on 13 tokens, RMSNorm with eps=1e-2 on small inputs, rope at positions past 1000."""
    x = randn(2, 13, 48)
    attn, wts = build(w, "GQAttention", attn_contract(48, 6, 3), 48, 6, 3)
    out = expect_tensor(attn.run(NO_GRAD, x).out, "GQAttention(48, 6, 3) output", x.shape, "gqa")
    expect_close(out, gqa(wts, x, 6, 3), "GQAttention(48, n_heads=6, n_kv_heads=3) on 13 tokens", atol=1e-4,
                 hint=lambda: attn_mistake(wts, x, 6, 3, out), fallback="gqa")
    norm, nw = build(w, "RMSNorm", {"weight": (16,)}, 16, eps=1e-2)
    small = randn(3, 16) * 0.05
    expect_close(norm.run(NO_GRAD, small).out, rms_norm(nw["weight"], small, 1e-2), "RMSNorm(16, eps=1e-2) on inputs "
                 "of scale 0.05", atol=1e-4, hint="rms_eps")
    q, positions = randn(1, 2, 5, 16), torch.arange(1000, 1005)
    expect_close(w.call((LAB, "rope"), q, positions), rope(q, positions), "rope at positions 1000..1004", atol=1e-3,
                 hint=lambda: rope_mistake(q, positions, w.call((LAB, "rope"), q, positions)), fallback="rope")


@points(0)
def test_works_with_your_own_earlier_labs(w):
    """Integration (no points: labs 1-4 score in their own labs): the logits still match on your own lab 1, and lab 4's
    train still trains."""
    def probe(worker):
        gpt, wts = build_gpt(worker)
        idx = tokens(2, 10)
        expect_close(expect_tensor(gpt.run(NO_GRAD, idx).out, "logits", (2, 10, 11)), llama_of(wts, H, KV, L)(idx),
                     "LlamaGPT logits", atol=1e-4)
        data = torch.tensor([i % 5 for i in range(60)])
        losses = worker.call(("lab4_gpt", "train"), gpt, data, steps=3, batch_size=4, seq_len=8)
        if not (isinstance(losses, list) and len(losses) == 3):
            fail(f"lab 4's train(steps=3) on LlamaGPT returned {str(losses)[:80]}.")
    expect_own_chain(w, probe, "LlamaGPT")
