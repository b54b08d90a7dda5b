"""Lab 6 checks: the key/value cache and cached generation on lab 5's model.

The judge drives the student's cached forward step by step with a KVCache the student's code built, and compares
every step's logits with lab 5's full forward over the whole sequence (judge/oracles.py). Known mistakes are
that forward with the positions or the mask a broken cache would use. Cost is proven by tokens, not seconds: the
worker loads fresh judge-chosen weights into the model before each call of its forward, so only a generation that
runs the prompt once and then one new token per call, each position computed once and read back from the cache,
gives the tokens the judge predicts (judge/oracles.py's llama_steps). What the forward and its embedding and first
key projection were given, counted in the worker, names the mistake; it never decides the verdict.
"""
import secrets

import torch
import torch.nn.functional as F

from judge.client import NO_GRAD, On, Options, StudentError
from protocol.messages import Swap, Watch
from judge.checks import fail, points
from judge.compare import expect_close, expect_tensor, first_match
from judge.shared import device_error, draw, expect_device_discipline, expect_no_shortcuts, expect_own_chain
from checkers.check_lab5 import D, H, KV, L, build_gpt, tokens
from judge.oracles import causal, greedy_of, llama_block, llama_of, llama_steps, rms_norm, rope

# Each contract item of the stub (tests/test_contract.py) and the checks that would fail were it wrong; `f(arg=)` is
# the default, exercised by a call that leaves the argument out. `attend` is the stub's helper for the cached forward:
# what observes it is that forward.
UPDATE, GROWS = "test_cache_update_appends", "test_cache_grows_one_position_per_step"
PREFILL, STEPS_ = "test_prefill_matches_uncached", "test_cached_steps_match_uncached_logits"
GREEDY, SAMPLING = "test_cached_greedy_matches_uncached", "test_sampling_options"
CONTRACT = {
    "KVCache": (UPDATE, "test_each_cache_is_its_own"),
    "KVCache(n_layers)": (UPDATE, GROWS),
    "KVCache.keys": (UPDATE, GROWS, "test_each_cache_is_its_own"),
    "KVCache.values": (UPDATE, GROWS),
    "KVCache.update": (UPDATE,),
    "KVCache.update(layer)": (UPDATE,),
    "KVCache.update(k)": (UPDATE,),
    "KVCache.update(v)": (UPDATE,),
    "KVCache.length": (UPDATE, GROWS, PREFILL, "test_each_cache_is_its_own"),
    "LlamaGPT": (PREFILL, STEPS_),
    "LlamaGPT.forward": (PREFILL, STEPS_),
    "LlamaGPT.forward(idx)": (PREFILL, STEPS_),
    "LlamaGPT.forward(cache)": (PREFILL, STEPS_, GROWS),
    "LlamaGPT.forward(cache=)": (PREFILL,),
    "LlamaGPT.forward(start_pos)": (STEPS_, GROWS),
    "LlamaGPT.forward(start_pos=)": (PREFILL,),
    "attend": (STEPS_, PREFILL),
    "attend(attn)": (STEPS_,),
    "attend(x)": (STEPS_,),
    "attend(cache)": (STEPS_, GROWS),
    "attend(layer)": (STEPS_, GROWS),
    "attend(start_pos)": (STEPS_, GROWS),
    "generate_cached": (GREEDY, "test_one_token_per_step"),
    "generate_cached(model)": (GREEDY,),
    "generate_cached(idx)": (GREEDY,),
    "generate_cached(max_new_tokens)": (GREEDY, "test_one_token_per_step"),
    "generate_cached(temperature)": (SAMPLING,),
    "generate_cached(temperature=)": (SAMPLING,),
    "generate_cached(top_k)": (SAMPLING, GREEDY),
    "generate_cached(top_k=)": (SAMPLING,),
    "sentence: each instance has lists of its own": ("test_each_cache_is_its_own",),
    "sentence: keys cached after rope, each at its own position": (GROWS,),
    "sentence: query i may see cached positions 0..start_pos+i": (STEPS_,),
    "sentence: the prompt through forward once, then only the newest token": ("test_one_token_per_step",),
    "sentence: a fresh KVCache per call": (GREEDY,),
    "sentence: no gradients": ("test_one_token_per_step",),
}

LAB = "lab6_kvcache"
V, PROMPT_LEN, STEPS = 11, 5, 6
ATOL = 1e-4  # a cached step's logits against the full forward's, float32 against float64
TRIES, MARGIN = 20, 1e-3  # the step-cost check's draws of weights, and the gap it wants between the top two logits


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


def empty(cache) -> bool:
    """The cache's keys are a list of Nones only (nothing is cached in it)."""
    keys = cache.get("keys")
    return isinstance(keys, list) and all(k is None for k in keys)


def length_hint(cache, want: int) -> str:
    """A wrong length: "cache_length" when layer 0's keys do hold `want` positions (length miscounts them),
    "cache_update" when the cache itself is wrong."""
    keys = cache.get("keys")
    held = keys[0] if isinstance(keys, list) and keys else None
    return "cache_length" if isinstance(held, torch.Tensor) and held.dim() == 4 and held.size(2) == want \
        else "cache_update"


def cached_keys_values(wts: dict, idx: torch.Tensor, n_layers=L, n_heads=H, n_kv_heads=KV) -> list:
    """What each layer's cache must hold after idx (B, T) went through the cached forward: (keys, values), each
    (B, T, n_kv_heads, d_head) as the oracles lay them out (the cache's (B, n_kv_heads, T, d_head) with time and heads
    moved back: see `as_oracle`), the keys turned by rope at their own positions 0..T-1, in float64."""
    wts = {n: t.double() for n, t in wts.items()}
    x, T = F.embedding(idx, wts["tok_emb.weight"]), idx.size(1)
    held = []
    for i in range(n_layers):
        blk = {n[len(f"blocks.{i}."):]: t for n, t in wts.items() if n.startswith(f"blocks.{i}.")}
        h = rms_norm(blk["norm1.weight"], x)
        k, v = (F.linear(h, blk[f"attn.{n}.weight"]).unflatten(-1, (n_kv_heads, -1)) for n in ("wk", "wv"))
        held.append((rope(k, torch.arange(T)[:, None]), v))
        x = llama_block(blk, x, n_heads, n_kv_heads)
    return held


def as_oracle(entry) -> torch.Tensor:
    """A cache entry (B, n_kv_heads, T, d_head) in the oracles' layout (B, T, n_kv_heads, d_head)."""
    return entry.movedim(1, 2) if isinstance(entry, torch.Tensor) and entry.dim() == 4 else entry


def first_difference(got: torch.Tensor, want: torch.Tensor) -> tuple:
    """(row, column) of the earliest column where two (B, T) token tensors differ, in the first row differing there:
    the row a message shows is the row the position comes from."""
    col = int((got != want).any(0).nonzero()[0])
    return int((got[:, col] != want[:, col]).nonzero()[0]), col


def length_counts_wrong(w) -> bool:
    """A fresh KVCache's length, after 3 and then 2 positions in every layer, is not 0, 3, 5."""
    cache, seen = cache_of(w), []
    seen.append(cache.get("length"))
    for n in (3, 2):
        for layer in range(L):
            cache.method("update", layer, torch.randn(1, KV, n, 4), torch.randn(1, KV, n, 4))
        seen.append(cache.get("length"))
    return seen != [0, 3, 5]


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
        fail(f"a new KVCache should have length 0, got {length(cache)}"
             + ("." if empty(cache) else ", and its keys are already filled (by another instance?)."),
             "cache_length" if empty(cache) else "cache_stale")
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
        fail(f"after appending 3 and then 2 positions, KVCache.length should be 5, got {length(cache)}.", "cache_length")
    keys = cache.get("keys")
    if not (isinstance(keys, list) and len(keys) == 2 and keys[1] is None):
        fail("KVCache.keys must be a list with one entry per layer, None for a layer not yet filled.", "cache_update")


@points(1)
def test_each_cache_is_its_own(w):
    """Two KVCache instances share nothing: filling one leaves the other empty (no class-level lists)."""
    first, second = cache_of(w), cache_of(w)
    if length(second) != 0:
        fail(f"a new KVCache has length {length(second)}: " + (
            "length counts cached positions, 0 when empty." if empty(second) else
            "it already holds keys another cache was given: give each instance lists of its own, made in __init__."),
             "cache_length" if empty(second) else "cache_stale")
    first.method("update", 0, torch.randn(1, KV, 3, 4), torch.randn(1, KV, 3, 4))
    keys = second.get("keys")
    if length(second) != 0 or not (isinstance(keys, list) and keys[0] is None):
        fail("filling one KVCache filled another too: give each instance lists of its own, made in __init__, "
             "not class attributes.", "cache_stale")


@points(2)
def test_prefill_matches_uncached(w):
    """forward(idx, cache, start_pos=0) gives lab 5's logits, fills the cache with T positions, start_pos defaults to
    0, and cache=None (the default) is lab 5's forward."""
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
        fail(f"after forward on 7 tokens with a new cache, cache.length should be 7, got {length(cache)}.",
             length_hint(cache, 7))
    fresh = cache_of(w)  # start_pos left to its default: 0
    got = expect_tensor(gpt.run(NO_GRAD, idx, cache=fresh).out, "forward(idx, cache)", (2, 7, V), "defaults")
    expect_close(got, want, "forward(idx, cache) with start_pos left to its default (0)", atol=ATOL, hint="defaults")
    keys, again = cache.get("keys"), fresh.get("keys")
    if isinstance(keys, list) and isinstance(again, list) and isinstance(keys[0], torch.Tensor):
        expect_close(expect_tensor(again[0], "cache.keys[0] after forward(idx, cache)", keys[0].shape, "defaults"),
                     keys[0], "cache.keys[0] after forward(idx, cache) (start_pos left to its default, 0) against "
                     "forward(idx, cache, start_pos=0)", atol=1e-5, hint="defaults")


@points(3)
def test_cached_steps_match_uncached_logits(w):
    """After a 5-token prompt, 6 steps of one token each (start_pos = tokens so far) give the full forward's last logits
    at every step (tolerance 1e-4); and 3 steps of a model with 8 query heads in groups of 4 over 2 key/value heads."""
    for config, steps in (({}, STEPS), ({"n_heads": 8}, 3)):  # groups of 2 query heads, then of 4 (not n_kv_heads)
        gpt, _, full = build(w, **config)
        idx = tokens(2, PROMPT_LEN + steps)
        cache = cache_of(w)
        said = f" of LlamaGPT({V}, n_heads=8, n_kv_heads={KV})" if config else ""
        step_logits(gpt, cache, idx[:, :PROMPT_LEN], 0, f"logits of the prompt{said}")
        for t in range(PROMPT_LEN, PROMPT_LEN + steps):
            got = step_logits(gpt, cache, idx[:, t:t + 1], t, f"logits of the step at position {t}{said}")
            expect_close(got, full(idx[:, :t + 1])[:, -1:], f"logits of the step at position {t} (start_pos={t}){said} "
                         f"against the full forward over all {t + 1} tokens", atol=ATOL,
                         hint=lambda: steps_mistake(full, idx[:, :t + 1], PROMPT_LEN, got), fallback="cache")


@points(1)
def test_cache_grows_one_position_per_step(w):
    """Each one-token step adds exactly one position to every layer's keys and values, (B, n_kv_heads, T, d_head);
    the cached keys are after rope, each turned once at its own position."""
    gpt, wts, _ = build(w)
    idx, cache = tokens(2, 8), cache_of(w)
    for start, end in ((0, 4), (4, 5), (5, 6), (6, 7), (7, 8)):  # a 4-token prompt, then one token per step
        step_logits(gpt, cache, idx[:, start:end], start, f"logits at start_pos={start}")
        if length(cache) != end:
            fail(f"after {'a 4-token prompt' + (f' and {end - 4} one-token step(s)' if end > 4 else '')}, cache.length "
                 f"should be {end}, got {length(cache)}.", length_hint(cache, end))
        for name in ("keys", "values"):
            held = cache.get(name)
            for layer in range(L):
                entry = held[layer] if isinstance(held, list) and len(held) == L else None
                expect_tensor(entry, f"cache.{name}[{layer}] after {end} positions", (2, KV, end, D // H), "cache_update")
    held = [cache.get(name) for name in ("keys", "values")]
    for layer, (keys, values) in enumerate(cached_keys_values(wts, idx)):
        expect_close(as_oracle(held[1][layer]), values, f"cache.values[{layer}] after a 4-token prompt and 4 steps "
                     "(values: no rope), indexed (batch, position, head, feature)", atol=1e-4, hint="cache_update")
        expect_close(as_oracle(held[0][layer]), keys, f"cache.keys[{layer}] after a 4-token prompt and 4 steps, against "
                     "the keys turned by rope at their own positions 0..7, indexed (batch, position, head, feature)",
                     atol=1e-4, hint="cache_keys")


def changing_weights(gpt, prompt: torch.Tensor, steps: int) -> tuple:
    """(states, want): fresh judge-chosen weights for each call of the model's forward, drawn from a secret seed
    (a generation cannot know them before they are loaded), and the greedy tokens of a cached generation under
    them: call 0 on the prompt with states[0], then call s on the one token sampled last with states[s], each
    position's keys and values computed once, with the weights of the call that fed it. Redrawn until every step's
    top two logits are MARGIN apart, so float32 and float64 agree on every token."""
    step = llama_steps(H, KV, L)
    for _ in range(TRIES):
        states = [draw(gpt, secrets.randbits(62)) for _ in range(steps + 1)]
        idx, chunk, past, margin = prompt, prompt, None, float("inf")
        for s in range(steps):
            logits, past = step(states[s], chunk, past, idx.size(1) - chunk.size(1))
            top = logits[:, -1].topk(2).values
            margin = min(margin, float((top[:, 0] - top[:, 1]).min()))
            chunk = logits[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, chunk], 1)
        if margin >= MARGIN:
            break
    return states, idx


def recomputed(states, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """The greedy tokens of a generation that re-runs the whole sequence at every call, with that call's weights."""
    idx = prompt
    for s in range(steps):
        nxt = llama_of(states[s], H, KV, L)(idx)[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], 1)
    return idx


def inside_counts(w, gpt, prompt, steps) -> str:
    """What reached the embedding and the first key projection inside the forward, when that shows a step
    recomputing earlier positions (a diagnosis only: code that reads the weights directly shows nothing here)."""
    for name in ("tok_emb", "blocks.0.attn.wk"):
        result = w.run(Options(watch=Watch(gpt.id, name)), (LAB, "generate_cached"), gpt, prompt, steps, top_k=1)
        lengths = [shape[1] for shape, _ in result.watched or [] if type(shape) is list and len(shape) >= 2]
        if any(n > 1 for n in lengths[1:]):
            shown = lengths[:12] + (["..."] if len(lengths) > 12 else [])
            return f" ({name} saw these numbers of tokens, call by call: {shown})"
    return ""


@points(2)
def test_one_token_per_step(w):
    """generate_cached runs the prompt through the model's forward once and then one token per step, and each step
    reads the earlier positions from the cache: proven by its tokens, with the judge's weights changed before every
    call of the forward (a step that recomputes an earlier position computes it with the wrong weights), and no
    gradients are kept."""
    gpt, wts, _ = build(w)
    prompt, steps = tokens(2, 6), 10
    states, want = changing_weights(gpt, prompt, steps)
    # the tokens are the proof; what the model's forward was given (counted in the worker) only names the mistake
    result = w.run(Options(watch=Watch(gpt.id, ""), swap=Swap(gpt.id, states)), (LAB, "generate_cached"), gpt,
                   prompt, steps, top_k=1)
    out = expect_tensor(result.out, f"generate_cached(idx of shape (2, 6), {steps}, top_k=1)", (2, 6 + steps), "cache")
    calls = [(shape, grad) for shape, grad in result.watched or [] if type(shape) is list and len(shape) >= 2]
    lengths = [shape[1] for shape, _ in calls]
    if not torch.equal(out.long(), want):
        row, col = first_difference(out.long(), want)
        said = (f"with the judge's weights changed before each call of the model's forward, generating {steps} tokens "
                f"from a 6-token prompt gave tokens that no cached generation gives, from generated token {col - 6 + 1} "
                f"(of {steps}) on, in row {row}:\n"
                f"  expected {want[row].tolist()}\n  got      {out[row].tolist()}\n")
        shown = lengths[:12] + (["..."] if len(lengths) > 12 else [])
        if not lengths:
            fail(said + "generate_cached never called the model's forward: run the prompt and each step through "
                 "model(idx, cache=cache, start_pos=...) (or model.forward).", "cache_recompute")
        if lengths[0] != 6 or any(n != 1 for n in lengths[1:]) or len(lengths) not in (steps, steps + 1):
            fail(said + f"it passed these numbers of tokens to the model's forward, call by call: {shown}; expected "
                 "6 once, then 1 per step: feed only the newest token and let the cache hold the rest.",
                 "cache_recompute")
        if torch.equal(out.long(), recomputed(states, prompt, steps)):
            fail(said + "each call passed one new token, but these are the tokens of re-running the whole sequence "
                 "at every step, each call's weights applied to every earlier position"
                 f"{inside_counts(w, gpt, prompt, steps)}: a step must embed and project only its new token and read "
                 "the earlier positions' keys and values from the cache.", "cache_inside")
        if torch.equal(out.long(), greedy_of(llama_of(wts, H, KV, L), prompt, steps)):
            fail(said + "these are the tokens of the model's first weights throughout: the logits were computed "
                 "outside the model's forward (model(...) or model.forward(...)), which is what each step must call.",
                 "cache_recompute")
        fail(said + "each call passed one new token; a cached step whose logits are wrong gives other tokens too "
             "(see the checks of the cached steps).", "cache")
    if any(grad for _, grad in calls):
        fail("generate_cached ran the model with gradients enabled: decorate it with @torch.no_grad().", "sampling")


def placed(wts, prompt: torch.Tensor, steps: int, first: int, then) -> tuple:
    """(greedy tokens, the smallest gap between a step's top two logits) of the contract's cached generation with
    the prompt fed at start_pos=first and each new token at start_pos=then(tokens so far, the new one included)."""
    step = llama_steps(H, KV, L)
    logits, past = step(wts, prompt, None, first)
    idx, margin = prompt, float("inf")
    for _step in range(steps):
        top = logits[:, -1].topk(2).values
        margin = min(margin, float((top[:, 0] - top[:, 1]).min()))
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], 1)
        logits, past = step(wts, nxt, past, then(idx.size(1)))
    return idx, margin


# cached generations whose positions are off by one: (what, the prompt's start_pos, each new token's)
MISPLACED = (("the prompt fed at start_pos=1, so its last token shares a position with the first new one", 1,
              lambda n: n - 1),
             ("each new token fed one position ahead (start_pos = tokens so far, the new one included)", 0, lambda n: n),
             ("each new token fed one position behind (start_pos = tokens so far - 2)", 0, lambda n: n - 2))


@points(2)
def test_cached_greedy_matches_uncached(w):
    """With top_k=1, generate_cached gives the same tokens as greedy decoding over the whole sequence, call after call,
    and on weights for which a position off by one gives other tokens."""
    gpt, _, full = build(w, style="default")
    for prompt in (tokens(2, 5), tokens(2, 3)):  # a second call must not see the first one's cache
        out = expect_tensor(w.call((LAB, "generate_cached"), gpt, prompt, 12, top_k=1),
                            f"generate_cached(idx of shape {tuple(prompt.shape)}, 12, top_k=1)",
                            (prompt.size(0), prompt.size(1) + 12), "cache")
        want = greedy_of(full, prompt, 12)
        if not torch.equal(out.long(), want):
            row, at = first_difference(out.long(), want)
            fail(f"generate_cached's greedy tokens differ from greedy decoding without a cache from position {at} on, "
                 f"in row {row}:\n  expected {want[row].tolist()}\n  got      {out[row].tolist()}"
                 + ("" if prompt.size(1) == 5 else "\n(the first call, on a 5-token prompt, gave the right tokens)"),
                 (lambda: greedy_mistake(full, prompt, 12, out)) if prompt.size(1) == 5 else
                 (lambda: "cache_length" if length_counts_wrong(w) else "cache_stale"))
    for _ in range(TRIES):  # weights and prompts on which every position off by one shows in the greedy tokens
        wts, prompt = draw(gpt, secrets.randbits(62)), tokens(8, 5)
        want, margin = placed(wts, prompt, 12, 0, lambda n: n - 1)
        wrong = {what: placed(wts, prompt, 12, first, then)[0] for what, first, then in MISPLACED}
        if margin >= MARGIN and all(not torch.equal(t, want) for t in wrong.values()):
            break
    gpt.load(wts)
    out = expect_tensor(w.call((LAB, "generate_cached"), gpt, prompt, 12, top_k=1),
                        "generate_cached(idx of shape (8, 5), 12, top_k=1)", (8, 17), "cache")
    if not torch.equal(out.long(), want):
        row, at = first_difference(out.long(), want)
        said = next((what for what, t in wrong.items() if torch.equal(out.long(), t)), None)
        fail(f"on these weights, generate_cached's greedy tokens differ from greedy decoding without a cache from "
             f"position {at} on, in row {row}:\n  expected {want[row].tolist()}\n  got      {out[row].tolist()}"
             + (f"\nthese are the tokens of {said}." if said else ""),
             "cache_off_by_one" if said else lambda: greedy_mistake(llama_of(wts, H, KV, L), prompt, 12, out))


@points(1)
def test_sampling_options(w):
    """generate_cached samples: with top_k=3 only the 3 most likely tokens, more than one of them at temperature 2, and
    a top_k above the vocabulary keeps them all; at temperatures 0.5, 2 and 1 (the default, with top_k's default None)
    the frequencies of 2000 draws follow softmax(logits / temperature)."""
    gpt, wts, full = build(w, style="default")
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
    try:  # a top_k above the vocabulary keeps every token, whatever the number of rows
        wide = w.call((LAB, "generate_cached"), gpt, prompt.repeat(20, 1), 2, top_k=50)
    except StudentError as exc:
        fail(f"generate_cached(idx of shape (20, 4), 2, top_k=50) with a vocabulary of {V} raised {exc.type}: "
             f"{exc.message[:160]}", "top_k_large")
    wide = expect_tensor(wide, f"generate_cached(idx of shape (20, 4), 2, top_k=50) with a vocabulary of {V}", (20, 6),
                         "top_k_large")
    if not set(wide[:, 4:].flatten().tolist()) <= set(range(V)):
        fail(f"with top_k=50 and {V} tokens, generate_cached picked ids outside [0, {V}).", "top_k_large")
    # temperature: norm's gain at 4 spreads the logits, so that dividing them by 0.5 or 2 visibly changes the draws
    wts = {**wts, "norm.weight": wts["norm.weight"] * 4}
    gpt.load({"norm.weight": wts["norm.weight"]})
    short, n = tokens(1, 2), 2000
    logits = llama_of(wts, H, KV, L)(short)[0, -1]
    for T in (0.5, 2.0, 1.0):  # the last with temperature and top_k left to their defaults (1.0, None)
        given = {} if T == 1.0 else {"temperature": T}
        said = f"temperature={T}" if given else "temperature and top_k left to their defaults (1.0 and None)"
        out = expect_tensor(w.call((LAB, "generate_cached"), gpt, short.repeat(n, 1), 1, **given),
                            f"generate_cached(idx of shape ({n}, 2), 1{', temperature=' + str(T) if given else ''})",
                            (n, 3), "sampling")
        picked = out[:, -1].long()
        if int(picked.min()) < 0 or int(picked.max()) >= V:
            fail(f"with temperature={T}, generate_cached picked token ids outside [0, {V}).", "sampling")
        freq = torch.bincount(picked, minlength=V).double() / n
        gap = lambda p: 0.5 * float((freq - p).abs().sum())  # noqa: E731  (total variation)
        want, plain = torch.softmax(logits / T, -1), torch.softmax(logits, -1)
        m = int((freq > 0).sum())
        kept = (logits / T).masked_fill(logits < logits.topk(m).values[-1], float("-inf")).softmax(-1)
        if gap(want) > 0.06 and m < V and gap(kept) < min(0.06, gap(want)):
            fail(f"with {said}, top_k not given, only the {m} most likely tokens were ever drawn in {n} samples: top_k "
                 "defaults to None (every token kept).", "defaults")
        if gap(want) > 0.06:
            fail(f"with {said}, the frequencies of {n} sampled tokens are {gap(want):.2f} (total variation) "
                 f"from softmax(logits / {T}); sampling noise stays under 0.06"
                 + (f"; they are {gap(plain):.2f} from softmax(logits): the temperature is ignored." if gap(plain) <
                    gap(want) else "."), "defaults" if not given else "temperature" if gap(plain) < gap(want)
                 else "sampling")


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
