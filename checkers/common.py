"""Shared helpers for every checker: student loading, comparisons, oracles and hints.

Everything a verdict depends on is bound here, at import, before any student module is
imported: a submission that patches `torch.allclose`, `torch.testing.assert_close` or
`F.scaled_dot_product_attention` at import time changes none of the references below.
(The comparisons are written with these bound built-ins rather than torch.testing, whose
internals look `torch.isclose` up on the module at call time.)
"""
import importlib
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- pristine references ------------------------------------------------------------------
Tensor = torch.Tensor
_sdpa = F.scaled_dot_product_attention
_linear, _layer_norm, _gelu, _embedding = F.linear, F.layer_norm, F.gelu, F.embedding
_softmax, _cross_entropy = torch.softmax, F.cross_entropy
_abs, _sub, _isnan, _tril, _ones = torch.abs, torch.sub, torch.isnan, torch.tril, torch.ones
_matmul = torch.matmul

ROOT = Path(__file__).resolve().parent.parent
LABS = {  # lab -> (module name, title); lab N builds on lab N-1
    "lab1": ("lab1_attention", "Scaled dot-product attention"),
    "lab2": ("lab2_multihead", "Multi-head attention"),
    "lab3": ("lab3_block", "Pre-norm transformer block"),
    "lab4": ("lab4_gpt", "Tiny GPT"),
}

# ---- hints: keyed by the mistake a check detects; (first hint, a second, deeper one) ---------
HINTS = {
    "scale": ("Divide the scores by sqrt(d_k), where d_k = q.size(-1).",
              "q @ k^T is a sum of d_k products, so its spread grows like sqrt(d_k); without the scale the "
              "softmax saturates to one-hot rows and gradients vanish."),
    "mask": ("Apply the mask to the scores before the softmax: scores.masked_fill(~mask, float('-inf')).",
             "-inf becomes exactly 0 after exp(), so hidden keys get zero weight and the row still sums to 1. "
             "Zeroing weights after the softmax leaves rows that no longer sum to 1. True in the mask means "
             "'may attend'."),
    "softmax": ("Take the softmax over the last dimension (the keys): torch.softmax(scores, dim=-1).",
                "Each query's row of weights is a probability distribution over the keys it can see."),
    "causal": ("Token t may only look at tokens 0..t: build the mask with torch.tril and apply it in every head.",
               "If an output changes when a later token changes, information is flowing backwards in time."),
    "heads": ("Split q, k and v as (B, T, n_heads, d_head) and transpose to (B, n_heads, T, d_head); merge with "
              "transpose(1, 2).contiguous().view(B, T, D).",
              "qkv's output is [queries | keys | values], each D wide, and head h owns features "
              "h*d_head:(h+1)*d_head of each. A view to (B, n_heads, T, d_head) without the transpose mixes "
              "time steps into heads."),
    "proj": ("After merging the heads, apply self.proj to the result.",
             "The output projection lets heads' results mix; it is part of the contract."),
    "mlp": ("MLP: self.fc (D -> 4D), then GELU, then self.proj (4D -> D).",
            "Both the exact GELU and the tanh approximation are accepted; ReLU is not."),
    "prenorm": ("Pre-norm: x = x + attn(ln1(x)), then x = x + mlp(ln2(x)); ln1 feeds attention, ln2 feeds the MLP.",
                "Post-norm (LayerNorm after the residual add) was the original design; pre-norm keeps the residual "
                "stream untouched, which trains more stably in deep stacks."),
    "residual": ("Add each sub-layer's output back onto its input: x = x + sublayer(norm(x)).",
                 "With the sub-layers' output projections zeroed, a block with residuals is the identity, and "
                 "its gradient reaches x unchanged."),
    "grad": ("Every parameter must be used in forward so that it receives a gradient.",
             "A layer created in __init__ but skipped in forward (or a tensor detached with .detach() / "
             ".data) leaves parameters without gradients."),
    "device": ("Create tensors inside forward on the input's device: torch.arange(T, device=x.device), "
               "causal_mask(T, device=x.device).",
               "A tensor built on the CPU inside forward breaks as soon as the model runs on a GPU. Registered "
               "buffers (self.register_buffer) move with the module."),
    "gpt": ("forward: tok_emb(idx) + pos_emb(positions 0..T-1), the blocks in order, ln_f, then lm_head.",
            "Forgetting ln_f or the position embedding changes the logits; the checker recomputes them from "
            "your own parameters."),
    "shift": ("Targets are the inputs shifted by one: x = data[i:i+T], y = data[i+1:i+T+1].",
              "Without the shift the model learns to copy the current token: its loss falls, but it cannot "
              "predict the next one."),
    "train": ("train: AdamW on model.parameters(); each step get_batch, cross-entropy on (B*T, vocab) logits, "
              "zero_grad, backward, step, and log loss.item().",
              "The checker re-evaluates the next-token loss itself before and after training and compares it "
              "with the losses you logged."),
    "crop": ("In generate, feed only the last max_seq_len tokens: idx[:, -self.max_seq_len:].",
             "Position embeddings exist only for max_seq_len positions; crop the context each step so "
             "generation can continue past it."),
    "sampling": ("Divide the last logits by temperature, keep the top_k largest (others -inf), softmax, "
                 "torch.multinomial, then append.",
                 "With top_k=1 sampling must be greedy: always the most likely next token."),
    "tokenizer": ("One id per distinct character: decode(encode(s)) must give s back.",
                  "Sort the set of characters so ids are stable between runs."),
    "shape": ("Check the shapes against the contract: out is (..., Tq, d_v) and weights (..., Tq, Tk); return the "
              "tuple (out, weights).",
              "Print x.shape after each step; q @ k.transpose(-2, -1) is (..., Tq, Tk), and (..., Tq, Tk) @ v gives "
              "(..., Tq, d_v)."),
    "todo": ("Replace the `raise NotImplementedError` under each TODO with your code.",
             "The TODO comment says what to write; the module docstring gives the exact contract."),
    "earlier": ("This lab calls your code from an earlier lab: grade that lab first and fix it.", ""),
    "crash": ("Your code raised an error: the line it came from is shown above.",
              "Run `python grader.py labN --verbose` for the full traceback, or call the function yourself with small "
              "tensors and print shapes."),
    "slow": ("A check ran past its time limit: look for a loop that never ends or far more work than the lab needs.", ""),
    "memory": ("Your code asked for far more memory than the lab needs: look at the sizes of the tensors you create.", ""),
    "exit": ("Do not call sys.exit(), exit() or os._exit() in lab code: the grader needs the process to finish.", ""),
    "syntax": ("Fix the syntax error at the line shown, then run the grader again.", ""),
    "shortcut": ("Write the attention maths yourself: built-in attention functions and modules are not allowed.", ""),
}


class CheckFailure(AssertionError):
    """A check's verdict: what was expected, what came back, and which mistake it points at."""

    def __init__(self, message: str, hint: str = None):
        super().__init__(message)
        self.hint = hint


def fail(message: str, hint=None):
    """Fail the check; `hint` is a HINTS key, or a callable returning one (run only on failure, to diagnose)."""
    raise CheckFailure(message, hint() if callable(hint) else hint)


FIGURES = []  # pictures a check attaches to its result (heatmaps, loss curves, samples); the runner sends them


def figure(kind: str, **data):
    FIGURES.append({"kind": kind, **data})


def _grid(t) -> list:
    """The first (T, T) matrix of a (..., T, T) tensor, as rounded floats."""
    t = t.detach().to("cpu", torch.float64)
    return [[round(float(v), 3) for v in row] for row in t.reshape(-1, t.size(-2), t.size(-1))[0].tolist()]


@contextmanager
def heatmap_on_failure(got, want, title: str):
    """If the block fails, attach the student's attention weights beside the expected ones."""
    try:
        yield
    except CheckFailure:
        if isinstance(got, Tensor) and got.dim() >= 2 and got.shape[-2:] == want.shape[-2:] and got.device.type != "meta":
            figure("heatmap", title=title, got=_grid(got), want=_grid(want))
        raise


def points(n: int):
    """Mark a check with the points it is worth (the grader reads them before any student code runs)."""
    def mark(fn):
        fn.points = n
        return fn
    return mark


# ---- where the student code lives and which device the checks use ----------------------------
class _Config:
    lab_dir: Path = ROOT / "labs"
    device: torch.device = torch.device("cpu")


CONFIG = _Config()


def configure(lab_dir, device="cpu"):
    CONFIG.lab_dir = Path(lab_dir).resolve()
    CONFIG.device = torch.device(device)
    if str(CONFIG.lab_dir) not in sys.path:
        sys.path.insert(0, str(CONFIG.lab_dir))


def student(module_name: str):
    """Import (once) a lab module from the configured lab folder."""
    return importlib.import_module(module_name)


def attr(module, name: str):
    """module.name, or a failure that says which name the contract expects."""
    if not hasattr(module, name):
        fail(f"{module.__name__}.py defines no `{name}`: the lab's contract (module docstring) asks for it.")
    return getattr(module, name)


def device() -> torch.device:
    return CONFIG.device


def randn(*shape, dtype=None) -> Tensor:
    """Seeded normal noise made on the CPU (same numbers on every device), then moved to the checks' device."""
    return torch.randn(*shape, dtype=dtype).to(CONFIG.device)


# ---- comparisons ---------------------------------------------------------------------------
def _fmt(t: Tensor, limit: int = 6) -> str:
    values = [f"{v:.4f}" for v in t.reshape(-1)[:limit].tolist()]
    return "[" + ", ".join(values) + (", ...]" if t.numel() > limit else "]")


def expect_tensor(actual, what: str, shape=None, hint=None) -> Tensor:
    if not isinstance(actual, Tensor):
        fail(f"{what}: expected a torch.Tensor, got {type(actual).__name__}.", hint)
    if shape is not None and tuple(actual.shape) != tuple(shape):
        fail(f"{what}: expected shape {tuple(shape)}, got {tuple(actual.shape)}.", hint)
    return actual


def expect_close(actual, expected: Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-4, hint=None):
    """Fail with the max abs error and the first offending row unless |actual - expected| <= atol + rtol*|expected|."""
    expect_tensor(actual, what, expected.shape, hint)
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    err = _abs(_sub(a, e))
    finite = ~(_isnan(a) | _isnan(e))
    bad = (err > atol + rtol * _abs(e)) | (_isnan(a) != _isnan(e)) | (err.isinf() & finite)
    if not bool(bad.any()):
        return
    index = tuple(int(i) for i in bad.nonzero()[0])
    max_err = float(err[finite].max()) if bool(finite.any()) else float("nan")
    where = f" at index {list(index)}" if index else ""
    message = (f"{what}: mismatch with the reference, max abs error {max_err:.3g} "
               f"(tolerance {atol:g} + {rtol:g}*|expected|); first mismatch{where}.")
    if a.dim() >= 1:
        row = index[:-1]
        message += f"\n  expected row {list(row)}: {_fmt(e[row])}\n  got      row {list(row)}: {_fmt(a[row])}"
    fail(message, hint)


def eval_mode(module: nn.Module) -> nn.Module:
    """Eval mode (dropout off) on the checks' device."""
    return module.to(CONFIG.device).eval()


@torch.no_grad()
def randomize_norms_and_biases(module: nn.Module):
    """Give LayerNorms and biases random values so identity initialisation cannot hide a mistake."""
    g = torch.Generator().manual_seed(1234)
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
        if isinstance(owner, nn.LayerNorm) and leaf == "weight":
            p.copy_(torch.rand(p.shape, generator=g).mul(1.0).add(0.5))  # U(0.5, 1.5)
        elif leaf == "bias":
            p.copy_(torch.randn(p.shape, generator=g).mul(0.3))


# ---- oracles: recomputations from the student's own parameters under the contract layout -----
def oracle_attention(q, k, v, mask=None):
    """(out, weights), computed independently of the submission."""
    scores = _matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = _softmax(scores, dim=-1)
    out = _sdpa(q, k, v, attn_mask=mask) if q.dtype != torch.float64 else _matmul(weights, v)
    return out, weights


def causal(T: int) -> Tensor:
    return _tril(_ones(T, T, dtype=torch.bool, device=CONFIG.device))


def oracle_mha(mha: nn.Module, x: Tensor) -> Tensor:
    B, T, D = x.shape
    H = mha.n_heads
    q, k, v = _linear(x, mha.qkv.weight, mha.qkv.bias).split(D, dim=-1)
    heads = [t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v)]  # (B, H, T, d_head)
    out, _ = oracle_attention(*heads, mask=causal(T))
    out = out.transpose(1, 2).reshape(B, T, D)
    return _linear(out, mha.proj.weight, mha.proj.bias)


def oracle_mlp(mlp: nn.Module, x: Tensor, approximate: str = "none") -> Tensor:
    h = _gelu(_linear(x, mlp.fc.weight, mlp.fc.bias), approximate=approximate)
    return _linear(h, mlp.proj.weight, mlp.proj.bias)


def gelu_flavour(mlp: nn.Module, x: Tensor) -> str:
    """'none' or 'tanh': whichever GELU the student's MLP matches (both are accepted)."""
    out = mlp(x)
    err = {a: float((oracle_mlp(mlp, x, a) - out).abs().max()) for a in ("none", "tanh")}
    return min(err, key=err.get)


def oracle_layer_norm(ln: nn.Module, x: Tensor) -> Tensor:
    return _layer_norm(x, (x.size(-1),), ln.weight, ln.bias, getattr(ln, "eps", 1e-5))


def oracle_block(block: nn.Module, x: Tensor, approximate: str = "none") -> Tensor:
    x = x + oracle_mha(block.attn, oracle_layer_norm(block.ln1, x))
    return x + oracle_mlp(block.mlp, oracle_layer_norm(block.ln2, x), approximate)


def oracle_gpt(model: nn.Module, idx: Tensor, approximate: str = "none") -> Tensor:
    T = idx.size(1)
    x = _embedding(idx, model.tok_emb.weight) + _embedding(torch.arange(T, device=idx.device), model.pos_emb.weight)
    for block in model.blocks:
        x = oracle_block(block, x, approximate)
    head = model.lm_head
    return _linear(oracle_layer_norm(model.ln_f, x), head.weight, getattr(head, "bias", None))


def next_token_loss(model: nn.Module, data: Tensor, seq_len: int) -> float:
    """Mean next-token cross-entropy over every window of `data` (the checker's own evaluation)."""
    windows = data.unfold(0, seq_len + 1, 1)  # (N, seq_len + 1): every window, plus the token after it
    x, y = windows[:, :-1], windows[:, 1:]
    with torch.no_grad():
        logits = model(x)
    return float(_cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1)))


# ---- checks shared by several labs ------------------------------------------------------------
def expect_causal(fn, x: Tensor, what: str, positions=(0, 3, 6)):
    """For each t, changing inputs after position t must leave outputs 0..t unchanged."""
    for t in positions:
        _expect_causal_at(fn, x, what, t)


def _expect_causal_at(fn, x: Tensor, what: str, t: int):
    changed = x.clone()
    changed[:, t + 1:] = randn(*changed[:, t + 1:].shape, dtype=x.dtype) if x.is_floating_point() else \
        (changed[:, t + 1:] + 1) % (int(x.max()) + 1)
    with torch.no_grad():
        before, after = fn(x), fn(changed)
    expect_close(after[:, :t + 1], before[:, :t + 1],
                 f"{what}: changing only the tokens after position {t} moved the outputs at positions 0..{t}",
                 atol=1e-5, rtol=1e-5, hint="causal")


def expect_every_parameter_gets_a_gradient(module: nn.Module, loss: Tensor, what: str):
    module.zero_grad(set_to_none=True)
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))]
    if missing:
        fail(f"{what}: these parameters received no gradient: {', '.join(missing)}.", "grad")
