"""The pack's stand-in for lab 4, used when lab 5 or 6 is graded on its own.

It meets lab 4's contract on the lab 3 stand-in's blocks. Its tokenizer, batches, training loop and sampler are
plain code, with no fused operator to hide behind, so this file is held back from the student release
(tools/release.py): there, the later labs run on the student's own lab 4.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from lab3_block import TransformerBlock

PATTERN = "hello transformer! "


class CharTokenizer:
    def __init__(self, text: str):
        chars = sorted(set(text))
        self.stoi, self.itos, self.vocab_size = {c: i for i, c in enumerate(chars)}, chars, len(chars)

    def encode(self, s: str) -> list:
        return [self.stoi[c] for c in s]

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)


class TinyGPT(nn.Module):
    def __init__(self, vocab_size: int, d_model: int = 32, n_heads: int = 4, n_layers: int = 2,
                 max_seq_len: int = 32, dropout: float = 0.0):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.tok_emb, self.pos_emb = nn.Embedding(vocab_size, d_model), nn.Embedding(max_seq_len, d_model)
        self.blocks = nn.ModuleList([TransformerBlock(d_model, n_heads, dropout) for _ in range(n_layers)])
        self.ln_f, self.lm_head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        # the position table's first T rows, broadcast over the batch; then the blocks in turn
        x = self.tok_emb(idx) + self.pos_emb.weight[:idx.size(1)]
        x = functools.reduce(lambda h, block: block(h), self.blocks, x)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k=None):
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.max_seq_len:])[:, -1, :] / temperature
            if top_k is not None:
                logits = logits.masked_fill(logits < torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:],
                                            float("-inf"))
            idx = torch.cat([idx, torch.multinomial(torch.softmax(logits, -1), 1)], dim=1)
        return idx


def get_batch(data: torch.Tensor, batch_size: int, seq_len: int):
    starts = torch.randint(len(data) - seq_len, (batch_size,))
    windows = torch.stack([data[i:i + seq_len + 1] for i in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def train(model, data: torch.Tensor, steps: int = 200, batch_size: int = 16, seq_len=None, lr: float = 3e-3) -> list:
    optimizer, losses = torch.optim.AdamW(model.parameters(), lr=lr), []
    model.train()
    for _ in range(steps):
        x, y = get_batch(data, batch_size, seq_len or model.max_seq_len)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def sample(model, tokenizer: CharTokenizer, prompt: str, max_new_tokens: int = 40, temperature: float = 1.0,
           top_k=None) -> str:
    idx = torch.tensor([tokenizer.encode(prompt)], device=next(model.parameters()).device)
    model.eval()
    return tokenizer.decode(model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k)[0].tolist())
