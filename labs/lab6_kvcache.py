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
        # TODO: self.keys and self.values: a list of n_layers Nones each
        raise NotImplementedError("lab6_kvcache: self.keys and self.values: a list of n_layers Nones each")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        # TODO: concatenate k and v onto the layer's entries along dim 2 (time); return the layer's keys and values
        raise NotImplementedError("lab6_kvcache: concatenate k and v onto the layer's entries along dim 2 (time); return the layer's keys and values")

    @property
    def length(self) -> int:
        # TODO: the time size of layer 0's keys (0 when empty)
        raise NotImplementedError("lab6_kvcache: the time size of layer 0's keys (0 when empty)")


def attend(attn, x: torch.Tensor, cache: KVCache, layer: int, start_pos: int) -> torch.Tensor:
    """Lab 5's GQAttention `attn` on x (B, T, D) at positions start_pos.., reading and extending the cache."""
    B, T, D = x.shape
    # TODO: project and split as in lab 5; rope at start_pos + 0..T-1; cache.update; a (T, start_pos + T) causal mask; repeat key/value heads; attend; wo
    raise NotImplementedError("lab6_kvcache: project and split as in lab 5; rope at start_pos + 0..T-1; cache.update; a (T, start_pos + T) causal mask; repeat key/value heads; attend; wo")


class LlamaGPT(lab5_llama.LlamaGPT):
    def forward(self, idx: torch.Tensor, cache: KVCache = None, start_pos: int = 0) -> torch.Tensor:
        if cache is None:
            return super().forward(idx)
        # TODO: as lab 5's forward, with attend(block.attn, ..., cache, layer, start_pos) in each block
        raise NotImplementedError("lab6_kvcache: as lab 5's forward, with attend(block.attn, ..., cache, layer, start_pos) in each block")


@torch.no_grad()
def generate_cached(model: LlamaGPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k=None):
    # TODO: a fresh KVCache; logits of the whole prompt once; then each step: sample from the last logits, append, feed only that token at its position
    raise NotImplementedError("lab6_kvcache: a fresh KVCache; logits of the whole prompt once; then each step: sample from the last logits, append, feed only that token at its position")


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
