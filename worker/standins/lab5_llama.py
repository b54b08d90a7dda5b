"""The pack's stand-in for lab 5, used when lab 6 is graded on its own.

It has lab 5's contract (the same classes, parameter names and layouts). RMSNorm is torch's F.rms_norm and the
attention torch's fused multi-head attention, both of which a lab file may not call: the grouped keys and values
enter it as wk's and wv's rows repeated for each query head of a group, and rope turns each head's features in
place. rope itself is the contract's formula as a complex multiplication (torch has no fused rope).
It is the grader's code, not a model answer.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w1, self.w3 = nn.Linear(d_model, d_ff, bias=False), nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one product for the gate and the value it gates (w1's rows, then w3's), split on the last dimension
        gate, value = F.linear(x, torch.cat([self.w1.weight, self.w3.weight], dim=0)).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * value, self.w2.weight)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    d = x.size(-1)
    freqs = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float64) / d)
    angles = positions.to(x.device, torch.float64)[..., None] * freqs
    pairs = torch.view_as_complex(x.to(torch.float64).unflatten(-1, (d // 2, 2)).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2).to(x.dtype)


class GQAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, theta: float = 10000.0):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.d_head, self.theta = n_heads, n_kv_heads, d_model // n_heads, theta
        self.wq, self.wo = nn.Linear(d_model, d_model, bias=False), nn.Linear(d_model, d_model, bias=False)
        self.wk = nn.Linear(d_model, n_kv_heads * self.d_head, bias=False)
        self.wv = nn.Linear(d_model, n_kv_heads * self.d_head, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, D, group = x.size(1), x.size(-1), self.n_heads // self.n_kv_heads
        grouped = lambda w: w.unflatten(0, (self.n_kv_heads, self.d_head)).repeat_interleave(group, 0).flatten(0, 1)  # noqa: E731
        positions = torch.arange(T, device=x.device)[:, None]  # (T, 1): one angle per position, for every head
        turn = lambda t: rope(t.unflatten(-1, (self.n_heads, self.d_head)), positions, self.theta).flatten(-2)  # noqa: E731
        q, k = turn(F.linear(x, self.wq.weight)), turn(F.linear(x, grouped(self.wk.weight)))
        v = F.linear(x, grouped(self.wv.weight))
        eye = torch.eye(D, dtype=x.dtype, device=x.device)
        hidden = ~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))  # True: may not attend
        out, _ = F.multi_head_attention_forward(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), D, self.n_heads, None, None, None, None, False,
            0.0, self.wo.weight, None, training=False, need_weights=False, attn_mask=hidden,
            use_separate_proj_weight=True, q_proj_weight=eye, k_proj_weight=eye, v_proj_weight=eye)
        return out.transpose(0, 1)


class LlamaBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, d_ff: int):
        super().__init__()
        self.norm1, self.attn = RMSNorm(d_model), GQAttention(d_model, n_heads, n_kv_heads)
        self.norm2, self.ffn = RMSNorm(d_model), SwiGLU(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class LlamaGPT(nn.Module):
    def __init__(self, vocab_size: int, d_model: int = 32, n_heads: int = 4, n_kv_heads: int = 2, n_layers: int = 2,
                 max_seq_len: int = 32, d_ff: int = None):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList([LlamaBlock(d_model, n_heads, n_kv_heads, d_ff or 4 * d_model)
                                     for _ in range(n_layers)])
        self.norm, self.lm_head = RMSNorm(d_model), nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))

    def generate(self, *args, **kwargs):  # lab 4's sampler, imported when used (lab 4 may be the student's own)
        from lab4_gpt import TinyGPT
        return TinyGPT.generate(self, *args, **kwargs)
