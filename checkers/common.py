"""Shared helpers for every checker: the lab registry, hints, comparisons and the checks labs share.

This runs in the judge, which never imports student code: the student's objects live in the worker and are
reached through checkers/client.py, and everything compared here is a plain tensor decoded from the worker's
answer. Expected values come from checkers/oracles.py (torch's fused operators, from weights the judge chose).
"""
import math

import torch

from checkers.client import ContractMissing, Handle, On, StudentError, Worker, WorkerGone
from checkers.oracles import causal  # noqa: F401  (the checkers' shared causal mask)
from checkers.static import Forbidden
from grading.labs import FILES, LABS  # LABS: lab -> (module, title), for the checkers and the judge

Tensor = torch.Tensor
CONTRACT = "the lab's contract (module docstring) asks for it"


# ---- hints: keyed by the mistake a check detects; (first hint, a second, deeper one) ---------
HINTS = {
    "scale": ("Divide the scores by sqrt(d_k), where d_k = q.size(-1).",
              "q @ k^T is a sum of d_k products, so its spread grows like sqrt(d_k); without the scale the "
              "softmax saturates to one-hot rows and gradients vanish."),
    "mask": ("Apply the mask to the scores before the softmax: scores.masked_fill(~mask, float('-inf')).",
             "-inf becomes exactly 0 after exp(), so hidden keys get zero weight and the row still sums to 1. "
             "Zeroing weights after the softmax leaves rows that no longer sum to 1. True in the mask means "
             "'may attend'."),
    "softmax": ("Take the softmax over the last dimension (the keys): torch.softmax(scores, dim=-1).",
                "Each query's row of weights is a probability distribution over the keys it can see."),
    "overflow": ("Use torch.softmax (it subtracts each row's maximum first): exp() of scores in the hundreds "
                 "overflows to inf, and inf / inf is NaN.",
                 "softmax(s) equals softmax(s - max(s)) row by row, and after subtracting the maximum every exp() is "
                 "at most 1."),
    "causal": ("Token t may only look at tokens 0..t: build the mask with torch.tril and apply it in every head.",
               "If an output changes when a later token changes, information is flowing backwards in time."),
    "heads": ("Split q, k and v as (B, T, n_heads, d_head) and transpose to (B, n_heads, T, d_head); merge with "
              "transpose(1, 2).contiguous().view(B, T, D).",
              "qkv's output is [queries | keys | values], each D wide, and head h owns features "
              "h*d_head:(h+1)*d_head of each. A view to (B, n_heads, T, d_head) without the transpose mixes "
              "time steps into heads."),
    "order": ("qkv's output is [queries | keys | values], each D wide: split it in that order (queries first).",
              "The checker recomputes attention from your own qkv weights under the contract's layout; with another "
              "order, queries and keys swap roles."),
    "dropout": ("Dropout must be off in eval mode: use self.dropout (an nn.Dropout) or F.dropout(x, p, "
                "training=self.training).",
                "F.dropout defaults to training=True: called without it, it drops values even after model.eval(), "
                "so two identical calls give different outputs."),
    "dropout_train": ("Pass `dropout` on to nn.Dropout and apply it in forward (to the attention weights or the "
                      "output): in training mode it must drop values.",
                      "nn.Dropout is active after module.train() and off after module.eval(), with no code of yours."),
    "append": ("generate returns the prompt followed by the new tokens: append each new token to idx along the "
               "time dimension (torch.cat) and return the whole sequence.",
               "The output has shape (B, T + max_new_tokens)."),
    "batch_random": ("get_batch picks a random start for each window (torch.randint), from 0 to len(data) - seq_len - 1.",
                     "With fixed starts the model only ever sees the same windows and cannot learn the rest of the "
                     "text."),
    "proj": ("After merging the heads, apply self.proj to the result.",
             "The output projection lets heads' results mix; it is part of the contract."),
    "mlp": ("MLP: self.fc (D -> 4D), then GELU, then self.proj (4D -> D).",
            "Both the exact GELU and the tanh approximation are accepted; ReLU is not."),
    "prenorm": ("Pre-norm: x = x + attn(ln1(x)), then x = x + mlp(ln2(x)); ln1 feeds attention, ln2 feeds the MLP.",
                "Post-norm (LayerNorm after the residual add) was the original design; pre-norm keeps the residual "
                "stream untouched, which trains more stably in deep stacks."),
    "residual": ("Add each sub-layer's output back onto its input: x = x + sublayer(norm(x)).",
                 "With the sub-layers' output projections zeroed, a block with residuals is the identity, and "
                 "its gradient reaches x unchanged."),
    "grad": ("Every parameter must be used in forward so that it receives a gradient.",
             "A layer created in __init__ but skipped in forward (or a tensor detached with .detach() / "
             ".data) leaves parameters without gradients."),
    "device": ("Create tensors inside forward on the input's device: torch.arange(T, device=x.device), "
               "causal_mask(T, device=x.device).",
               "A tensor built on the CPU inside forward breaks as soon as the model runs on a GPU. Registered "
               "buffers (self.register_buffer) move with the module."),
    "gpt": ("forward: tok_emb(idx) + pos_emb(positions 0..T-1), the blocks in order, ln_f, then lm_head.",
            "Forgetting ln_f or the position embedding changes the logits; the checker recomputes them from "
            "your own parameters."),
    "shift": ("Targets are the inputs shifted by one: x = data[i:i+T], y = data[i+1:i+T+1].",
              "Without the shift the model learns to copy the current token: its loss falls, but it cannot "
              "predict the next one."),
    "train": ("train: AdamW on model.parameters(); each step get_batch, cross-entropy on (B*T, vocab) logits, "
              "zero_grad, backward, step, and log loss.item().",
              "The checker re-evaluates the next-token loss itself before and after training and compares it "
              "with the losses you logged."),
    "crop": ("In generate, feed only the last max_seq_len tokens: idx[:, -self.max_seq_len:].",
             "Position embeddings exist only for max_seq_len positions; crop the context each step so "
             "generation can continue past it."),
    "sampling": ("Divide the last logits by temperature, keep the top_k largest (others -inf), softmax, "
                 "torch.multinomial, then append.",
                 "With top_k=1 sampling must be greedy: always the most likely next token."),
    "temperature": ("In generate, divide the last position's logits by temperature before the softmax: "
                    "logits[:, -1, :] / temperature.",
                    "temperature < 1 sharpens the distribution, > 1 flattens it, and 1.0 leaves it as it is; "
                    "multiplying does the opposite."),
    "options": ("sample must pass max_new_tokens, temperature and top_k on to model.generate.",
                "A default value in sample's own signature is only a default: forward what the caller gave."),
    "zero_grad": ("Clear the gradients every step: optimizer.zero_grad() before (or right after) loss.backward()'s "
                  "step.",
                  "loss.backward() adds into .grad; without zero_grad each step's update also carries every earlier "
                  "step's gradient."),
    "train_args": ("train must honour its arguments: steps, batch_size and seq_len for get_batch, lr for the "
                   "optimizer.",
                   "Hard-coded values pass the default run but not a caller who asks for something else."),
    # lab 5
    "rms_sqrt": ("RMSNorm divides by the root of the mean square: x / sqrt(mean(x**2, dim=-1, keepdim=True) + eps), "
                 "or x * torch.rsqrt(...).",
                 "Without the square root the output scales like 1/|x| instead of being scale-free."),
    "rms_dim": ("Take the mean of x**2 over the last dimension (the features), with keepdim=True.",
                "Each token is normalised on its own: mean over dim=-1, never over the batch or time."),
    "rms_center": ("RMSNorm does not subtract the mean (that is LayerNorm): x / sqrt(mean(x**2) + eps) * weight.",
                   "Dropping the centring saves a reduction per token; on inputs whose mean is not zero the two differ."),
    "rms_eps": ("eps goes inside the square root, and RMSNorm must use the eps it was given: "
                "sqrt(mean(x**2) + self.eps).", "With small inputs, a different or misplaced eps changes the output."),
    "rms_weight": ("Multiply the normalised x by self.weight.", "The gain is RMSNorm's only parameter."),
    "rms_float32": ("Compute RMSNorm in float32 (x.float()) and cast the result back with .to(x.dtype).",
                    "float16's largest value is 65504: squares of values near 300 overflow to inf in float16 itself."),
    "swiglu": ("SwiGLU: self.w2(F.silu(self.w1(x)) * self.w3(x)), with no biases.", ""),
    "swiglu_gate": ("silu goes on w1's output (the gate), and w3's output is what it multiplies: "
                    "w2(silu(w1(x)) * w3(x)).", "Swapping w1 and w3 gives another function of the same weights."),
    "swiglu_act": ("The gate's activation is SiLU (F.silu, x * sigmoid(x)), not GELU, ReLU or a plain sigmoid.", ""),
    "rope": ("rope: for each adjacent pair (x[..., 2i], x[..., 2i+1]) at position p, turn by p * theta ** (-2i / d): "
             "(a cos - b sin, a sin + b cos).", "Print rope(x, positions) for d=2 and a single position to see one rotation."),
    "rope_pairs": ("Pair adjacent features, (x[..., 0::2], x[..., 1::2]), and put each turned pair back side by side "
                   "(torch.stack(..., dim=-1).flatten(-2)).",
                   "Pairing feature i with i + d/2 is another convention (GPT-NeoX's); this lab's contract is "
                   "RoFormer's adjacent pairs."),
    "rope_freq": ("Pair i turns at theta ** (-2i / d) = 1 / theta ** (torch.arange(0, d, 2) / d), with the theta "
                  "given.", "The first pair turns fastest (one radian per position) and the last slowest."),
    "rope_rotation": ("A rotation by angle a maps (a0, a1) to (a0 cos - a1 sin, a0 sin + a1 cos): check both signs.",
                      "A true rotation keeps lengths, and q . k after rotating both then depends only on the distance "
                      "between their positions."),
    "rope_positions": ("Use the positions you are given: angles = positions[..., None] * freqs.", ""),
    "gqa": ("GQAttention: q (B, n_heads, T, d_head), k and v (B, n_kv_heads, T, d_head); rope on q and k; repeat each "
            "key/value head for its group; causal attention with lab 1; merge; wo.", ""),
    "gqa_order": ("Query head h reads key/value head h // (n_heads // n_kv_heads): repeat each key/value head in place "
                  "with k.repeat_interleave(group, dim=1), not k.repeat(1, group, 1, 1).",
                  "repeat tiles the whole set of heads (0, 1, 0, 1), so head 1 would read key/value head 1 instead of 0."),
    "rope_values": ("Apply rope to queries and keys only, never to values.",
                    "Positions enter through the scores q . k; values carry content."),
    "rope_qk": ("Apply rope to both queries and keys (after the head split, over d_head).",
                "Turning only one of them makes scores depend on absolute positions."),
    "llama": ("LlamaGPT: tok_emb, the blocks (x = x + attn(norm1(x)); x = x + ffn(norm2(x))), norm, lm_head; no "
              "biases and no position table.", ""),
    "llama_train": ("If the earlier lab 5 checks pass, the model trains: look for a forward that changes between calls or "
                    "parameters left out of the module tree (a plain list instead of nn.ModuleList).", ""),
    # lab 6
    "cache": ("A cached step: positions start_pos..start_pos+T-1 for rope, append the new keys and values, then "
              "attend over everything cached.", "Compare forward(idx, cache) step by step with forward(idx) on the whole "
              "sequence: the last logits must match."),
    "cache_update": ("KVCache.update concatenates along dim=2 (time) per layer and returns the layer's whole keys and "
                     "values; length is layer 0's time size.", ""),
    "cache_stale": ("Each KVCache needs lists of its own (made in __init__), and generate_cached a fresh KVCache per call.",
                    "A class attribute or a module-level cache carries one generation's keys into the next."),
    "cache_unread": ("The new token's query must attend over the cache's keys and values (what update returns), not "
                     "only its own.", "Write the keys into the cache and read them back in the same step."),
    "cache_self": ("Append the new keys and values to the cache before attending: the newest token sees itself.", ""),
    "cache_off_by_one": ("A token fed at start_pos sits at position start_pos: rope uses torch.arange(start_pos, "
                         "start_pos + T), and generate_cached feeds the newest token at start_pos = tokens so far - 1.", ""),
    "cache_positions": ("Rotate queries and keys at their real positions, start_pos + 0..T-1, not from 0 on each call.",
                        "rope's angles come from positions: without start_pos every step looks like position 0."),
    "cache_recompute": ("After the prompt, pass only the newest token (idx[:, -1:]) to forward, with the cache.",
                        "Recomputing the whole sequence each step costs O(T) per token; the cache makes it O(1) in the "
                        "model's matmuls."),
    "cache_mask": ("The mask for T new tokens at start_pos is (T, start_pos + T): query i may see positions "
                   "0..start_pos+i.", "causal_mask(T) only fits when start_pos is 0; with no mask a chunk's early tokens "
                   "see its later ones."),
    "tokenizer": ("One id per distinct character: decode(encode(s)) must give s back.",
                  "Sort the set of characters so ids are stable between runs."),
    "shape": ("Check the shapes against the contract: out is (..., Tq, d_v) and weights (..., Tq, Tk); return the "
              "tuple (out, weights).",
              "Print x.shape after each step; q @ k.transpose(-2, -1) is (..., Tq, Tk), and (..., Tq, Tk) @ v gives "
              "(..., Tq, d_v)."),
    "todo": ("Replace the `raise NotImplementedError` under each TODO with your code.",
             "The TODO comment says what to write; the module docstring gives the exact contract."),
    "earlier": ("This lab calls your code from an earlier lab: grade that lab first and fix it.", ""),
    "chain": ("Fix the earlier lab named above first; this lab's own points do not depend on it.",
              "Each lab is graded with the pack's own version of the labs before it, so its points are its own; this "
              "check then runs your whole chain, the way your code will really run."),
    "standalone": ("Import from an earlier lab only the names its contract (module docstring) defines.",
                   "Each lab is graded with the pack's own version of the labs before it, which has exactly what their "
                   "contracts define and nothing else."),
    "crash": ("Your code raised an error: its message says what went wrong, and the lines of your file it went "
              "through are listed when there are any.",
              "Run `python grader.py labN --verbose` for the full traceback, or call the function yourself with small "
              "tensors and print shapes."),
    "slow": ("A check ran past its time limit: look for a loop that never ends or far more work than the lab needs.", ""),
    "memory": ("Your code asked for far more memory than the lab needs: look at the sizes of the tensors you create.", ""),
    "exit": ("Do not call sys.exit(), exit() or os._exit() in lab code: the grader needs the process to finish.", ""),
    "syntax": ("Fix the syntax error at the line shown, then run the grader again.", ""),
    "shortcut": ("Write the attention maths yourself: built-in attention functions and modules are not allowed.", ""),
}



class CheckFailure(AssertionError):
    """A check's verdict: what was expected, what came back, which mistake it points at, and (`blame`) the earlier
    lab at fault when it is not this one."""

    def __init__(self, message: str, hint: str = None, blame: str = None):
        super().__init__(message)
        self.hint, self.blame = hint, blame


class Skipped(Exception):
    """The check does not apply to this submission; the message says why (it neither passes nor fails)."""


def fail(message: str, hint=None, fallback=None):
    """Fail the check; `hint` is a HINTS key, or a callable returning one (run only on failure, to diagnose). A
    diagnosis that raises or finds nothing gives `fallback`: the verdict never depends on it."""
    if callable(hint):
        try:
            hint = hint()
        except Exception:
            hint = None
    raise CheckFailure(message, hint if hint in HINTS else fallback)


def points(n: int, hidden: bool = False):
    """Mark a check with the points it is worth (the grader reads them before any worker starts). A hidden check
    is held back for the submission: the student release leaves it out (tools/release.py)."""
    def mark(fn):
        fn.points, fn.hidden = n, hidden
        return fn
    return mark


FIGURES = []  # pictures a check attaches to its result (heatmaps, loss curves, samples); the judge sends them


def figure(kind: str, **data):
    FIGURES.append({"kind": kind, **data})


def grid(t) -> list:
    """The first (T, T) matrix of a (..., T, T) tensor, as rounded floats."""
    t = t.detach().to("cpu", torch.float64)
    return [[round(float(v), 3) for v in row] for row in t.reshape(-1, t.size(-2), t.size(-1))[0].tolist()]


def heatmap_if_failing(got, want, title: str):
    """Attach the student's attention weights beside the expected ones (call when a check is about to fail)."""
    if isinstance(got, Tensor) and got.dim() >= 2 and got.shape[-2:] == want.shape[-2:] and got.device.type != "meta":
        figure("heatmap", title=title, got=grid(got), want=grid(want))


def randn(*shape, dtype=None) -> Tensor:
    """Seeded normal noise (the judge seeds each check)."""
    return torch.randn(*shape, dtype=dtype)


# ---- comparisons ---------------------------------------------------------------------------
SHOWN = 3  # values of a row shown around the first mismatch


def _window(n: int, at: int) -> int:
    """Where a window of SHOWN values around position `at` of a row of n starts."""
    return max(0, min(at - 1, n - SHOWN))


def _fmt(t: Tensor, start: int = 0) -> str:
    flat = t.reshape(-1)
    values = [f"{v:.4f}" for v in flat[start:start + SHOWN].tolist()]
    return ("[..., " if start else "[") + ", ".join(values) + (", ...]" if start + SHOWN < flat.numel() else "]")


def matches(want: Tensor, got) -> bool:
    """A diagnosis's test: got has want's shape and every value within 1e-4 of it."""
    return isinstance(got, Tensor) and got.device.type != "meta" and want.shape == got.shape and \
        bool(((want - got.to(want.dtype)).abs() < 1e-4).all())


def first_match(variants: dict, x: Tensor, got, again=None, default: str = None) -> str:
    """Diagnose `got`: the first hint one of whose variants (functions of x) reproduces it; "dropout" when `again()`
    (the same forward once more) gives something else; `default` otherwise."""
    for hint, fns in variants.items():
        if any(matches(fn(x), got) for fn in fns):
            return hint
    if again is not None and not torch.equal(again(), got):
        return "dropout"
    return default


def expect_tensor(actual, what: str, shape=None, hint=None) -> Tensor:
    if not isinstance(actual, Tensor):
        fail(f"{what}: expected a torch.Tensor, got {getattr(actual, 'type_name', type(actual).__name__)}.", hint)
    if shape is not None and tuple(actual.shape) != tuple(shape):
        fail(f"{what}: expected shape {tuple(shape)}, got {tuple(actual.shape)}.", hint)
    return actual


def expect_close(actual, expected: Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-4, hint=None,
                 fallback=None):
    """Fail with the max abs error and the values around the first mismatch unless
    |actual - expected| <= atol + rtol*|expected|. `hint` may diagnose (see fail); `fallback` when it cannot."""
    expect_tensor(actual, what, expected.shape, hint)
    if actual.device.type == "meta":
        fail(f"{what}: came back on the meta device, with no values.", hint)
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    err = (a - e).abs()
    finite = ~(a.isnan() | e.isnan())
    bad = (err > atol + rtol * e.abs()) | (a.isnan() != e.isnan()) | (err.isinf() & finite)
    if not bool(bad.any()):
        return
    index = tuple(int(i) for i in bad.nonzero()[0])
    max_err = float(err[finite].max()) if bool(finite.any()) else float("nan")
    where = f" at index {list(index)}" if index else ""
    nans = int((a.isnan() & ~e.isnan()).sum())
    if nans:  # the largest error among the finite values would hide the real problem
        message = f"{what}: {nans} value(s) came back NaN where the reference has numbers; first mismatch{where}."
    else:
        message = (f"{what}: mismatch with the reference, max abs error {max_err:.3g} "
                   f"(tolerance {atol:g} + {rtol:g}*|expected|); first mismatch{where}.")
    if a.dim() >= 1:
        row, start = index[:-1], _window(a.shape[-1], index[-1])
        where = f"row {list(row)}" + (f" from column {start}" if start else "")
        message += f"\n  expected {where}: {_fmt(e[row], start)}\n  got      {where}: {_fmt(a[row], start)}"
    fail(message, hint, fallback)


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
    h.load(values)
    return values


def zeroed(values: dict, *prefixes) -> dict:
    """A copy of values with every parameter under the given prefixes set to zero."""
    return {n: torch.zeros_like(v) if n.startswith(prefixes) else v for n, v in values.items()}


def sub(values: dict, prefix: str) -> dict:
    """The entries under `prefix.` with the prefix removed."""
    return {n[len(prefix) + 1:]: v for n, v in values.items() if n.startswith(prefix + ".")}


def gelu_flavour(out: Tensor, oracle) -> str:
    """'none' or 'tanh': whichever GELU makes oracle(approximate) closest to the student's output."""
    if not isinstance(out, Tensor) or out.device.type == "meta":
        return "none"
    err = {}
    for a in ("none", "tanh"):
        want = oracle(a)
        err[a] = float((want - out.to(want.dtype)).abs().max()) if want.shape == out.shape else float("inf")
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
    from checkers.standins import files_for
    earlier = list(LABS)[:list(LABS).index(w.lab)]
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
    number, file = culprit[3], FILES[culprit]
    reason = str(first).splitlines()[0][:300]
    raise CheckFailure(f"{what} passes with the pack's own lab {number} but not with your {file}: fix lab {number} "
                       f"first (python grader.py {culprit}).\n  with your labs: {reason}", "chain", blame=culprit)


def expect_every_parameter_gets_a_gradient(h: Handle, x, what: str):
    """Backward from out * noise reaches every parameter (the gradients are computed in the worker, judged here)."""
    out = h(x, no_grad=True)
    shape = expect_tensor(out, f"{what} output").shape
    result = h(x, backward={"grad_out": randn(*shape), "index": None})
    grads = result.get("grads") if type(result) is dict else None
    if not (type(grads) is dict and grads.get("connected") is True):
        fail(f"{what}: the output is not connected to the parameters (no autograd graph): avoid .detach(), .data "
             "and torch.no_grad() in forward.", "grad")
    params = grads.get("params") if type(grads.get("params")) is dict else {}
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
    """The error is about devices (tensors on two of them, or an op the meta device cannot run), not a plain bug."""
    return exc.type == "DeviceMixError" or exc.type in ("RuntimeError", "NotImplementedError") and any(
        word in exc.message.lower() for word in ("device", "meta", "cuda", "cpu"))


def expect_dropout_only_in_training(h: Handle, x: Tensor, what: str):
    """With dropout=0.5, two seeds give different outputs in training mode and the same output in eval mode."""
    for mode, random in (("train", True), ("eval", False)):
        h.method(mode)
        first, second = (expect_tensor(h(x, no_grad=True, seed=seed), f"{what} output") for seed in (1, 2))
        if torch.equal(first, second) == random:
            fail(f"{what} in {mode} mode gave {'the same output' if random else 'different outputs'} under two seeds: "
                 + ("dropout is not applied." if random else "dropout must be off in eval mode."),
                 "dropout_train" if random else "dropout")


def expect_device_discipline(w: Worker, h: Handle, example: Tensor, what: str):
    """forward on another device (CUDA when checking there, else meta) with one device per op."""
    target = "cuda" if w.device == "cuda" else "meta"
    h.to(target)
    try:
        out = h(On(example, target), device_guard=True, no_grad=True)
    except StudentError as exc:
        if device_error(exc):
            fail(f"{what} failed with the module and its input on {target}: {exc.message}", "device")
        raise
    out = expect_tensor(out, f"{what} output")
    if not getattr(out, "remote_device", "").startswith(target):
        fail(f"{what}: input on {target}, output on {getattr(out, 'remote_device', '?')}.", "device")

