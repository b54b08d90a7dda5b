"""Lab 4 checks: the tiny GPT, its training loop and its sampler.

The judge loads initial weights it chose into the student's model, has the student's own `train` train it on the
judge's text in the worker, and then evaluates the state the worker reports with its own forward: the losses
before and after, and the greedy continuation, are the judge's. Sizes: a model of one block with max_seq_len=16 reaches
a perfect greedy continuation in 60 steps at lr=1e-2, with tied or untied embeddings (two blocks need no more steps,
but each step costs more); the sampling, device and `train` argument checks use one block too, since what they check
does not depend on the stacking; the checks of the model itself use two blocks (and three).
"""
import math

import torch

from judge.client import NO_GRAD, Handle, Options, StudentError
from judge.checks import fail, points
from judge.compare import expect_close, expect_tensor, first_match, randn
from judge.shared import (device_error, expect_causal, expect_device_discipline, expect_dropout_only_in_training,
                          expect_every_parameter_gets_a_gradient, expect_no_shortcuts, expect_own_chain, expect_params,
                          fill, gelu_flavour)
from judge.shared import OURS, TrainingRun
from protocol.messages import Backward, Figure, Watch
from judge.oracles import gpt as reference, greedy as reference_greedy, next_token_loss
from checkers.check_lab3 import OPTIONAL as BLOCK_OPTIONAL, contract as block_contract

# Each contract item of the stub (tests/test_contract.py) and the checks that would fail were it wrong; `f(arg=)` is
# the default, exercised by a call that leaves the argument out.
STRUCTURE, ORACLE = "test_model_structure", "test_matches_oracle"
CONTRACT = {
    "PATTERN": ("test_tokenizer_round_trip",),
    "CharTokenizer": ("test_tokenizer_round_trip",),
    "CharTokenizer(text)": ("test_tokenizer_round_trip",),
    "CharTokenizer.encode": ("test_tokenizer_round_trip",),
    "CharTokenizer.encode(s)": ("test_tokenizer_round_trip",),
    "CharTokenizer.decode": ("test_tokenizer_round_trip", "test_sample_returns_text"),
    "CharTokenizer.decode(ids)": ("test_tokenizer_round_trip",),
    "CharTokenizer.vocab_size": ("test_tokenizer_round_trip",),
    "TinyGPT": (STRUCTURE, ORACLE),
    "TinyGPT(vocab_size)": (STRUCTURE, "test_logits_shape"),
    "TinyGPT(d_model)": (STRUCTURE, ORACLE),
    "TinyGPT(d_model=)": (STRUCTURE,),
    "TinyGPT(n_heads)": (ORACLE,),
    "TinyGPT(n_heads=)": (STRUCTURE,),
    "TinyGPT(n_layers)": (STRUCTURE, ORACLE),
    "TinyGPT(n_layers=)": (STRUCTURE,),
    "TinyGPT(max_seq_len)": (STRUCTURE, "test_generate_length_and_crop"),
    "TinyGPT(max_seq_len=)": (STRUCTURE,),
    "TinyGPT(dropout)": (STRUCTURE,),
    "TinyGPT(dropout=)": (STRUCTURE,),
    "TinyGPT.tok_emb": (STRUCTURE, ORACLE),
    "TinyGPT.pos_emb": (STRUCTURE, ORACLE),
    "TinyGPT.blocks": (STRUCTURE, ORACLE),
    "TinyGPT.ln_f": (STRUCTURE, ORACLE),
    "TinyGPT.lm_head": (STRUCTURE, ORACLE),
    "TinyGPT.max_seq_len": (STRUCTURE,),
    "TinyGPT.forward": ("test_logits_shape", ORACLE, "test_causality"),
    "TinyGPT.forward(idx)": ("test_logits_shape", ORACLE),
    "TinyGPT.generate": ("test_generate_length_and_crop", "test_greedy_continues_pattern"),
    "TinyGPT.generate(idx)": ("test_generate_length_and_crop",),
    "TinyGPT.generate(max_new_tokens)": ("test_generate_length_and_crop",),
    "TinyGPT.generate(temperature)": ("test_temperature_scales_the_logits",),
    "TinyGPT.generate(temperature=)": ("test_temperature_scales_the_logits",),
    "TinyGPT.generate(top_k)": ("test_top_k_sampling",),
    "TinyGPT.generate(top_k=)": ("test_temperature_scales_the_logits",),
    "get_batch": ("test_get_batch_shift",),
    "get_batch(data)": ("test_get_batch_shift",),
    "get_batch(batch_size)": ("test_get_batch_shift",),
    "get_batch(seq_len)": ("test_get_batch_shift",),
    "train": ("test_training_logs_every_step", "test_losses_are_honest", "test_loss_drops_30_percent"),
    "train(model)": ("test_losses_are_honest",),
    "train(data)": ("test_losses_are_honest",),
    "train(steps)": ("test_training_logs_every_step", "test_train_honours_its_arguments"),
    "train(steps=)": ("test_train_honours_its_arguments",),
    "train(batch_size)": ("test_train_honours_its_arguments",),
    "train(batch_size=)": ("test_train_honours_its_arguments",),
    "train(seq_len)": ("test_train_honours_its_arguments",),
    "train(seq_len=)": ("test_train_uses_full_context", "test_train_honours_its_arguments"),
    "train(lr)": ("test_train_honours_its_arguments",),
    "train(lr=)": ("test_train_honours_its_arguments",),
    "sample": ("test_sample_returns_text", "test_sample_forwards_its_options"),
    "sample(model)": ("test_sample_returns_text",),
    "sample(tokenizer)": ("test_sample_returns_text",),
    "sample(prompt)": ("test_sample_forwards_its_options",),
    "sample(max_new_tokens)": ("test_sample_returns_text", "test_sample_forwards_its_options"),
    "sample(max_new_tokens=)": ("test_sample_returns_text",),
    "sample(temperature)": ("test_sample_forwards_its_options",),
    "sample(temperature=)": ("test_sample_forwards_its_options",),
    "sample(top_k)": ("test_sample_forwards_its_options",),
    "sample(top_k=)": ("test_sample_forwards_its_options",),
    "sentence: each tokenizer has a vocabulary of its own": ("test_tokenizer_round_trip",),
    "sentence: generate runs without gradients and crops to max_seq_len": ("test_generate_length_and_crop",),
    "sentence: max_new_tokens=0 returns idx": ("test_generate_length_and_crop",),
    "sentence: top_k may exceed vocab_size": ("test_top_k_sampling",),
    "sentence: each row's window starts at random, afresh on every call": ("test_get_batch_shift",),
    "sentence: AdamW on every parameter": ("test_losses_are_honest", "test_gradients_reset_each_step"),
    "sentence: one loss per step, the batch's mean before the update": ("test_training_logs_every_step",
                                                                       "test_train_honours_its_arguments",
                                                                       "test_losses_are_honest"),
    "sentence: no torch.manual_seed inside generate, get_batch or train": ("test_get_batch_shift",
                                                                           "test_top_k_sampling"),
}

LAB = "lab4_gpt"
TEXT, STEPS = TrainingRun.TEXT, TrainingRun.STEPS
PROMPT, NEW_TOKENS = TrainingRun.PROMPT, TrainingRun.NEW_TOKENS
SEQ_LEN = 16
D, H, L = 32, 4, 2
L1 = 1  # blocks of the models whose checks do not turn on the stacking (the training run, sampling, devices): one
#        block learns the text and samples as well as two, at less cost; the stacking is checked at L and at 3
OTHER_TEXT = "xyz, zyx"  # a second tokenizer's text: other characters than TEXT's


def contract(V: int, D: int, L: int, S: int) -> dict:
    want = {"tok_emb.weight": (V, D), "pos_emb.weight": (S, D)}
    for i in range(L):
        want.update({f"blocks.{i}.{k}": v for k, v in block_contract(D).items()})
    return {**want, "ln_f.weight": (D,), "ln_f.bias": (D,), "lm_head.weight": (V, D), "lm_head.bias": (V,)}


def optional(L: int) -> tuple:
    return ("lm_head.bias", *(f"blocks.{i}.{k}" for i in range(L) for k in BLOCK_OPTIONAL))


def build(w, vocab_size=11, style="check", d_model=D, n_heads=H, n_layers=L, max_seq_len=SEQ_LEN, **kwargs):
    """The student's TinyGPT with judge-chosen weights: (handle, weights)."""
    model = w.new(LAB, "TinyGPT", vocab_size, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                  max_seq_len=max_seq_len, **kwargs)
    expect_params(model, contract(vocab_size, d_model, n_layers, max_seq_len), "TinyGPT", "gpt",
                  optional=optional(n_layers))
    return model, fill(model, style=style)


def tokens(B, T, vocab_size):
    return torch.randint(vocab_size, (B, T))


def flavour(model: Handle, wts: dict, n_heads=H, n_layers=L) -> str:
    """Which GELU the student's model uses (both are accepted), from its logits on a few tokens."""
    idx = tokens(1, 6, 11 if wts["tok_emb.weight"].shape[0] == 11 else wts["tok_emb.weight"].shape[0])
    return gelu_flavour(model.run(NO_GRAD, idx).out, lambda a: reference(wts, idx, n_heads, n_layers, a))


def greedy(wts: dict, idx: torch.Tensor, steps: int, crop: int, approximate: str, n_layers: int = L) -> torch.Tensor:
    """The judge's own greedy continuation from weights."""
    return reference_greedy(wts, idx, steps, crop, H, n_layers, approximate)


class Run(TrainingRun):
    """What the judge saw when the student's `train` trained the student's model from the judge's weights: the
    losses before and after are the judge's own, from the weights the worker reports."""

    def build(self, w, vocab_size):
        model, before = build(w, vocab_size, style="default", n_layers=L1, dropout=0.0)
        self.approximate = flavour(model, before, n_layers=L1)
        return model, before

    def options(self):  # every sub-module's inputs (the lengths trained on), and tok_emb's .grad at each step
        return Options(watch=Watch(self.model.id, ""), resets=Watch(self.model.id, "tok_emb.weight"))

    def __init__(self, w):
        super().__init__(w)
        self.watched, self.resets = self.result.watched or [], self.result.resets or []
        expect_params(self.model, contract(self.vocab_size, D, L1, SEQ_LEN), "TinyGPT", "gpt",
                      optional=optional(L1))
        self.loss_before = next_token_loss(self.before, self.data, SEQ_LEN, H, L1, self.approximate)
        self.loss_after = next_token_loss(self.after, self.data, SEQ_LEN, H, L1, self.approximate)


def trained(w) -> Run:
    return Run.of(w)


@points(1)
def test_tokenizer_round_trip(w):
    """CharTokenizer: one id per distinct character, decode(encode(s)) == s; PATTERN is a repeating text."""
    pattern = w.get(LAB, "PATTERN")
    tok = w.new(LAB, "CharTokenizer", TEXT)
    vocab_size = tok.get("vocab_size")
    if vocab_size != len(set(TEXT)):
        fail(f"CharTokenizer({TEXT!r}).vocab_size should be {len(set(TEXT))} (distinct characters), "
             f"got {vocab_size!r}.", "tokenizer")
    ids = tok.method("encode", TEXT)
    if not (type(ids) is list and all(type(i) is int and 0 <= i < vocab_size for i in ids)):
        fail(f"encode must return a list of ints in [0, vocab_size); got {str(ids)[:80]}.", "tokenizer")
    if len(set(ids)) != len(set(TEXT)) or any(ids[TEXT.index(c)] != i for c, i in zip(TEXT, ids)):
        fail("each distinct character must get one id of its own.", "tokenizer")
    for s in (TEXT, "transformer"):
        back = tok.method("decode", tok.method("encode", s))
        if back != s:
            fail(f"decode(encode({s!r})) gave {str(back)[:80]!r}.", "tokenizer")
    if not (type(pattern) is str and len(set(pattern)) >= 2):
        fail(f"PATTERN must be a short text with at least two distinct characters, got {str(pattern)[:80]!r}.",
             "tokenizer")
    own = w.new(LAB, "CharTokenizer", pattern)
    if own.method("decode", own.method("encode", pattern)) != pattern:
        fail("the tokenizer does not round-trip PATTERN.", "tokenizer")
    other = w.new(LAB, "CharTokenizer", OTHER_TEXT)  # a second tokenizer, in the same process, on other characters
    try:
        other_size, again, back = other.get("vocab_size"), tok.method("encode", TEXT), \
            other.method("decode", other.method("encode", OTHER_TEXT))
        size_after = tok.get("vocab_size")
    except StudentError as exc:
        fail(f"after CharTokenizer({OTHER_TEXT!r}) was built, the first CharTokenizer({TEXT!r}) raised {exc.type}: "
             f"{exc.message[:120]}: each tokenizer must keep a vocabulary of its own.", "tokenizer_own")
    if other_size != len(set(OTHER_TEXT)) or back != OTHER_TEXT or again != ids or size_after != vocab_size:
        fail(f"two tokenizers in one process are not independent: after CharTokenizer({OTHER_TEXT!r}) (vocab_size "
             f"{other_size!r}, {len(set(OTHER_TEXT))} expected) was built, CharTokenizer({TEXT!r}) has vocab_size "
             f"{size_after!r} (was {vocab_size}) and encodes its text {'the same' if again == ids else 'differently'}.",
             "tokenizer_own")


@points(1)
def test_model_structure(w):
    """TinyGPT has tok_emb, pos_emb (max_seq_len x D), a ModuleList of lab 3 blocks, ln_f and lm_head; its defaults
    are d_model=32, n_heads=4, n_layers=2, max_seq_len=32, dropout=0.0, and a dropout given acts in training only."""
    model = w.new(LAB, "TinyGPT", 11, d_model=24, n_heads=3, n_layers=3, max_seq_len=12)
    modules = model.modules
    for name, kind in (("tok_emb", "Embedding"), ("pos_emb", "Embedding"), ("blocks", "ModuleList"),
                       ("ln_f", None), ("lm_head", "Linear")):
        if name not in modules or (kind and kind not in modules[name][2]):
            fail(f"TinyGPT needs self.{name} ({kind or 'a LayerNorm'}).", "gpt")
    shapes = {name: shape for name, (shape, _) in model.params.items()}
    if shapes.get("pos_emb.weight") != (12, 24):
        fail(f"pos_emb must be nn.Embedding(max_seq_len, d_model) = (12, 24), got {shapes.get('pos_emb.weight')}.", "gpt")
    if shapes.get("tok_emb.weight") != (11, 24):
        fail(f"tok_emb must be nn.Embedding(vocab_size, d_model) = (11, 24), got {shapes.get('tok_emb.weight')}.", "gpt")
    blocks = [(n, m) for n, m in modules.items() if n.startswith("blocks.") and n.count(".") == 1]
    if len(blocks) != 3 or not all(m[:2] == ("TransformerBlock", "lab3_block") for _, m in blocks):
        fail(f"blocks must hold n_layers=3 lab 3 TransformerBlocks, got {[m[0] for _, m in blocks]}.", "gpt")
    if model.attr("max_seq_len") != 12:
        fail("TinyGPT must keep max_seq_len as self.max_seq_len (generate and train need it).", "gpt_args")
    # the defaults: TinyGPT(11) is d_model=32, n_heads=4, n_layers=2, max_seq_len=32 and dropout=0.0
    plain = w.new(LAB, "TinyGPT", 11)
    expect_params(plain, contract(11, 32, 2, 32), "TinyGPT(11) (every other argument left to its default)", "defaults",
                  optional=optional(2))
    if sum(1 for n in plain.modules if n.startswith("blocks.") and n.count(".") == 1) != 2:
        fail("TinyGPT(11) should hold n_layers=2 blocks by default.", "defaults")
    if plain.attr("max_seq_len") != 32:
        fail(f"TinyGPT(11).max_seq_len should be 32 by default, got {plain.attr('max_seq_len')!r}.", "defaults")
    wts = fill(plain)
    idx = tokens(2, 9, 11)
    plain.method("train")  # dropout=0.0 by default: training mode changes nothing
    first, second = (expect_tensor(plain.run(Options(no_grad=True, seed=seed), idx).out, "TinyGPT(11) logits",
                                   (2, 9, 11), "defaults") for seed in (1, 2))
    if not torch.equal(first, second):
        fail("TinyGPT(11) in training mode gave different logits under two seeds: dropout defaults to 0.0.", "defaults")
    expect_close(first, reference(wts, idx, 4, 2, gelu_flavour(first, lambda a: reference(wts, idx, 4, 2, a))),
                 "TinyGPT(11) logits, against n_heads=4 and n_layers=2 (the defaults)", atol=1e-4, hint="defaults")
    # dropout given: applied in training mode only
    expect_dropout_only_in_training(w.new(LAB, "TinyGPT", 11, dropout=0.5), tokens(2, 8, 11),
                                    "TinyGPT(11, dropout=0.5)")


@points(1)
def test_logits_shape(w):
    """forward maps idx (B, T) to logits (B, T, vocab_size), up to T = max_seq_len."""
    model, _ = build(w)
    for T in (1, 7, SEQ_LEN):
        expect_tensor(model.run(NO_GRAD, tokens(2, T, 11)).out, f"logits for idx of shape (2, {T})", (2, T, 11), "gpt")


@points(3)
def test_matches_oracle(w):
    """Logits match a recomputation from its own parameters (random LayerNorm and bias values, so ln_f counts), at the
    default sizes and at d_model=24, n_heads=2, n_layers=3."""
    model, wts = build(w, dropout=0.1)
    idx = tokens(2, 10, 11)
    logits = expect_tensor(model.run(NO_GRAD, idx).out, "logits", (2, 10, 11), "gpt")
    approximate = gelu_flavour(logits, lambda a: reference(wts, idx, H, L, a))
    expect_close(logits, reference(wts, idx, H, L, approximate), "TinyGPT logits", atol=1e-4, hint="gpt")
    model, wts = build(w, d_model=24, n_heads=2, n_layers=3)  # other sizes: each argument is passed on
    logits = expect_tensor(model.run(NO_GRAD, idx).out, "logits", (2, 10, 11), "gpt")
    approximate = gelu_flavour(logits, lambda a: reference(wts, idx, 2, 3, a))
    expect_close(logits, reference(wts, idx, 2, 3, approximate),
                 "TinyGPT(11, d_model=24, n_heads=2, n_layers=3) logits", atol=1e-4, hint=lambda: first_match({"gpt_args": [lambda i: reference(wts, i, H, 3, approximate)]},
                                                     idx, logits), fallback="gpt")


@points(2)
def test_gradients_reach_every_parameter(w):
    """Backward works and every parameter receives a gradient."""
    model, _ = build(w)
    expect_every_parameter_gets_a_gradient(model, tokens(2, SEQ_LEN, 11), "TinyGPT")


@points(1)
def test_causality(w):
    """Changing future tokens never changes earlier logits."""
    model, _ = build(w)
    expect_causal(lambda t: model.run(NO_GRAD, t).out, tokens(2, 12, 11), "TinyGPT logits", positions=(0, 5))


@points(2)
def test_get_batch_shift(w):
    """get_batch returns (B, T) windows x of the data at random starts and y = the same windows shifted by one."""
    batch = w.call((LAB, "get_batch"), torch.arange(100), 8, 12)
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        fail(f"get_batch must return a pair (x, y), got {type(batch).__name__}.", "shift")
    x, y = batch
    expect_tensor(x, "x", (8, 12), "shift")
    expect_tensor(y, "y", (8, 12), "shift")
    if x.dtype != torch.long or y.dtype != torch.long:
        fail(f"x and y must be token ids (torch.long), got {x.dtype} and {y.dtype}.", "shift")
    if not bool((x == x[:, :1] + torch.arange(12)).all()):
        fail("each row of x must be a contiguous window of the data.", "shift")
    if not bool((y == x + 1).all()):
        row = int((y != x + 1).any(1).nonzero()[0])  # the first row that is wrong, and the one shown
        off = int((y[row, 0] - x[row, 0]).item())
        fail(f"y must be x shifted by one token; in row {row}, x = {x[row].tolist()} and y = {y[row].tolist()}: "
             f"y starts {off} position(s) after x.", "shift")
    if int(y.max()) > 99 or int(x.min()) < 0:
        fail("windows must lie inside the data.", "shift")
    if bool((x == x[:1]).all()):  # 8 starts drawn from 88: all equal by chance about once in 10**15
        fail(f"every row of the batch is the same window (starting at {int(x[0, 0])}): draw a start for each row "
             "(torch.randint(..., (batch_size,))).", "batch_random")
    starts = [x[:, 0].tolist()]
    # a second call with the random state left as the first one left it (each request is seeded 0 otherwise)
    again = w.run(Options(seed=None), (LAB, "get_batch"), torch.arange(100), 8, 12).out
    again = again[0] if isinstance(again, (tuple, list)) else again
    starts.append(expect_tensor(again, "x", (8, 12), "shift")[:, 0].tolist())
    for seed in (1, 2):  # two runs under different seeds: random starts differ
        again = w.run(Options(seed=seed), (LAB, "get_batch"), torch.arange(100), 8, 12).out
        again = again[0] if isinstance(again, (tuple, list)) else again
        starts.append(expect_tensor(again, "x", (8, 12), "shift")[:, 0].tolist())
    if starts[0] == starts[1] or starts[2] == starts[3]:
        same = starts[0] if starts[0] == starts[1] else starts[2]
        steps = {b - a for a, b in zip(same, same[1:])}
        if len(steps) > 1:  # random-looking starts that repeat: a generator seeded again at each call
            fail(f"get_batch picked the same window starts {same} on two calls: "
                 "do not reseed (torch.manual_seed) inside it.", "reseed")
        fail(f"get_batch picked the same window starts {same} on two calls: pick them at random on each call.",
             "batch_random")


@points(1)
def test_training_logs_every_step(w):
    """train logs one finite loss per step (60 steps here; the lab asks for at least 20)."""
    run = trained(w)
    if len(run.losses) != STEPS:
        fail(f"train(steps={STEPS}) returned {len(run.losses)} losses; log one per step.", "train")
    if not all(math.isfinite(x) for x in run.losses):
        fail("some logged losses are NaN or infinite.", "train")


@points(2)
def test_loss_drops_30_percent(w):
    """The mean of the last 5 losses is more than 30% below the mean of the first 5."""
    losses = trained(w).losses
    shown = [Figure("losses", values=[round(x, 4) for x in losses])]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    if not (len(losses) >= 10 and last < 0.7 * first):
        fail(f"loss went from {first:.3f} (first 5) to {last:.3f} (last 5): a drop of "
             f"{100 * (1 - last / first) if first else 0:.0f}%, need more than 30%.", "train", figures=shown)
    return shown


@points(2)
def test_losses_are_honest(w):
    """Logged losses agree with the checker's own next-token loss before and after training; each step logs the loss
    of its own batch, computed before the optimizer's step; the optimizer updates every parameter."""
    run = trained(w)
    if all(torch.equal(run.before[n], run.after[n]) for n in run.before):
        fail("train did not change the model's parameters.", "train")
    still = [n for n in run.before if torch.equal(run.before[n], run.after[n])]
    if still:
        fail(f"after {STEPS} steps of train these parameters never changed: {', '.join(still[:6])}"
             f"{' ...' if len(still) > 6 else ''}: the optimizer must update every parameter of the model.",
             "optimizer_params")
    if len(run.losses) < 3:
        fail(f"train returned {len(run.losses)} losses.", "train")
    first, last = run.losses[0], sum(run.losses[-3:]) / 3
    if not abs(first - run.loss_before) <= 0.25 + 0.1 * run.loss_before:
        fail(f"the first logged loss is {first:.3f}, but the model's next-token loss before training is "
             f"{run.loss_before:.3f}.", "train")
    if not abs(last - run.loss_after) <= 0.1 + 0.5 * run.loss_after:
        hint = "shift" if last < run.loss_after else "train"
        fail(f"the last logged losses average {last:.3f}, but the trained model's next-token loss is "
             f"{run.loss_after:.3f}.", hint)
    expect_loss_before_the_step(w, run.vocab, run.vocab_size)


def expect_loss_before_the_step(w, vocab: dict, V: int):
    """One step of train on a text of one repeated character (every window the same): the loss it logs is that
    window's loss under the weights before the step, not after it."""
    c = vocab["l"]
    data = torch.full((40,), c, dtype=torch.long)
    model, before = build(w, V, style="default", dropout=0.0)
    approximate = flavour(model, before)
    losses = w.call((LAB, "train"), model, data, steps=1, batch_size=2, seq_len=8, lr=0.1)
    if not (isinstance(losses, (list, tuple)) and len(losses) == 1 and type(losses[0]) in (int, float)):
        fail(f"train(steps=1) returned {str(losses)[:80]}: one number per step.", "train")
    after = model.state()
    window = data[:9][None]

    def loss(wts):
        logits = reference(wts, window[:, :-1], H, L, approximate)
        return float(torch.nn.functional.cross_entropy(logits[0], window[0, 1:]))
    want, moved = loss(before), loss({n: after.get(n, v) for n, v in before.items()})
    logged = float(losses[0])
    if abs(logged - want) > 1e-3 + 1e-3 * want:
        late = abs(logged - moved) < abs(logged - want)
        fail(f"on a text of one repeated character, train(steps=1, lr=0.1) logged {logged:.4f}; the step's batch has "
             f"loss {want:.4f} under the weights before the step and {moved:.4f} after it"
             + (": log the loss computed before the optimizer's step." if late else "."),
             "loss_before_step" if late else "train")


@points(1)
def test_train_uses_full_context(w):
    """With seq_len=None, train feeds windows of model.max_seq_len tokens."""
    lengths = sorted({shape[-1] for shape, grad in trained(w).watched if type(shape) is list and shape and grad})
    if lengths != [SEQ_LEN]:
        fail(f"with max_seq_len={SEQ_LEN}, training windows had lengths {lengths}; seq_len defaults to "
             "model.max_seq_len (shorter windows leave position embeddings untrained).", "train")


@points(2)
def test_greedy_continues_pattern(w):
    """After training, greedy generation (top_k=1) continues the text exactly, past max_seq_len."""
    run = trained(w)
    idx = run.prompt()
    out = expect_tensor(run.model.method("generate", idx, NEW_TOKENS, top_k=1), "generate's output",
                        (1, len(PROMPT) + NEW_TOKENS), "crop")
    ours = greedy(run.after, idx, NEW_TOKENS, SEQ_LEN, run.approximate, L1)
    return run.expect_continuation(  # a character after the first SEQ_LEN is the first one a crop decides
        ours, [(run.text_of(out[0].tolist()), "generate")],
        lambda at, whose: "train" if whose == OURS else "crop" if at > SEQ_LEN else "sampling")


@points(2)
def test_generate_length_and_crop(w):
    """generate returns (B, T + max_new_tokens) (idx itself for max_new_tokens=0), runs without gradients, and crops
    to the last max_seq_len tokens."""
    model, wts = build(w, style="default", max_seq_len=8)  # default init: random biases make greedy runs collapse
    idx = tokens(2, 5, 11)
    try:
        result = model.run_method(Options(watch=Watch(model.id, "")), "generate", idx, 12, top_k=1)
    except StudentError as exc:
        if exc.type == "IndexError":  # position embeddings run out past max_seq_len
            fail(f"generate(idx of shape (2, 5), max_new_tokens=12) with max_seq_len=8 raised {exc.type}: "
                 f"{exc.message}", "crop")
        raise
    shape = getattr(result.out, "shape", None)
    if shape is not None and tuple(shape) == (2, 12):
        fail("generate returned only the 12 new tokens, shape (2, 12); (2, 17) expected.", "append")
    out = expect_tensor(result.out, "generate(idx of shape (2, 5), max_new_tokens=12)", (2, 17), "crop")
    if any(grad for _, grad in result.watched or []):
        fail("generate ran forward with gradients enabled: decorate it with @torch.no_grad().", "sampling")
    if not torch.equal(out[:, :5], idx):
        row = int((out[:, :5] != idx).any(1).nonzero()[0])
        fail(f"generate's output must start with the prompt: row {row} starts {out[row, :5].tolist()}, the prompt is "
             f"{idx[row].tolist()}.", "append")
    want = greedy(wts, idx, 12, 8, flavour(model, wts))
    # the token at column c was chosen from c tokens of context: cropping matters only once c > max_seq_len
    expect_close(out.float(), want.float(), "greedy tokens (top_k=1) vs argmax of the last max_seq_len=8 tokens' logits",
                 atol=0, hint=lambda: "crop" if int((out != want).any(0).nonzero()[0]) > 8 else "sampling")
    none = expect_tensor(model.method("generate", idx, 0), "generate(idx of shape (2, 5), max_new_tokens=0)", (2, 5),
                         "append")
    if not torch.equal(none, idx):
        fail(f"generate(idx, max_new_tokens=0) must return idx unchanged, got {none[0].tolist()} for the prompt "
             f"{idx[0].tolist()}.", "append")


@points(1)
def test_top_k_sampling(w):
    """Sampling with top_k=k only ever picks one of the k most likely tokens, afresh on each call; a top_k above the
    vocabulary keeps every token."""
    model, wts = build(w, style="default")
    idx = tokens(1, 6, 11).repeat(200, 1)
    allowed = set(reference(wts, idx[:1], H, L, flavour(model, wts))[0, -1].topk(3).indices.tolist())
    out = expect_tensor(model.method("generate", idx, 1, temperature=2.0, top_k=3), "generate's output", (200, 7),
                        "sampling")
    picked = set(out[:, -1].tolist())
    if not picked <= allowed:
        fail(f"with top_k=3 the sampled tokens were {sorted(picked)}, but only {sorted(allowed)} are in the top 3.", "sampling")
    if len(picked) < 2:
        fail("with top_k=3 and temperature=2.0, 200 samples all picked the same token: sample with "
             "torch.multinomial rather than argmax.", "sampling")
    second = model.run_method(Options(seed=None), "generate", idx, 1, temperature=2.0, top_k=3).out  # not reseeded
    second = expect_tensor(second, "generate's output", (200, 7), "sampling")
    if torch.equal(second, out):  # 200 draws among 3 tokens: the same twice by chance about once in 10**40
        fail("two calls of generate(idx of 200 rows, 1, temperature=2.0, top_k=3) sampled exactly the same 200 tokens: "
             "generate must not reseed (torch.manual_seed) the random generator.", "reseed")
    try:
        wide = model.method("generate", idx[:20], 2, top_k=50)
    except StudentError as exc:
        fail(f"generate(..., top_k=50) with a vocabulary of 11 raised {exc.type}: {exc.message[:160]}", "top_k_large")
    wide = expect_tensor(wide, "generate(idx of shape (20, 6), 2, top_k=50) with a vocabulary of 11", (20, 8),
                         "top_k_large")
    if int(wide.min()) < 0 or int(wide.max()) > 10:
        fail("with top_k=50 and 11 tokens, generate picked ids outside [0, 11): "
             f"{sorted(set(wide[:, 6:].flatten().tolist()))}.", "top_k_large")


def peaky(w, vocab_size=11):
    """A default-initialised model whose logits are spread (ln_f's gain at 4), so that temperature and sampling
    visibly matter: (handle, weights, GELU flavour)."""
    model, wts = build(w, vocab_size, style="default", n_layers=L1)
    wts = {**wts, "ln_f.weight": wts["ln_f.weight"] * 4}
    model.load({"ln_f.weight": wts["ln_f.weight"]})
    return model, wts, flavour(model, wts, n_layers=L1)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


@points(1)
def test_temperature_scales_the_logits(w):
    """generate samples from softmax(logits / temperature): at T = 0.5, 1 (the default, with top_k's default None) and
    2 the frequencies of 2000 samples match."""
    model, wts, approximate = peaky(w)
    prompt, n = tokens(1, 2, 11), 2000  # a short prompt: the sampling is what is measured, not the forward
    best = None  # the gain at which the three temperatures' distributions lie furthest apart: never within the noise
    for gain in (1.0, 2.0, 0.5, 4.0, 0.25):
        trial = {**wts, "ln_f.weight": wts["ln_f.weight"] * gain}
        logits = reference(trial, prompt, H, L1, approximate)[0, -1].double()
        apart = min(total_variation(torch.softmax(logits / a, -1), torch.softmax(logits / b, -1))
                    for a, b in ((0.5, 1.0), (1.0, 2.0)))
        if best is None or apart > best[0]:
            best = (apart, gain, trial, logits)
        if apart >= 0.2:
            break
    _, gain, wts, logits = best
    if gain != 1.0:
        model.load({"ln_f.weight": wts["ln_f.weight"]})
    for T in (0.5, 1.0, 2.0):  # T = 1 by leaving temperature (and top_k) to their defaults
        given = {} if T == 1.0 else {"temperature": T}
        out = expect_tensor(model.method("generate", prompt.repeat(n, 1), 1, **given),
                            f"generate(idx of shape ({n}, 2), 1{', temperature=' + str(T) if given else ''})", (n, 3),
                            "sampling")
        picked = out[:, -1]
        if int(picked.min()) < 0 or int(picked.max()) > 10:
            fail(f"with temperature={T}, generate picked token ids outside [0, 11).", "sampling")
        freq = torch.bincount(picked, minlength=11).double() / n
        want = torch.softmax(logits / T, -1)
        if total_variation(freq, want) > 0.06:
            guesses = {"ignores temperature": torch.softmax(logits, -1),
                       "multiplies the logits by temperature": torch.softmax(logits * T, -1)}
            guess = min(guesses, key=lambda g: total_variation(freq, guesses[g]))
            named = f" It looks as if generate {guess}." if T != 1.0 and \
                total_variation(freq, guesses[guess]) < total_variation(freq, want) else ""
            said = f"temperature={T}" if given else "temperature and top_k left to their defaults (1.0 and None)"
            m = int((freq > 0).sum())
            kept = (logits / T).masked_fill(logits < logits.topk(m).values[-1], float("-inf")).softmax(-1)
            if m < 11 and total_variation(freq, kept) < min(0.06, total_variation(freq, want)):
                fail(f"with {said} and top_k not given, only the {m} most likely tokens were ever drawn in {n} "
                     f"samples: top_k defaults to None (every token kept).", "defaults")
            fail(f"with {said}, the frequencies of {n} sampled tokens are {total_variation(freq, want):.2f} "
                 f"(total variation) from softmax(logits / {T}); sampling noise stays under 0.06.{named}",
                 "temperature" if T != 1.0 else "defaults")  # T = 0.5, given, passed already


@points(1)
def test_sample_forwards_its_options(w):
    """sample passes max_new_tokens, temperature and top_k on to generate (top_k=1 and temperature=0.001: greedy), and
    without them samples (temperature=1.0, top_k=None)."""
    tok = w.new(LAB, "CharTokenizer", TEXT)
    ids = tok.method("encode", TEXT)
    V = tok.get("vocab_size")
    if not (type(ids) is list and type(V) is int and all(type(i) is int and 0 <= i < V for i in ids)):
        fail("CharTokenizer(PATTERN) does not encode its own text into ids below vocab_size.", "tokenizer")
    chars = dict(zip(ids, TEXT))
    model, wts, approximate = peaky(w, V)
    prompt = "hello"
    idx = torch.tensor([[ids[TEXT.index(c)] for c in prompt]])
    want = "".join(chars.get(int(i), "?") for i in greedy(wts, idx, 20, SEQ_LEN, approximate, L1)[0].tolist())
    for option, value in (("top_k", 1), ("temperature", 1e-3)):
        text = w.call((LAB, "sample"), model, tok, prompt, max_new_tokens=20, **{option: value})
        if type(text) is not str or len(text) not in (20, 25):
            fail(f"sample(model, tok, {prompt!r}, max_new_tokens=20, {option}={value}) returned "
                 f"{str(text)[:60]!r}: 20 new characters (with or without the prompt) are expected.", "options")
        if text not in (want, want[len(prompt):]):
            fail(f"sample(..., {option}={value}) should decode greedily to {want!r}, got {text!r}: it does not "
                 f"pass {option} on to generate.", "options")
    # the defaults (temperature=1.0, top_k=None) sample: the greedy text is then far too unlikely to come out
    chance, idx = 1.0, idx.clone()
    for _ in range(20):
        probs = torch.softmax(reference(wts, idx[:, -SEQ_LEN:], H, L1, approximate)[0, -1].double(), -1)
        chance *= float(probs.max())
        idx = torch.cat([idx, probs.argmax().view(1, 1)], 1)
    text = w.call((LAB, "sample"), model, tok, prompt, max_new_tokens=20)
    if chance < 1e-6 and text in (want, want[len(prompt):]):
        fail(f"sample(model, tok, {prompt!r}, max_new_tokens=20), temperature and top_k left to their defaults, gave "
             f"the greedy text {text!r}, which sampling at temperature 1.0 gives with probability {chance:.1e}.",
             "defaults")


@points(1)
def test_train_honours_its_arguments(w):
    """train(model, data, steps=3, batch_size=4, seq_len=8, lr=0.0): 3 losses, batches of 4 x 8, with lr=0 no change,
    and each loss the mean over the whole batch; its defaults: steps=200, batch_size=16, lr=3e-3."""
    tok = w.new(LAB, "CharTokenizer", TEXT)
    data = torch.tensor(tok.method("encode", TEXT * 10), dtype=torch.long)
    model, before = build(w, tok.get("vocab_size"), style="default", n_layers=L1, dropout=0.0)
    result = w.run(Options(watch=Watch(model.id, "")), (LAB, "train"), model, data, steps=3, batch_size=4, seq_len=8,
                   lr=0.0)
    losses = result.out
    shapes = [tuple(shape) for shape, grad in result.watched or [] if type(shape) is list and grad]
    if not isinstance(losses, (list, tuple)) or len(losses) != 3:
        fail(f"train(steps=3) logged {len(losses) if isinstance(losses, (list, tuple)) else losses!r} losses.",
             "train_args")
    if not shapes or any(s != (4, 8) for s in shapes):
        fail(f"train(batch_size=4, seq_len=8) fed the model batches of shape {sorted(set(shapes))}; (4, 8) expected: "
             "pass batch_size and seq_len on to get_batch.", "train_args")
    after = model.state()
    moved = [n for n in before if not (isinstance(after.get(n), torch.Tensor) and torch.equal(after[n], before[n]))]
    if moved:
        fail(f"with lr=0.0, training changed {', '.join(moved[:3])}: pass lr to the optimizer.", "train_args")
    # with lr=0 every logged loss is the mean loss of its batch's 4 windows under the weights the judge loaded
    windows = data.unfold(0, 9, 1).unique(dim=0)  # every distinct window (the text repeats: few of them)
    logits = reference(before, windows[:, :-1], H, L1, flavour(model, before, n_layers=L1))
    each = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1),
                                             reduction="none").view(len(windows), -1).mean(1)  # one per window
    logged = torch.tensor([float(x) for x in losses], dtype=torch.float64)
    if bool(((logged < each.min() - 1e-4) | (logged > each.max() + 1e-4)).any()):
        fail(f"with lr=0.0 the logged losses {[round(float(x), 4) for x in logged]} are not means of the windows' "
             f"losses (each window's lies in [{float(each.min()):.4f}, {float(each.max()):.4f}]): take the mean "
             "cross-entropy over every row and position of the batch.", "loss_rows")
    single = (logged[:, None] - each[None, :]).abs().min(1).values < 1e-5
    if bool(single.all()) and float(each.max() - each.min()) > 1e-2:
        fail(f"with lr=0.0 and batch_size=4, each logged loss {[round(float(x), 4) for x in logged]} is the loss of a "
             "single window: the loss must be the mean over every row of the batch.", "loss_rows")
    expect_train_defaults(w, data, tok.get("vocab_size"))


def expect_train_defaults(w, data, V: int):
    """train's defaults, on a very small model (max_seq_len=2, so that 200 steps cost little): steps=200 (with lr=0),
    and, for one step, batches of batch_size=16 x max_seq_len and AdamW's first update of lr=3e-3 (its first step
    moves each parameter with a gradient by lr, whatever the gradient's size)."""
    small = dict(style="default", d_model=4, n_heads=1, n_layers=0, max_seq_len=2, dropout=0.0)  # no block: cheap steps
    model, _ = build(w, V, **small)
    losses = w.call((LAB, "train"), model, data, batch_size=1, seq_len=1, lr=0.0)
    if not (isinstance(losses, (list, tuple)) and len(losses) == 200):
        fail(f"train(model, data, batch_size=1, seq_len=1, lr=0.0), steps left to its default (200), logged "
             f"{len(losses) if isinstance(losses, (list, tuple)) else losses!r} losses.", "defaults")
    model, before = build(w, V, **small)
    result = w.run(Options(watch=Watch(model.id, "")), (LAB, "train"), model, data, steps=1)
    shapes = sorted({tuple(shape) for shape, grad in result.watched or [] if type(shape) is list and grad})
    if shapes != [(16, 2)]:
        fail(f"train(model, data, steps=1), batch_size and seq_len left to their defaults, fed batches of shape "
             f"{shapes}; (16, 2) expected (batch_size=16, seq_len=model.max_seq_len=2).", "defaults")
    after = model.state()
    moved = max(float((after[n] - before[n]).abs().max()) for n in before if isinstance(after.get(n), torch.Tensor))
    if not 0.8 * 3e-3 <= moved <= 1.25 * 3e-3:
        fail(f"one step of train(model, data, steps=1), lr left to its default (3e-3), moved the parameters by up to "
             f"{moved:.2g}; AdamW's first step moves them by lr = 3e-3.", "defaults")


@points(1)
def test_gradients_reset_each_step(w):
    """Each step's update uses that step's gradient only (the optimizer's gradients are cleared every step)."""
    run = trained(w)
    resets = [bool(r) for r in run.resets]
    if not resets:
        fail("during train, no backward pass reached tok_emb.weight.", "train")
    carried = sum(resets[1:])
    if carried and torch.equal(run.before["tok_emb.weight"], run.after["tok_emb.weight"]):
        fail(f"tok_emb.weight.grad kept growing during train and tok_emb.weight never changed: the optimizer does not "
             "hold it (its zero_grad clears only the parameters it was given).", "optimizer_params")
    if carried:
        fail(f"in {carried} of {len(resets) - 1} steps after the first, tok_emb.weight.grad held more than that "
             "step's gradient: the earlier steps' gradients were never cleared.", "zero_grad")


@points(1)
def test_sample_returns_text(w):
    """sample returns a string of the tokenizer's characters: max_new_tokens of them, 40 by default."""
    run = trained(w)
    text = w.call((LAB, "sample"), run.model, run.tok, "hello", max_new_tokens=10)
    if not (type(text) is str and len(text) in (10, 15) and set(text) <= set(TEXT)):
        fail(f"sample(model, tok, 'hello', max_new_tokens=10) should return 10 new characters (with or without the "
             f"prompt), got {str(text)[:80]!r}.", "sampling")
    text = w.call((LAB, "sample"), run.model, run.tok, "hello")
    if not (type(text) is str and len(text) in (40, 45)):
        fail(f"sample(model, tok, 'hello') should return max_new_tokens=40 new characters by default (with or without "
             f"the prompt), got {len(text) if type(text) is str else type(text).__name__}: {str(text)[:80]!r}.",
             "defaults")


@points(1)
def test_no_shortcuts(w):
    """No built-in attention or transformer layers in the source, the module tree, or at run time."""
    model, _ = build(w)

    def run():
        model.run(Options(guard=True, backward=Backward(randn(2, 8, 11))), tokens(2, 8, 11))
        model.run_method(Options(guard=True), "generate", tokens(1, 4, 11), 3)
    expect_no_shortcuts(w, run, model)


@points(1)
def test_device_discipline(w):
    """forward builds positions and every other tensor on the input's device; sample puts the prompt on the model's."""
    model, _ = build(w)
    expect_device_discipline(w, model, tokens(2, 8, 11), "TinyGPT forward")
    tok = w.new(LAB, "CharTokenizer", TEXT)  # the model is now on the probe's device (CUDA, or meta)
    target = "cuda" if w.device == "cuda" else "meta"
    try:
        w.run(Options(device_guard=True, no_grad=True), (LAB, "sample"), model, tok, TEXT[:4], 3)
    except StudentError as exc:
        if exc.undecided:  # the probe ran out of values where the text is decoded: every op before had one device
            return
        if device_error(exc):
            fail(f"sample(model, tokenizer, {TEXT[:4]!r}, 3) with the model on {target} failed: {exc.message}. Make "
                 "the prompt's tensor on the model's device (next(model.parameters()).device).", "device")
        raise


@points(2, hidden=True)
def test_edge_windows_and_prompts(w):
    """get_batch on data with room for one window only; generate from a prompt longer than max_seq_len."""
    data = torch.arange(10) * 3
    batch = w.call((LAB, "get_batch"), data, 4, 9)
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        fail(f"get_batch must return a pair (x, y), got {type(batch).__name__}.", "shift")
    x, y = (expect_tensor(t, name, (4, 9), "shift") for t, name in zip(batch, "xy"))
    if not (torch.equal(x, data[:9].expand(4, 9)) and torch.equal(y, data[1:].expand(4, 9))):
        row = int(((x != data[:9]) | (y != data[1:])).any(1).nonzero()[0])  # the row shown is a wrong one
        fail("get_batch(data of 10 tokens, 4, seq_len=9) has one window only (start 0): x = data[0:9] and "
             f"y = data[1:10], got x[{row}] = {x[row].tolist()} and y[{row}] = {y[row].tolist()}.", "batch_random")
    model, wts = build(w, style="default", max_seq_len=8)
    idx = tokens(2, 11, 11)  # longer than max_seq_len from the first step
    out = expect_tensor(model.method("generate", idx, 3, top_k=1), "generate(idx of shape (2, 11), 3)", (2, 14),
                        "crop")
    expect_close(out.float(), greedy(wts, idx, 3, 8, flavour(model, wts)).float(),
                 "greedy tokens from an 11-token prompt with max_seq_len=8", atol=0, hint="crop")


@points(0)
def test_works_with_your_own_earlier_labs(w):
    """Integration (no points: labs 1-3 score in their own labs): the logits still match on your own labs 1-3."""
    def probe(worker):
        model, wts = build(worker, dropout=0.1)
        idx = tokens(2, 10, 11)
        logits = expect_tensor(model.run(NO_GRAD, idx).out, "logits", (2, 10, 11))
        expect_close(logits, reference(wts, idx, H, L, gelu_flavour(logits, lambda a: reference(wts, idx, H, L, a))),
                     "TinyGPT logits", atol=1e-4)
    expect_own_chain(w, probe, "TinyGPT")
