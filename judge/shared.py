"""What several labs' checkers share: the student's modules with weights the judge chooses, and the checks labs
have in common (causality, gradients, dropout, shortcuts, device discipline, the own-chain check).

Runs in the judge: the student's objects live in the worker, reached through judge/client.py; everything compared
here is a plain tensor decoded from an answer.
"""
import math

import torch

from judge.checks import CheckFailure, Skipped, fail
from judge.client import NO_GRAD, ContractMissing, Handle, On, Options, StudentError, Worker, WorkerGone, meta_message
from judge.compare import expect_close, expect_tensor, randn
from judge.static import Forbidden
from pack.labs import FILES, LABS, earlier as labs_before
from protocol.messages import Backward, Figure

Tensor = torch.Tensor
CONTRACT = "the lab's contract (module docstring) asks for it"


# ---- the student's modules, with weights the judge chooses ------------------------------------
def expect_params(h: Handle, want: dict, what: str, hint=None, optional=()):
    """The module has each parameter of `want` ({name: shape}); names in `optional` may be absent."""
    have = h.params
    for name, shape in want.items():
        if name not in have:
            if name in optional:
                continue
            fail(f"{what} has no parameter `{name}` (has: {', '.join(sorted(have)) or 'none'}); {CONTRACT}.", hint)
        if have[name][0] != tuple(shape):
            fail(f"{what}: `{name}` has shape {have[name][0]}, the contract gives {tuple(shape)}.", hint)


def owner_kinds(h: Handle, name: str) -> list:
    return h.modules.get(name.rsplit(".", 1)[0] if "." in name else "", ("", "", []))[2]


def fill(h: Handle, seed: int = 1234, style: str = "check") -> dict:
    """Judge-chosen values for every parameter of h, loaded into it; returns {name: value} (tied names share one).

    style "check": LayerNorm weights U(0.5, 1.5) and biases N(0, 0.3), so identity initialisation hides nothing;
    style "default": PyTorch's own initialisation (what a model trains from).
    """
    values = draw(h, seed, style)
    h.load(values)
    return values


def draw(h: Handle, seed: int = 1234, style: str = "check") -> dict:
    """fill's values for h's parameters, without loading them."""
    g = torch.Generator().manual_seed(seed)
    values, ties = {}, h.ties
    for name, (shape, dtype) in h.params.items():
        tied = next((values[other] for group in ties if name in group for other in group if other in values), None)
        if tied is not None:
            values[name] = tied
            continue
        kinds, leaf = owner_kinds(h, name), name.rsplit(".", 1)[-1]
        fan_in = shape[-1] if len(shape) > 1 else max(1, shape[0] if shape else 1)
        if "LayerNorm" in kinds and leaf == "weight":
            v = torch.rand(shape, generator=g) + 0.5 if style == "check" else torch.ones(shape)
        elif leaf == "bias":
            v = torch.randn(shape, generator=g) * 0.3 if style == "check" else torch.zeros(shape) \
                if "LayerNorm" in kinds else (torch.rand(shape, generator=g) * 2 - 1) / math.sqrt(fan_in)
        elif "Embedding" in kinds:
            v = torch.randn(shape, generator=g)
        elif len(shape) >= 2:
            v = (torch.rand(shape, generator=g) * 2 - 1) / math.sqrt(fan_in)
        else:
            v = torch.rand(shape, generator=g) + 0.5 if style == "check" else torch.ones(shape)
        values[name] = v
    return values


def zeroed(values: dict, *prefixes) -> dict:
    """A copy of values with every parameter under the given prefixes set to zero, under each of its names: a
    parameter the module also reaches by another name (an `nn.Sequential` of its own layers, tied weights) has one
    value object under all of them in fill's values, and is zeroed under all of them."""
    hit = {id(v) for n, v in values.items() if n.startswith(prefixes)}
    return {n: torch.zeros_like(v) if id(v) in hit else v for n, v in values.items()}


def sub(values: dict, prefix: str) -> dict:
    """The entries under `prefix.` with the prefix removed."""
    return {n[len(prefix) + 1:]: v for n, v in values.items() if n.startswith(prefix + ".")}


SAME_GELU = 1e-6  # below every tolerance a check compares with (1e-5 and up); the two GELUs differ by 4e-5 and up


def gelu_flavour(out: Tensor, oracle) -> str:
    """'none' or 'tanh': whichever GELU makes oracle(approximate) closest to the student's output. 'none' without
    building the tanh oracle when it already matches within SAME_GELU: any check then passes on it as on the other."""
    if not isinstance(out, Tensor) or out.device.type == "meta":
        return "none"
    err = {}
    for a in ("none", "tanh"):
        want = oracle(a)
        err[a] = float((want - out.to(want.dtype)).abs().max()) if want.shape == out.shape else float("inf")
        if err[a] <= SAME_GELU:
            return a
    return min(err, key=err.get)


def once(store: dict, w, make):
    """make(w), made once per worker: later calls get the same result, or raise the same failure (a training run
    that several checks read)."""
    if w not in store:
        try:
            store[w] = make(w)
        except BaseException as exc:  # noqa: B036
            store[w] = exc
    if isinstance(store[w], BaseException):
        raise store[w]
    return store[w]



class TrainingRun:
    """A training run in the worker, written once for labs 4 and 5: the student's lab 4 CharTokenizer on TEXT, a
    model from `build` (a subclass's: the student's model with the judge's weights), lab 4's `train` for STEPS
    steps, and the state read back. What each lab measures on it (the judge's own losses, greedy text) is its own.
    `of(w)` makes it once per worker; later checks read the same run, or get the same failure."""
    TEXT, STEPS, REPEAT = "hello transformer! ", 60, 20
    PROMPT, NEW_TOKENS = "hello tr", 40  # the greedy continuation after training
    hint = "train"  # the hint of a run that breaks the contract

    def build(self, w: Worker, vocab_size: int):
        """(handle, weights): the student's model for `vocab_size` with the judge's weights."""
        raise NotImplementedError

    def options(self) -> Options:
        """The grader's options for the `train` call (what to watch in self.model)."""
        return Options()

    def __init__(self, w: Worker):
        text = self.TEXT
        tok = w.new("lab4_gpt", "CharTokenizer", text)
        ids = tok.method("encode", text * self.REPEAT)
        if not (type(ids) is list and all(type(i) is int for i in ids) and len(ids) == len(text) * self.REPEAT):
            fail(f"CharTokenizer.encode must return a list of ints, one per character; got {str(ids)[:80]}.",
                 "tokenizer")
        self.tok, self.vocab = tok, {ch: ids[text.index(ch)] for ch in set(text)}
        self.chars = {i: ch for ch, i in self.vocab.items()}
        vocab_size = tok.get("vocab_size")
        if type(vocab_size) is not int or vocab_size < max(ids) + 1:
            fail(f"CharTokenizer.vocab_size must be an int above every id; got {vocab_size!r}.", "tokenizer")
        self.data, self.vocab_size = torch.tensor(ids, dtype=torch.long), vocab_size
        self.model, self.before = self.build(w, vocab_size)
        self.result = w.run(self.options(), ("lab4_gpt", "train"), self.model, self.data, steps=self.STEPS,
                            batch_size=16, lr=1e-2)
        self.model.method("eval")
        after = self.model.state()
        if type(after) is not dict:
            fail("the trained model's parameters could not be read.", self.hint)
        self.after = {n: after[n] for n in self.before if isinstance(after.get(n), torch.Tensor)
                      and after[n].shape == self.before[n].shape and after[n].device.type != "meta"}
        if len(self.after) != len(self.before):
            fail("the trained model does not report every parameter it was built with.", self.hint)
        losses = self.result.out
        if not isinstance(losses, (list, tuple)):
            fail(f"train must return a list of floats (one per step), got {type(losses).__name__}.", "train")
        if not all(type(x) in (int, float) for x in losses):
            fail("train must return plain numbers (use loss.item()).", "train")
        self.losses = [float(x) for x in losses]

    def prompt(self) -> Tensor:
        """PROMPT as (1, T) ids of the student's tokenizer."""
        return torch.tensor([[self.vocab[c] for c in self.PROMPT]], dtype=torch.long)

    def text_of(self, ids) -> str:
        return "".join(self.chars.get(int(i), "?") for i in ids)

    def expect_continuation(self, ours: Tensor, texts: list, hint) -> list:
        """The greedy continuation of PROMPT must be the text's own: first the judge's decoding of the trained
        weights (`ours`, (1, T) ids), then each (text, whose) the student's code produced. See expect_continuation."""
        want = (self.PROMPT + (self.TEXT * 10)[len(self.PROMPT):])[:len(self.PROMPT) + self.NEW_TOKENS]
        return expect_continuation(self.PROMPT, want, [(self.text_of(ours[0].tolist()), OURS), *texts],
                                   self.loss_after, hint)

    @classmethod
    def of(cls, w: Worker):
        return once(_RUNS.setdefault(cls, {}), w, cls)


_RUNS: dict = {}  # each TrainingRun subclass's runs, by worker


# ---- checks shared by several labs ------------------------------------------------------------
def expect_causal(fn, x: Tensor, what: str, positions=(0, 3, 6), hint="causal"):
    """For each t, changing inputs after position t must leave outputs 0..t unchanged (fn runs in the worker).
    `hint`: a key, or a callable that diagnoses from the first output (a wrong head layout leaks the future too)."""
    before = expect_tensor(fn(x), what)
    for t in positions:
        changed = x.clone()
        changed[:, t + 1:] = randn(*changed[:, t + 1:].shape, dtype=x.dtype) if x.is_floating_point() else \
            (changed[:, t + 1:] + 1) % (int(x.max()) + 1)
        after = expect_tensor(fn(changed), what, before.shape)
        expect_close(after[:, :t + 1], before[:, :t + 1],
                     f"{what}: changing only the tokens after position {t} moved the outputs at positions 0..{t}",
                     atol=1e-5, rtol=1e-5, hint=(lambda: hint(before)) if callable(hint) else hint)


def expect_own_chain(w: Worker, probe, what: str):
    """Run `probe(worker)` (it fails as a check fails) on the student's own earlier labs instead of the pack's
    stand-ins. Passes when it passes; when it fails there but passes on the stand-ins, fails naming the first earlier
    lab (from the latest back) whose own version breaks it. Skipped when there is nothing to compare."""
    from judge.runner import files_for
    earlier = labs_before(w.lab)
    if w.own_labs:
        raise Skipped("not needed: every check already ran on your own earlier labs (--own-labs)")
    missing = [FILES[lab] for lab in earlier if FILES[lab] not in w.submission]
    if missing:
        raise Skipped(f"not tried: this submission has no {', '.join(missing)}")

    def failure(worker):
        try:
            probe(worker)
        except (CheckFailure, StudentError, ContractMissing, WorkerGone) as exc:
            return exc
        finally:
            if worker is not w:
                worker.close()
        return None
    chain = lambda own: w.sibling(*files_for(w.lab, w.submission, own))  # noqa: E731
    first = failure(chain(earlier))
    if first is None:
        return
    if failure(w) is not None:
        raise Skipped("not tried: this lab fails on the pack's own earlier labs already (see the checks above)")
    culprit = next((lab for i, lab in reversed(list(enumerate(earlier))) if i and failure(chain(earlier[i:]))),
                   earlier[0])
    number, file = LABS[culprit].number, FILES[culprit]
    reason = str(first).splitlines()[0][:300]
    raise CheckFailure(f"{what} passes with the pack's own lab {number} but not with your {file}: fix lab {number} "
                       f"first (python grader.py {culprit}).\n  with your labs: {reason}", "chain", blame=culprit)


def expect_every_parameter_gets_a_gradient(h: Handle, x, what: str):
    """Backward from out * noise reaches every parameter (the gradients are computed in the worker, judged here)."""
    out = h.run(NO_GRAD, x).out
    shape = expect_tensor(out, f"{what} output").shape
    result = h.run(Options(backward=Backward(randn(*shape))), x)
    grads = result.grads
    if not (grads is not None and grads.connected):
        fail(f"{what}: the output is not connected to the parameters (no autograd graph): avoid .detach(), .data "
             "and torch.no_grad() in forward.", "grad")
    params = grads.params if type(grads.params) is dict else {}
    missing = [n for n in h.params if n not in params and not any(n in g for g in h.ties)]
    missing += [n for n, g in params.items() if not (isinstance(g, Tensor) and g.device.type != "meta"
                                                     and bool(g.abs().sum() > 0))]
    if missing:
        fail(f"{what}: these parameters received no gradient: {', '.join(sorted(set(missing)))}.", "grad")
    return result


def expect_no_shortcuts(w: Worker, run, module: Handle = None):
    """No built-in attention module in the tree, and none reached while `run()` runs under the worker's runtime
    guard (best effort: the static scan of the source, in the judge, is what rules)."""
    found = [f"{name or 'model'} ({cls})" for name, (cls, _, kinds) in (module.modules if module else {}).items()
             if "forbidden" in kinds]
    if found:
        raise Forbidden("built-in attention is not allowed here: " + ", ".join(found))
    try:
        run()
    except StudentError as exc:
        if not exc.shortcut:
            raise
    if w.hits:
        raise Forbidden(f"the code called torch's built-in `{w.hits[0]}`")


def device_error(exc: StudentError) -> bool:
    """The error is about devices (tensors on two of them), not a plain bug nor the meta device's lack of values."""
    return exc.type == "DeviceMixError" or exc.type in ("RuntimeError", "NotImplementedError") and not meta_message(
        exc) and any(word in exc.message.lower() for word in ("device", "meta", "cuda", "cpu"))


def expect_dropout_only_in_training(h: Handle, x: Tensor, what: str):
    """With dropout=0.5, two seeds give different outputs in training mode and the same output in eval mode."""
    for mode, random in (("train", True), ("eval", False)):
        h.method(mode)
        first, second = (expect_tensor(h.run(Options(no_grad=True, seed=seed), x).out, f"{what} output")
                         for seed in (1, 2))
        if torch.equal(first, second) == random:
            fail(f"{what} in {mode} mode gave {'the same output' if random else 'different outputs'} under two seeds: "
                 + ("dropout is not applied." if random else "dropout must be off in eval mode."),
                 "dropout_train" if random else "dropout")


def expect_dropout_follows_p(make, x: Tensor, what: str):
    """`dropout` is the caller's: make(**kwargs) builds the student's module (with the judge's weights, the same for
    every p). Left at its default and at 0.0 nothing is dropped in training mode; in training mode p=0.9 moves the
    output further from the eval-mode output than p=0.1 does."""
    for kwargs in ({}, {"dropout": 0.0}):
        h = make(**kwargs)
        h.method("train")
        first, second = (expect_tensor(h.run(Options(no_grad=True, seed=seed), x).out, f"{what} output")
                         for seed in (1, 2))
        if not torch.equal(first, second):
            given = "with dropout left at its default" if not kwargs else "with dropout=0.0"
            fail(f"{what} {given} gave different outputs under two seeds in training mode: with p = 0 nothing may "
                 "be dropped.", "dropout_rate")
    moved = {}
    for p in (0.1, 0.9):
        h = make(dropout=p)
        h.method("eval")
        still = expect_tensor(h.run(NO_GRAD, x).out, f"{what} output").detach().to("cpu", torch.float64)
        h.method("train")
        runs = [expect_tensor(h.run(Options(no_grad=True, seed=seed), x).out, f"{what} output", still.shape)
                for seed in (1, 2, 3)]
        moved[p] = sum(float((r.detach().to("cpu", torch.float64) - still).abs().mean()) for r in runs) / len(runs)
    if not moved[0.9] > 2 * moved[0.1]:
        fail(f"{what} in training mode: dropout=0.9 moved the output by {moved[0.9]:.3g} on average, dropout=0.1 by "
             f"{moved[0.1]:.3g}: the probability used must be the `dropout` given.", "dropout_rate")


def expect_device_discipline(w: Worker, h: Handle, example: Tensor, what: str):
    """forward on another device (CUDA when checking there, else meta) with one device per op."""
    target = "cuda" if w.device == "cuda" else "meta"
    h.to(target)
    try:
        out = h.run(Options(device_guard=True, no_grad=True), On(example, target)).out
    except StudentError as exc:
        if device_error(exc):
            fail(f"{what} failed with the module and its input on {target}: {exc.message}", "device")
        raise
    out = expect_tensor(out, f"{what} output")
    if not getattr(out, "remote_device", "").startswith(target):
        fail(f"{what}: input on {target}, output on {getattr(out, 'remote_device', '?')}.", "device")



OURS = "the trained weights (the grader's own greedy decoding)"


def expect_continuation(prompt: str, want: str, texts: list, loss_after: float, hint) -> list:
    """Greedy text after training (labs 4 and 5): each (text, whose) of `texts` must be `want`, the judge's own
    decoding of the trained weights first (when the weights are wrong, the training is to blame, not the sampler).
    `hint(at, whose)` names the mistake. Returns the sample as a figure; a failure shows the text it is about,
    labelled with whose it is, and says what the texts before it (the trained weights' own) did."""
    shown = [Figure("text", label="greedy sample", text=str(texts[-1][0]))]
    for text, whose in texts:
        text = str(text)
        if text != want:
            at = next((i for i, (a, b) in enumerate(zip(text, want)) if a != b), min(len(text), len(want)))
            if whose == OURS:
                why = (f"the trained weights do not continue the text yet (loss after training: {loss_after:.3f}, "
                       "by the grader's own computation): training left them short of the pattern")
            else:
                why = (f"the grader's own greedy decoding of the same trained weights continues it exactly, so "
                       f"training worked; {whose} decoded them differently")
            fail(f"greedy continuation of {prompt!r} by {whose} went wrong at character {at}:\n  expected {want!r}\n"
                 f"  got      {text[:80]!r}\n{why}.", hint(at, whose),
                 figures=[Figure("text", label=f"greedy text by {whose}", text=text)])
    return shown
