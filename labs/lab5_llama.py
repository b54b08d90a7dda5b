"""Lab 5 (bonus): a Llama-style model: RMSNorm, rotary position embeddings, SwiGLU and grouped-query attention.

Contract:

class RMSNorm(nn.Module)
    __init__(self, d_model, eps=1e-5): self.weight (d_model,), ones; self.eps
    forward(x): x / sqrt(mean(x**2 over the last dim) + eps) * weight, computed in float32 and returned in
        x's dtype (float16 and bfloat16 inputs too).

class SwiGLU(nn.Module)
    __init__(self, d_model, d_ff): self.w1, self.w3 = nn.Linear(d_model, d_ff, bias=False),
        self.w2 = nn.Linear(d_ff, d_model, bias=False)
    forward(x) = w2(silu(w1(x)) * w3(x))

rope(x, positions, theta=10000.0) -> a tensor shaped like x
    x: (..., T, d) with d even; positions: ints, (T,) or (..., T), broadcast against x's leading dimensions.
    Rotates each adjacent pair (x[..., 2i], x[..., 2i+1]) at position p by the angle p * theta ** (-2i / d):
        out[..., 2i]   = x[..., 2i] * cos - x[..., 2i+1] * sin
        out[..., 2i+1] = x[..., 2i] * sin + x[..., 2i+1] * cos

class GQAttention(nn.Module)
    __init__(self, d_model, n_heads, n_kv_heads, theta=10000.0): self.n_heads, self.n_kv_heads,
        self.d_head (= d_model // n_heads), self.theta; no biases:
        self.wq = nn.Linear(d_model, d_model), self.wk and self.wv = nn.Linear(d_model, n_kv_heads * d_head),
        self.wo = nn.Linear(d_model, d_model)
        Layout: head h owns features h*d_head:(h+1)*d_head of wq's output; key/value head j owns features
        j*d_head:(j+1)*d_head of wk's and wv's. Query head h reads key/value head h // (n_heads // n_kv_heads).
    forward(x): (B, T, D) -> (B, T, D): rope on queries and keys (positions 0..T-1, within each head's d_head),
        not on values; causal; lab 1's scaled_dot_product_attention; then wo.

class LlamaBlock(nn.Module)
    __init__(self, d_model, n_heads, n_kv_heads, d_ff): self.norm1, self.attn, self.norm2, self.ffn
    forward(x) pre-norm:  x = x + attn(norm1(x));  x = x + ffn(norm2(x))

class LlamaGPT(nn.Module)
    __init__(self, vocab_size, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, max_seq_len=32, d_ff=None)
        d_ff defaults to 4 * d_model; self.max_seq_len; self.tok_emb, self.blocks (nn.ModuleList of LlamaBlock),
        self.norm (RMSNorm), self.lm_head (nn.Linear(d_model, vocab_size, bias=False)); no position table:
        positions enter through rope.
    forward(idx (B, T)) -> logits (B, T, vocab_size)
    generate: lab 4's TinyGPT.generate, unchanged. It is trained with lab 4's train and sampled with lab 4's sample.

Rules: no built-in attention, RMSNorm or transformer layers (torch's fused attention, nn.RMSNorm, F.rms_norm).
Run `python grader.py lab5`, then `python labs/lab5_llama.py` to train and sample.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from lab1_attention import causal_mask, scaled_dot_product_attention
from lab4_gpt import TinyGPT


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TODO: in float32: x / sqrt(mean(x**2, dim=-1, keepdim=True) + eps) * weight; return in x's dtype
        raise NotImplementedError("lab5_llama: in float32: x / sqrt(mean(x**2, dim=-1, keepdim=True) + eps) * weight; return in x's dtype")


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        # TODO: create self.w1, self.w3 (d_model -> d_ff) and self.w2 (d_ff -> d_model), all without bias
        raise NotImplementedError("lab5_llama: create self.w1, self.w3 (d_model -> d_ff) and self.w2 (d_ff -> d_model), all without bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TODO: w2(silu(w1(x)) * w3(x))
        raise NotImplementedError("lab5_llama: w2(silu(w1(x)) * w3(x))")


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotate each adjacent pair of x's last dimension by position * theta ** (-2i / d)."""
    # TODO: angles (..., T, d/2) = positions[..., None] * theta ** (-2i / d); rotate the pairs (x[..., 0::2], x[..., 1::2])
    raise NotImplementedError("lab5_llama: angles (..., T, d/2) = positions[..., None] * theta ** (-2i / d); rotate the pairs (x[..., 0::2], x[..., 1::2])")


class GQAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, theta: float = 10000.0):
        super().__init__()
        assert d_model % n_heads == 0 and n_heads % n_kv_heads == 0
        self.n_heads, self.n_kv_heads, self.d_head, self.theta = n_heads, n_kv_heads, d_model // n_heads, theta
        # TODO: create self.wq, self.wo (d_model -> d_model) and self.wk, self.wv (d_model -> n_kv_heads * d_head), all without bias
        raise NotImplementedError("lab5_llama: create self.wq, self.wo (d_model -> d_model) and self.wk, self.wv (d_model -> n_kv_heads * d_head), all without bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        # TODO: project; split into heads; rope on q and k; repeat each key/value head for its group; causal attention (lab 1); merge; wo
        raise NotImplementedError("lab5_llama: project; split into heads; rope on q and k; repeat each key/value head for its group; causal attention (lab 1); merge; wo")


class LlamaBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, d_ff: int):
        super().__init__()
        # TODO: create self.norm1, self.attn (GQAttention), self.norm2 and self.ffn (SwiGLU)
        raise NotImplementedError("lab5_llama: create self.norm1, self.attn (GQAttention), self.norm2 and self.ffn (SwiGLU)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TODO: x = x + attn(norm1(x)), then x = x + ffn(norm2(x))
        raise NotImplementedError("lab5_llama: x = x + attn(norm1(x)), then x = x + ffn(norm2(x))")


class LlamaGPT(nn.Module):
    def __init__(self, vocab_size: int, d_model: int = 32, n_heads: int = 4, n_kv_heads: int = 2, n_layers: int = 2,
                 max_seq_len: int = 32, d_ff: int = None):
        super().__init__()
        self.max_seq_len = max_seq_len
        d_ff = d_ff or 4 * d_model
        # TODO: create self.tok_emb, self.blocks (n_layers LlamaBlocks), self.norm (RMSNorm) and self.lm_head (no bias)
        raise NotImplementedError("lab5_llama: create self.tok_emb, self.blocks (n_layers LlamaBlocks), self.norm (RMSNorm) and self.lm_head (no bias)")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        # TODO: tok_emb, the blocks, norm, lm_head
        raise NotImplementedError("lab5_llama: tok_emb, the blocks, norm, lm_head")

    generate = TinyGPT.generate  # lab 4's sampler works on any model with max_seq_len and forward(idx)


def main(steps: int = 200):
    """Train on lab 4's text with lab 4's train, then sample."""
    from lab4_gpt import PATTERN, CharTokenizer, sample, train

    torch.manual_seed(0)
    torch.set_num_threads(1)
    tok = CharTokenizer(PATTERN)
    data = torch.tensor(tok.encode(PATTERN * 50), dtype=torch.long)
    model = LlamaGPT(tok.vocab_size)
    losses = train(model, data, steps=steps)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} after {len(losses)} steps")
    for temperature in (0.5, 1.0):
        print(f"temperature {temperature}: {sample(model, tok, 'hello', 60, temperature=temperature)!r}")


if __name__ == "__main__":
    main()
