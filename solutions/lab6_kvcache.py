"""Lab 6 (bonus): generation with a key/value cache, on lab 5's model.

Without a cache, each new token re-runs the whole sequence through the model. With one, each layer keeps the keys
and values it has computed (after rope), and a step feeds only the new token: its query attends over the cache.

Contract:

class KVCache
    __init__(self, n_layers): self.keys and self.values, lists of n_layers entries, None until first filled,
        then (B, n_kv_heads, T_cached, d_head) each (keys after rope). Each instance has lists of its own.
    update(self, layer, k, v) -> (keys, values): append k and v (B, n_kv_heads, T_new, d_head) to the layer's
        entries along the time dimension, and return everything that layer now holds.
    length (a property): how many positions are cached (0 when empty).

class LlamaGPT(lab5_llama.LlamaGPT)   the same parameters as lab 5's model
    forward(idx (B, T), cache=None, start_pos=0) -> logits (B, T, vocab_size)
        cache=None: lab 5's forward. With a cache: the tokens sit at positions start_pos..start_pos+T-1 (rope
        rotates queries and keys at those positions); each layer appends its new keys and values to the cache and
        attends over everything cached; query i may see cached positions 0..start_pos+i.

generate_cached(model, idx, max_new_tokens, temperature=1.0, top_k=None) -> (B, T + max_new_tokens)
    No gradients. A fresh KVCache; the prompt goes through forward once, then each step feeds only the newest
    token. Sampling as in lab 4: last logits / temperature, keep the top_k, softmax, torch.multinomial. It does
    not crop: rope has no position table.

Run `python grader.py lab6`, then `python labs/lab6_kvcache.py` to compare the speed of the two samplers.
"""
import torch

import lab5_llama
from lab1_attention import scaled_dot_product_attention
from lab5_llama import rope


class KVCache:
    def __init__(self, n_layers: int):
        # BEGIN SOLUTION: self.keys and self.values: a list of n_layers Nones each
        self.keys = [None] * n_layers
        self.values = [None] * n_layers
        # END SOLUTION

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        # BEGIN SOLUTION: concatenate k and v onto the layer's entries along dim 2 (time); return the layer's keys and values
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)  # (B, H_kv, T_cached + T_new, d_head)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v
        # END SOLUTION

    @property
    def length(self) -> int:
        # BEGIN SOLUTION: the time size of layer 0's keys (0 when empty)
        return 0 if self.keys[0] is None else self.keys[0].size(2)
        # END SOLUTION


def attend(attn, x: torch.Tensor, cache: KVCache, layer: int, start_pos: int) -> torch.Tensor:
    """Lab 5's GQAttention `attn` on x (B, T, D) at positions start_pos.., reading and extending the cache."""
    B, T, D = x.shape
    # BEGIN SOLUTION: project and split as in lab 5; rope at start_pos + 0..T-1; cache.update; a (T, start_pos + T) causal mask; repeat key/value heads; attend; wo
    q = attn.wq(x).view(B, T, attn.n_heads, attn.d_head).transpose(1, 2)  # (B, H, T, d_head)
    k = attn.wk(x).view(B, T, attn.n_kv_heads, attn.d_head).transpose(1, 2)  # (B, H_kv, T, d_head)
    v = attn.wv(x).view(B, T, attn.n_kv_heads, attn.d_head).transpose(1, 2)
    positions = torch.arange(start_pos, start_pos + T, device=x.device)
    q, k = rope(q, positions, attn.theta), rope(k, positions, attn.theta)
    k, v = cache.update(layer, k, v)  # (B, H_kv, start_pos + T, d_head): everything so far
    keys = torch.arange(k.size(2), device=x.device)
    mask = keys[None, :] <= positions[:, None]  # (T, start_pos + T): query i sees positions 0..start_pos+i
    group = attn.n_heads // attn.n_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out, _ = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, d_head)
    return attn.wo(out.transpose(1, 2).reshape(B, T, D))
    # END SOLUTION


class LlamaGPT(lab5_llama.LlamaGPT):
    def forward(self, idx: torch.Tensor, cache: KVCache = None, start_pos: int = 0) -> torch.Tensor:
        if cache is None:
            return super().forward(idx)
        # BEGIN SOLUTION: as lab 5's forward, with attend(block.attn, ..., cache, layer, start_pos) in each block
        x = self.tok_emb(idx)  # (B, T, D)
        for layer, block in enumerate(self.blocks):
            x = x + attend(block.attn, block.norm1(x), cache, layer, start_pos)
            x = x + block.ffn(block.norm2(x))
        return self.lm_head(self.norm(x))  # (B, T, vocab_size)
        # END SOLUTION


@torch.no_grad()
def generate_cached(model: LlamaGPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k=None):
    # BEGIN SOLUTION: a fresh KVCache; logits of the whole prompt once; then each step: sample from the last logits, append, feed only that token at its position
    cache = KVCache(len(model.blocks))
    logits = model(idx, cache=cache, start_pos=0)  # (B, T, vocab)
    for _ in range(max_new_tokens):
        last = logits[:, -1, :] / temperature  # (B, vocab)
        if top_k is not None:
            kth = torch.topk(last, min(top_k, last.size(-1))).values[:, [-1]]
            last = last.masked_fill(last < kth, float("-inf"))
        next_id = torch.multinomial(torch.softmax(last, dim=-1), num_samples=1)  # (B, 1)
        idx = torch.cat([idx, next_id], dim=1)
        logits = model(next_id, cache=cache, start_pos=idx.size(1) - 1)  # (B, 1, vocab): one token per step
    return idx
    # END SOLUTION


def main(new_tokens: int = 200):
    """Generate with and without the cache and compare the time."""
    import time

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = LlamaGPT(vocab_size=64, d_model=64, n_layers=4, max_seq_len=1024).eval()
    prompt = torch.randint(64, (1, 8))
    for name, run in (("cached", lambda: generate_cached(model, prompt, new_tokens, top_k=1)),
                      ("uncached", lambda: model.generate(prompt, new_tokens, top_k=1))):
        start = time.perf_counter()
        out = run()
        print(f"{name:>8}: {new_tokens} tokens in {time.perf_counter() - start:.2f} s, {out[0, -8:].tolist()}")


if __name__ == "__main__":
    main()
