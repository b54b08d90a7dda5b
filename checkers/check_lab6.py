"""Lab 6 checks: the key/value cache and cached generation on lab 5's model.

The judge drives the student's cached forward step by step with a KVCache the student's code built, and compares
every step's logits with lab 5's full forward over the whole sequence (judge/oracles.py). Known mistakes are
that forward with the positions or the mask a broken cache would use. Cost is counted in tokens, not seconds: the
tokens generate_cached passes to the model's forward, and those that reach its embedding and first key projection.
"""
import torch

from judge.client import NO_GRAD, On, Options, StudentError
from protocol.messages import Watch
from judge.checks import fail, points
from judge.compare import expect_close, expect_tensor, first_match
from judge.shared import device_error, expect_device_discipline, expect_no_shortcuts, expect_own_chain
from checkers.check_lab5 import D, H, KV, L, build_gpt, tokens
from judge.oracles import causal, greedy_of, llama_of

LAB = "lab6_kvcache"
V, PROMPT_LEN, STEPS = 11, 5, 6
ATOL = 1e-4  # a cached step's logits against the full forward's, float32 against float64


def build(w, **kwargs):
    """The student's lab 6 LlamaGPT with the judge's weights, and the judge's full forward for them."""
    gpt, wts = build_gpt(w, V, lab=LAB, **kwargs)
    return gpt, wts, llama_of(wts, kwargs.get("n_heads", H), kwargs.get("n_kv_heads", KV), kwargs.get("n_layers", L))


def cache_of(w, n_layers=L):
    return w.new(LAB, "KVCache", n_layers)


def length(cache) -> int:
    value = cache.get("length")
    if type(value) is not int:
        fail(f"KVCache.length must be an int (a property), got {type(value).__name__}: {str(value)[:60]}.", "cache_update")
    return value


def step_logits(gpt, cache, idx, start_pos, what):
    out = gpt.run(NO_GRAD, idx, cache=cache, start_pos=start_pos).out
    return expect_tensor(out, what, (idx.size(0), idx.size(1), V), "cache")


def broken_caches(full, T: int, prompt_len: int) -> dict:
    """{hint: [forwards]}: the full forward as each broken cache computes it, for a prompt of prompt_len tokens and
    one token per step after it. Never read (steps see themselves only); read before the newest key is added; steps'
    rope positions off by one; rope positions restarting at 0 on each call; keys cached without rope; a mask that
    ignores start_pos (a step sees position 0 only)."""
    steps = torch.arange(prompt_len, T)
    never = causal(T) & (torch.eye(T, dtype=torch.bool) | (torch.arange(T) < prompt_len)[:, None])
    blind = causal(T).clone()
    blind[steps, steps] = False
    start_only = causal(T).clone()
    start_only[steps] = torch.arange(T) == 0
    shifted = torch.cat([torch.arange(prompt_len), steps + 1])
    restarted = torch.cat([torch.arange(prompt_len), torch.zeros(T - prompt_len, dtype=torch.long)])
    return {
        "cache_unread": [lambda i: full(i, mask=never)],
        "cache_self": [lambda i: full(i, mask=blind)],
        "cache_off_by_one": [lambda i: full(i, positions=shifted), lambda i: full(i, positions=shifted - 2)],
        "cache_positions": [lambda i: full(i, positions=restarted), lambda i: full(i, rope_on=("q",))],
        "cache_mask": [lambda i: full(i, mask=start_only)],
    }


def steps_mistake(full, idx: torch.Tensor, prompt_len: int, got: torch.Tensor) -> str:
    """Which broken cache gives the last step's logits `got`."""
    variants = {hint: [lambda i, f=f: f(i)[:, -1:] for f in fns]
                for hint, fns in broken_caches(full, idx.size(1), prompt_len).items()}
    return first_match(variants, idx, got, default="cache")


def greedy_mistake(full, prompt: torch.Tensor, steps: int, got: torch.Tensor) -> str:
    """Which broken cache gives generate_cached's greedy tokens `got`. Tokens can agree by chance, so the mistakes of
    generate_cached's own loop (the start_pos it passes) are tried first: the forward's are diagnosed step by step
    in test_cached_steps_match_uncached_logits."""
    T = prompt.size(1) + steps
    broken = broken_caches(full, T, prompt.size(1))
    for hint in ("cache_off_by_one", "cache_positions", *broken):
        fns = broken[hint]
        for f in fns:
            idx = prompt
            while idx.size(1) < T:
                padded = torch.cat([idx, idx.new_zeros(idx.size(0), T - idx.size(1))], 1)  # later tokens cannot matter
                idx = torch.cat([idx, f(padded)[:, idx.size(1) - 1].argmax(-1, keepdim=True)], 1)
            if torch.equal(idx, got.long()):
                return hint
    return "cache"


@points(1)
def test_cache_update_appends(w):
    """KVCache.update appends keys and values along time, layer by layer, returns what the layer holds; length counts."""
    cache = cache_of(w, 2)
    if length(cache) != 0:
        fail(f"a new KVCache should have length 0, got {length(cache)}.", "cache_update")
    k1, v1, k2, v2 = (torch.randn(1, KV, n, 4) for n in (3, 3, 2, 2))
    for step, (k, v, want_k, want_v) in enumerate(((k1, v1, k1, v1), (k2, v2, torch.cat([k1, k2], 2),
                                                                        torch.cat([v1, v2], 2)))):
        out = cache.method("update", 0, k, v)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            fail(f"KVCache.update must return (keys, values), got {type(out).__name__}.", "cache_update")
        for got, want, name in zip(out, (want_k, want_v), ("keys", "values")):
            expect_close(expect_tensor(got, f"update's {name} after call {step + 1}", want.shape, "cache_update"), want,
                         f"update's {name} after call {step + 1} (everything layer 0 holds, oldest first)", atol=0,
                         hint="cache_update")
    if length(cache) != 5:
        fail(f"after appending 3 and then 2 positions, KVCache.length should be 5, got {length(cache)}.", "cache_update")
    keys = cache.get("keys")
    if not (isinstance(keys, list) and len(keys) == 2 and keys[1] is None):
        fail("KVCache.keys must be a list with one entry per layer, None for a layer not yet filled.", "cache_update")


@points(1)
def test_each_cache_is_its_own(w):
    """Two KVCache instances share nothing: filling one leaves the other empty (no class-level lists)."""
    first, second = cache_of(w), cache_of(w)
    first.method("update", 0, torch.randn(1, KV, 3, 4), torch.randn(1, KV, 3, 4))
    keys = second.get("keys")
    if length(second) != 0 or not (isinstance(keys, list) and keys[0] is None):
        fail("filling one KVCache filled another too: give each instance lists of its own, made in __init__, "
             "not class attributes.", "cache_stale")


@points(2)
def test_prefill_matches_uncached(w):
    """forward(idx, cache, start_pos=0) gives lab 5's logits, fills the cache with T positions, and cache=None is lab 5's forward."""
    gpt, _, full = build(w)
    idx = tokens(2, 7)
    want = full(idx)
    expect_close(expect_tensor(gpt.run(NO_GRAD, idx).out, "forward(idx) without a cache", (2, 7, V), "llama"), want,
                 "forward(idx) without a cache (lab 5's forward)", atol=ATOL, hint="llama")
    cache = cache_of(w)
    got = step_logits(gpt, cache, idx, 0, "forward(idx, cache, 0)")
    expect_close(got, want, "forward(idx, cache, start_pos=0)", atol=ATOL,
                 hint=lambda: first_match({"cache_positions": [lambda i: full(i, rope_on=("q",))]}, idx, got),
                 fallback="cache")
    if length(cache) != 7:
        fail(f"after forward on 7 tokens with a new cache, cache.length should be 7, got {length(cache)}.", "cache_update")


@points(3)
def test_cached_steps_match_uncached_logits(w):
    """After a 5-token prompt, 6 steps of one token each (start_pos = tokens so far) give the full forward's last logits
    at every step (tolerance 1e-4)."""
    gpt, _, full = build(w)
    idx = tokens(2, PROMPT_LEN + STEPS)
    cache = cache_of(w)
    step_logits(gpt, cache, idx[:, :PROMPT_LEN], 0, "logits of the prompt")
    for t in range(PROMPT_LEN, PROMPT_LEN + STEPS):
        got = step_logits(gpt, cache, idx[:, t:t + 1], t, f"logits of the step at position {t}")
        expect_close(got, full(idx[:, :t + 1])[:, -1:], f"logits of the step at position {t} (start_pos={t}) against "
                     f"the full forward over all {t + 1} tokens", atol=ATOL,
                     hint=lambda: steps_mistake(full, idx[:, :t + 1], PROMPT_LEN, got), fallback="cache")


@points(1)
def test_cache_grows_one_position_per_step(w):
    """Each one-token step adds exactly one position to every layer's keys and values, (B, n_kv_heads, T, d_head)."""
    gpt, _, _ = build(w)
    idx, cache = tokens(2, 8), cache_of(w)
    for start, end in ((0, 4), (4, 5), (5, 6), (6, 7), (7, 8)):  # a 4-token prompt, then one token per step
        step_logits(gpt, cache, idx[:, start:end], start, f"logits at start_pos={start}")
        if length(cache) != end:
            fail(f"after {'a 4-token prompt' + (f' and {end - 4} one-token step(s)' if end > 4 else '')}, cache.length "
                 f"should be {end}, got {length(cache)}.", "cache_update")
        for name in ("keys", "values"):
            held = cache.get(name)
            for layer in range(L):
                entry = held[layer] if isinstance(held, list) and len(held) == L else None
                expect_tensor(entry, f"cache.{name}[{layer}] after {end} positions", (2, KV, end, D // H), "cache_update")


@points(2)
def test_one_token_per_step(w):
    """generate_cached embeds the prompt once and then one token per step: a step's cost does not grow with the tokens
    generated (counted in tokens passed to the model, not in seconds), and no gradients are kept."""
    gpt, _, _ = build(w)
    prompt = tokens(2, 6)
    # what the model's forward is given, and what reaches the embedding and the first key projection inside it (a
    # forward that recomputes the whole sequence behind a one-token call shows there); the last two may be reached
    # another way (F.embedding, say), so they count only when they see calls
    for name, what in (("", "the model's forward"), ("tok_emb", "tok_emb"), ("blocks.0.attn.wk", "blocks.0.attn.wk")):
        result = w.run(Options(watch=Watch(gpt.id, name)), (LAB, "generate_cached"), gpt, prompt, 10, top_k=1)
        calls = [(shape, grad) for shape, grad in result.watched or [] if type(shape) is list and len(shape) >= 2]
        if not calls and name:
            continue
        lengths = [shape[1] for shape, _ in calls]
        if not lengths or lengths[0] != 6 or any(n != 1 for n in lengths[1:]) or len(lengths) not in (10, 11):
            shown = lengths[:12] + (["..."] if len(lengths) > 12 else [])
            fail(f"generating 10 tokens from a 6-token prompt passed these numbers of tokens to {what}, call by call: "
                 f"{shown}; expected 6 once, then 1 per step: feed only the newest token and let the cache hold the "
                 "rest.", "cache_recompute")
        if any(grad for _, grad in calls):
            fail("generate_cached ran the model with gradients enabled: decorate it with @torch.no_grad().", "sampling")


@points(2)
def test_cached_greedy_matches_uncached(w):
    """With top_k=1, generate_cached gives the same tokens as greedy decoding over the whole sequence, call after call."""
    gpt, _, full = build(w, style="default")
    for prompt in (tokens(2, 5), tokens(2, 3)):  # a second call must not see the first one's cache
        out = expect_tensor(w.call((LAB, "generate_cached"), gpt, prompt, 12, top_k=1),
                            f"generate_cached(idx of shape {tuple(prompt.shape)}, 12, top_k=1)",
                            (prompt.size(0), prompt.size(1) + 12), "cache")
        want = greedy_of(full, prompt, 12)
        if not torch.equal(out.long(), want):
            at = int((out.long() != want).any(0).nonzero()[0])
            fail(f"generate_cached's greedy tokens differ from greedy decoding without a cache from position {at} on:\n"
                 f"  expected {want[0].tolist()}\n  got      {out[0].tolist()}",
                 (lambda: greedy_mistake(full, prompt, 12, out)) if prompt.size(1) == 5 else "cache_stale")


@points(1)
def test_sampling_options(w):
    """generate_cached samples: with top_k=3 only the 3 most likely tokens, more than one of them at temperature 2."""
    gpt, _, full = build(w, style="default")
    prompt = tokens(1, 4)
    allowed = set(full(prompt)[0, -1].topk(3).indices.tolist())
    out = expect_tensor(w.call((LAB, "generate_cached"), gpt, prompt.repeat(200, 1), 1, temperature=2.0, top_k=3),
                        "generate_cached(idx of shape (200, 4), 1, temperature=2.0, top_k=3)", (200, 5), "sampling")
    picked = set(out[:, -1].tolist())
    if not picked <= allowed:
        fail(f"with top_k=3 the sampled tokens were {sorted(picked)}, but only {sorted(allowed)} are in the top 3.",
             "sampling")
    if len(picked) < 2:
        fail("with top_k=3 and temperature=2.0, 200 samples all picked the same token: sample with torch.multinomial "
             "rather than argmax.", "sampling")


@points(1)
def test_device_discipline(w):
    """The cached forward builds positions and masks on the input's device (a prompt, then a step)."""
    gpt, _, _ = build(w)
    expect_device_discipline(w, gpt, tokens(2, 6), "LlamaGPT forward without a cache")
    target = "cuda" if w.device == "cuda" else "meta"
    cache = cache_of(w)
    try:
        guarded = Options(device_guard=True, no_grad=True)
        gpt.run(guarded, On(tokens(2, 4), target), cache=cache, start_pos=0)
        gpt.run(guarded, On(tokens(2, 1), target), cache=cache, start_pos=4)
    except StudentError as exc:
        if not device_error(exc):
            raise
        fail(f"the cached forward failed with the model and its input on {target}: {exc.message}", "device")


@points(1)
def test_no_shortcuts(w):
    """No built-in attention in the source, the module tree, or at run time."""
    gpt, _, _ = build(w)
    expect_no_shortcuts(w, lambda: w.run(Options(guard=True), (LAB, "generate_cached"), gpt, tokens(1, 4), 3), gpt)


@points(2, hidden=True)
def test_chunks_and_long_generation(w):
    """A prompt fed in two chunks (4 tokens, then 3 at start_pos=4) and 20 one-token steps past max_seq_len, for 3 rows."""
    gpt, _, full = build(w, max_seq_len=8)
    idx, cache = tokens(3, 27), cache_of(w)
    step_logits(gpt, cache, idx[:, :4], 0, "logits of the first chunk")
    expect_close(step_logits(gpt, cache, idx[:, 4:7], 4, "logits of the second chunk"), full(idx[:, :7])[:, 4:],
                 "logits of a 3-token chunk at start_pos=4 (each of its queries sees the cache and the chunk's earlier "
                 "tokens)", atol=ATOL, hint="cache_mask")
    for t in range(7, 27):
        got = step_logits(gpt, cache, idx[:, t:t + 1], t, f"logits of the step at position {t}")
        expect_close(got, full(idx[:, :t + 1])[:, -1:], f"logits of the step at position {t}, past max_seq_len=8",
                     atol=ATOL, hint=lambda: steps_mistake(full, idx[:, :t + 1], 7, got), fallback="cache")


@points(0)
def test_works_with_your_own_earlier_labs(w):
    """Integration (no points: labs 1-5 score in their own labs): cached steps still match on your own labs 1-5."""
    def probe(worker):
        gpt, _, full = build(worker)
        idx, cache = tokens(2, 6), worker.new(LAB, "KVCache", L)
        gpt.run(NO_GRAD, idx[:, :5], cache=cache, start_pos=0).out
        expect_close(expect_tensor(gpt.run(NO_GRAD, idx[:, 5:], cache=cache, start_pos=5).out, "step logits", (2, 1, V)),
                     full(idx)[:, -1:], "the logits of a cached step", atol=ATOL)
    expect_own_chain(w, probe, "Cached generation")
