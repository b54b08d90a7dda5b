"""Lab 4 checks: the tiny GPT, its training loop and its sampler.

The checker trains the student's model once with the student's own `train` on its own text (the same
for every submission) and several checks read that run. Sizes: with max_seq_len=16, 150 steps reach a
perfect greedy continuation with tied or untied embeddings (100 already did on 3 seeds each).
"""
import math

import torch
import torch.nn as nn

from checkers.common import (attr, device, eval_mode, expect_causal, expect_close, expect_every_parameter_gets_a_gradient,
                             expect_tensor, fail, figure, gelu_flavour, next_token_loss, oracle_gpt, points, randn,
                             randomize_norms_and_biases, student)
from checkers.guards import expect_device_discipline, expect_no_shortcuts

LAB = "lab4_gpt"
TEXT = "hello transformer! "
SEQ_LEN, STEPS, PROMPT, NEW_TOKENS = 16, 150, "hello tr", 40


def lab():
    return student(LAB)


def once(fn):
    """Run fn at most once per process; later calls get the same value or the same exception."""
    memo = {}

    def wrapper():
        if not memo:
            try:
                memo["value"] = fn()
            except BaseException as exc:
                memo["error"] = exc
        if "error" in memo:
            raise memo["error"]
        return memo["value"]
    return wrapper


def tokenizer():
    return attr(lab(), "CharTokenizer")(TEXT)


def build(vocab_size, **kwargs) -> nn.Module:
    kwargs = {"d_model": 32, "n_heads": 4, "n_layers": 2, "max_seq_len": SEQ_LEN, **kwargs}
    return eval_mode(attr(lab(), "TinyGPT")(vocab_size, **kwargs))


def tokens(B, T, vocab_size):
    return torch.randint(vocab_size, (B, T)).to(device())


class Run:
    """What the checker saw while the student's `train` trained the student's model."""

    def __init__(self):
        self.tok = tokenizer()
        self.data = torch.tensor(self.tok.encode(TEXT * 20), dtype=torch.long, device=device())
        self.model = build(self.tok.vocab_size, dropout=0.0)
        self.loss_before = next_token_loss(self.model, self.data, SEQ_LEN)
        self.params_before = [p.detach().clone() for p in self.model.parameters()]
        self.shapes = []
        hook = self.model.register_forward_pre_hook(lambda m, args: self.shapes.append(tuple(args[0].shape)))
        losses = attr(lab(), "train")(self.model, self.data, steps=STEPS, batch_size=16, lr=3e-3)
        hook.remove()
        self.model.eval()
        self.loss_after = next_token_loss(self.model, self.data, SEQ_LEN)
        if not isinstance(losses, (list, tuple)):
            fail(f"train must return a list of floats (one per step), got {type(losses).__name__}.", "train")
        try:
            self.losses = [float(x) for x in losses]
        except (TypeError, ValueError):
            fail("train must return plain numbers (use loss.item()).", "train")


trained = once(Run)


@points(1)
def test_tokenizer_round_trip():
    """CharTokenizer: one id per distinct character, decode(encode(s)) == s; PATTERN is a repeating text."""
    pattern = attr(lab(), "PATTERN")
    tok = tokenizer()
    if getattr(tok, "vocab_size", None) != len(set(TEXT)):
        fail(f"CharTokenizer({TEXT!r}).vocab_size should be {len(set(TEXT))} (distinct characters), "
             f"got {getattr(tok, 'vocab_size', None)!r}.", "tokenizer")
    ids = tok.encode(TEXT)
    if not (isinstance(ids, list) and all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)):
        fail(f"encode must return a list of ints in [0, vocab_size); got {str(ids)[:80]}.", "tokenizer")
    if len(set(ids)) != len(set(TEXT)):
        fail("distinct characters must get distinct ids.", "tokenizer")
    for s in (TEXT, "transformer"):
        if tok.decode(tok.encode(s)) != s:
            fail(f"decode(encode({s!r})) gave {tok.decode(tok.encode(s))!r}.", "tokenizer")
    if not (isinstance(pattern, str) and len(set(pattern)) >= 2):
        fail(f"PATTERN must be a short text with at least two distinct characters, got {pattern!r}.", "tokenizer")
    own = attr(lab(), "CharTokenizer")(pattern)
    if own.decode(own.encode(pattern)) != pattern:
        fail("the tokenizer does not round-trip PATTERN.", "tokenizer")


@points(1)
def test_model_structure():
    """TinyGPT has tok_emb, pos_emb (max_seq_len x D), a ModuleList of lab 3 blocks, ln_f and lm_head."""
    model = build(11, d_model=24, n_heads=3, n_layers=3, max_seq_len=12)
    for name, kind in (("tok_emb", nn.Embedding), ("pos_emb", nn.Embedding), ("blocks", nn.ModuleList),
                       ("ln_f", nn.Module), ("lm_head", nn.Linear)):
        if not isinstance(getattr(model, name, None), kind):
            fail(f"TinyGPT needs self.{name} ({kind.__name__}).", "gpt")
    if tuple(model.pos_emb.weight.shape) != (12, 24):
        fail(f"pos_emb must be nn.Embedding(max_seq_len, d_model) = (12, 24), got {tuple(model.pos_emb.weight.shape)}.", "gpt")
    if tuple(model.tok_emb.weight.shape) != (11, 24):
        fail(f"tok_emb must be nn.Embedding(vocab_size, d_model) = (11, 24), got {tuple(model.tok_emb.weight.shape)}.", "gpt")
    block_cls = attr(student("lab3_block"), "TransformerBlock")
    if len(model.blocks) != 3 or not all(isinstance(b, block_cls) for b in model.blocks):
        fail(f"blocks must hold n_layers=3 lab 3 TransformerBlocks, got {[type(b).__name__ for b in model.blocks]}.", "gpt")
    if getattr(model, "max_seq_len", None) != 12:
        fail("TinyGPT must keep max_seq_len as self.max_seq_len (generate and train need it).", "crop")


@points(1)
def test_logits_shape():
    """forward maps idx (B, T) to logits (B, T, vocab_size), up to T = max_seq_len."""
    model = build(11)
    for T in (1, 7, SEQ_LEN):
        expect_tensor(model(tokens(2, T, 11)), f"logits for idx of shape (2, {T})", (2, T, 11), "gpt")


@points(3)
def test_matches_oracle():
    """Logits match a recomputation from its own parameters (random LayerNorm and bias values, so ln_f counts)."""
    model = build(11, dropout=0.1)
    randomize_norms_and_biases(model)
    idx = tokens(2, 10, 11)
    with torch.no_grad():
        logits = model(idx)
        expect_tensor(logits, "logits", (2, 10, 11), "gpt")
        approximate = gelu_flavour(model.blocks[0].mlp, randn(2, 4, 32))
        expect_close(logits, oracle_gpt(model, idx, approximate), "TinyGPT logits", atol=1e-4, hint="gpt")


@points(2)
def test_gradients_reach_every_parameter():
    """Backward works and every parameter receives a gradient."""
    model = build(11)
    logits = model(tokens(2, SEQ_LEN, 11))
    expect_every_parameter_gets_a_gradient(model, (logits * randn(*logits.shape)).sum(), "TinyGPT")


@points(1)
def test_causality():
    """Changing future tokens never changes earlier logits."""
    model = build(11)
    randomize_norms_and_biases(model)
    idx = tokens(2, 12, 11)
    expect_causal(model, idx, "TinyGPT logits", positions=(0, 5))


@points(2)
def test_get_batch_shift():
    """get_batch returns (B, T) windows x of the data and y = the same windows shifted by one."""
    data = torch.arange(100).to(device())
    x, y = attr(lab(), "get_batch")(data, 8, 12)
    expect_tensor(x, "x", (8, 12), "shift")
    expect_tensor(y, "y", (8, 12), "shift")
    if x.dtype != torch.long or y.dtype != torch.long:
        fail(f"x and y must be token ids (torch.long), got {x.dtype} and {y.dtype}.", "shift")
    steps = torch.arange(12, device=x.device)
    if not bool((x == x[:, :1] + steps).all()):
        fail("each row of x must be a contiguous window of the data.", "shift")
    if not bool((y == x + 1).all()):
        off = int((y[0, 0] - x[0, 0]).item())
        fail(f"y must be x shifted by one token; in row 0, y starts {off} position(s) after x.", "shift")
    if int(y.max()) > 99 or int(x.min()) < 0:
        fail("windows must lie inside the data.", "shift")


@points(1)
def test_training_logs_20_steps():
    """train logs one finite loss per step (at least 20)."""
    run = trained()
    if len(run.losses) != STEPS:
        fail(f"train(steps={STEPS}) returned {len(run.losses)} losses; log one per step.", "train")
    if not all(math.isfinite(x) for x in run.losses):
        fail("some logged losses are NaN or infinite.", "train")


@points(2)
def test_loss_drops_30_percent():
    """The mean of the last 5 losses is more than 30% below the mean of the first 5."""
    losses = trained().losses
    figure("losses", values=[round(x, 4) for x in losses])
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    if not (len(losses) >= 10 and last < 0.7 * first):
        fail(f"loss went from {first:.3f} (first 5) to {last:.3f} (last 5): a drop of "
             f"{100 * (1 - last / first):.0f}%, need more than 30%.", "train")


@points(2)
def test_losses_are_honest():
    """Logged losses agree with the checker's own next-token loss before and after training."""
    run = trained()
    if all(torch.equal(a, b) for a, b in zip(run.params_before, run.model.parameters())):
        fail("train did not change the model's parameters.", "train")
    first, last = run.losses[0], sum(run.losses[-3:]) / 3
    if abs(first - run.loss_before) > 0.25 + 0.1 * run.loss_before:
        fail(f"the first logged loss is {first:.3f}, but the model's next-token loss before training is "
             f"{run.loss_before:.3f}.", "train")
    if abs(last - run.loss_after) > 0.1 + 0.5 * run.loss_after:
        hint = "shift" if last < run.loss_after else "train"
        fail(f"the last logged losses average {last:.3f}, but the trained model's next-token loss is "
             f"{run.loss_after:.3f}.", hint)


@points(1)
def test_train_uses_full_context():
    """With seq_len=None, train feeds windows of model.max_seq_len tokens."""
    lengths = sorted({shape[-1] for shape in trained().shapes})
    if lengths != [SEQ_LEN]:
        fail(f"with max_seq_len={SEQ_LEN}, training windows had lengths {lengths}; seq_len defaults to "
             "model.max_seq_len (shorter windows leave position embeddings untrained).", "train")


@points(2)
def test_greedy_continues_pattern():
    """After training, greedy generation (top_k=1) continues the text exactly, past max_seq_len."""
    run = trained()
    idx = torch.tensor([run.tok.encode(PROMPT)], dtype=torch.long, device=device())
    out = run.model.generate(idx, NEW_TOKENS, top_k=1)
    expect_tensor(out, "generate's output", (1, len(PROMPT) + NEW_TOKENS), "crop")
    got = run.tok.decode(out[0].tolist())
    figure("text", label="greedy sample", text=got)
    want = (PROMPT + (TEXT * 10)[len(PROMPT):])[:len(PROMPT) + NEW_TOKENS]
    if got != want:
        at = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        fail(f"greedy continuation of {PROMPT!r} went wrong at character {at}:\n  expected {want!r}\n  got      "
             f"{got!r}\n(loss after training: {run.loss_after:.3f})", "crop" if at >= SEQ_LEN else "train")


@points(2)
def test_generate_length_and_crop():
    """generate returns (B, T + max_new_tokens), runs without gradients, and crops to the last max_seq_len tokens."""
    model = build(11, max_seq_len=8)
    randomize_norms_and_biases(model)
    idx = tokens(2, 5, 11)
    grad_seen = []
    hook = model.register_forward_pre_hook(lambda m, args: grad_seen.append(torch.is_grad_enabled()))
    out = model.generate(idx, 12, top_k=1)
    hook.remove()
    expect_tensor(out, "generate(idx of shape (2, 5), max_new_tokens=12)", (2, 17), "crop")
    if any(grad_seen):
        fail("generate ran forward with gradients enabled: decorate it with @torch.no_grad().", "sampling")
    expect_close(out[:, :5].float(), idx.float(), "the prompt at the start of generate's output", atol=0, hint="sampling")
    want = idx
    with torch.no_grad():
        for _ in range(12):
            nxt = model(want[:, -8:])[:, -1].argmax(-1, keepdim=True)
            want = torch.cat([want, nxt], dim=1)
    expect_close(out.float(), want.float(), "greedy tokens (top_k=1) vs argmax of the last max_seq_len=8 tokens' logits",
                 atol=0, hint="crop")


@points(1)
def test_top_k_sampling():
    """Sampling with top_k=k only ever picks one of the k most likely tokens; temperature is applied."""
    model = build(11)
    randomize_norms_and_biases(model)
    idx = tokens(1, 6, 11).repeat(200, 1)
    with torch.no_grad():
        allowed = set(model(idx[:1])[0, -1].topk(3).indices.tolist())
    picked = set(model.generate(idx, 1, temperature=2.0, top_k=3)[:, -1].tolist())
    if not picked <= allowed:
        fail(f"with top_k=3 the sampled tokens were {sorted(picked)}, but only {sorted(allowed)} are in the top 3.", "sampling")
    if len(picked) < 2:
        fail("with top_k=3 and temperature=2.0, 200 samples all picked the same token: sample with "
             "torch.multinomial rather than argmax.", "sampling")


@points(1)
def test_sample_returns_text():
    """sample returns a non-empty string of the tokenizer's characters."""
    run = trained()
    text = attr(lab(), "sample")(run.model, run.tok, "hello", max_new_tokens=10)
    if not (isinstance(text, str) and len(text) in (10, 15) and set(text) <= set(TEXT)):
        fail(f"sample(model, tok, 'hello', max_new_tokens=10) should return 10 new characters (with or without the "
             f"prompt), got {text!r}.", "sampling")


@points(1)
def test_no_shortcuts():
    """No built-in attention or transformer layers in the source, the module tree, or at run time."""
    model = build(11)

    def run():
        model(tokens(2, 8, 11)).sum().backward()
        model.generate(tokens(1, 4, 11), 3)
    expect_no_shortcuts(lab(), run, model)


@points(1)
def test_device_discipline():
    """forward builds positions and every other tensor on the input's device."""
    expect_device_discipline(build(11), tokens(2, 8, 11), "TinyGPT forward")
