"""Expected values, computed with torch's own fused operators under the labs' contracts.

Nothing here writes out an attention, a head split, a block or a GPT forward by hand: attention is
`F.scaled_dot_product_attention`, multi-head attention is `F.multi_head_attention_forward` (whose fused in-projection
has the contract's [queries | keys | values] layout, head h owning features h*d_head:(h+1)*d_head), a block is
torch's pre-norm `nn.TransformerEncoderLayer` and a stack of them `nn.TransformerEncoder`, loaded with the
contract's weights. Every one of those is rejected by the grader in a lab file, so copying from here earns nothing.
Known mistakes are reproduced the same way: a wrong scale is `scale=`, a wrong qkv order a permutation of the
weights, post-norm `norm_first=False`. Everything is computed in float64.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor
# torch's TransformerEncoderLayer names -> the lab 3 contract's names
BLOCK_NAMES = {"norm1": "ln1", "norm2": "ln2", "self_attn.in_proj": "attn.qkv", "self_attn.out_proj": "attn.proj",
               "linear1": "mlp.fc", "linear2": "mlp.proj"}


def causal(T: int, device=None) -> Tensor:
    """(T, T) bool, True where query i may attend to key j (j <= i)."""
    return torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))


def weights(q: Tensor, k: Tensor, mask=None, scale=None) -> Tensor:
    """Attention weights (..., Tq, Tk): torch's fused attention applied to the identity matrix."""
    eye = torch.eye(k.size(-2), dtype=q.dtype).expand(*k.shape[:-1], k.size(-2))
    return F.scaled_dot_product_attention(q, k, eye, attn_mask=mask, scale=scale)


def attention(q: Tensor, k: Tensor, v: Tensor, mask=None, scale=None) -> tuple:
    """(out, weights) of scaled dot-product attention; mask True = may attend."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale), weights(q, k, mask, scale)


def _double(wts: dict) -> dict:
    return {n: t.detach().to("cpu", torch.float64) if t is not None and t.is_floating_point() else t
            for n, t in wts.items()}


def mha(wts: dict, x: Tensor, n_heads: int, mask: bool = True, graph: bool = False) -> Tensor:
    """Causal multi-head self-attention of lab 2 from its weights (qkv.*, proj.*; biases optional); mask=False
    attends everywhere. graph=True: wts and x are float64 already, and autograd follows them."""
    if not graph:
        wts, x = _double(wts), x.to(torch.float64)
    D, T = x.size(-1), x.size(1)
    xt = x.transpose(0, 1)  # torch's multi-head attention takes (T, B, D)
    out, _ = F.multi_head_attention_forward(
        xt, xt, xt, D, n_heads, wts["qkv.weight"], wts.get("qkv.bias"), None, None, False, 0.0, wts["proj.weight"],
        wts.get("proj.bias"), training=False, need_weights=False, attn_mask=~causal(T) if mask else None)
    return out.transpose(0, 1)


def mlp(wts: dict, x: Tensor, approximate: str = "none") -> Tensor:
    wts, x = _double(wts), x.to(torch.float64)
    return F.linear(F.gelu(F.linear(x, wts["fc.weight"], wts.get("fc.bias")), approximate=approximate),
                    wts["proj.weight"], wts.get("proj.bias"))


def layer_norm(wts: dict, x: Tensor, eps: float = 1e-5) -> Tensor:
    wts, x = _double(wts), x.to(torch.float64)
    return F.layer_norm(x, (x.size(-1),), wts.get("weight"), wts.get("bias"), eps)


def _activation(approximate: str):
    return F.gelu if approximate == "none" else F.relu if approximate == "relu" else \
        functools.partial(F.gelu, approximate=approximate)


def block_state(wts: dict, prefix: str = "") -> dict:
    """Lab 3 weights (contract names) as a TransformerEncoderLayer state dict (a missing bias is zero)."""
    state = {}
    for theirs, ours in BLOCK_NAMES.items():
        for kind in ("weight", "bias"):
            key = f"{prefix}{theirs}_{kind}" if theirs.endswith("in_proj") else f"{prefix}{theirs}.{kind}"
            value = wts.get(f"{ours}.{kind}")
            state[key] = value if value is not None else torch.zeros(wts[f"{ours}.weight"].shape[0], dtype=torch.float64)
    return state


def _layer(D: int, n_heads: int, width: int, approximate: str, norm_first: bool = True) -> nn.Module:
    """torch's TransformerEncoderLayer shaped like lab 3's block (D wide, an MLP `width` wide), in float64; made
    under torch.device("meta") by its callers (no initialisation to throw away), then given the block's weights."""
    return nn.TransformerEncoderLayer(D, n_heads, width, dropout=0.0, activation=_activation(approximate),
                                      batch_first=True, norm_first=norm_first, dtype=torch.float64)


def block(wts: dict, x: Tensor, n_heads: int, approximate: str = "none", norm_first: bool = True,
          eps=(1e-5, 1e-5)) -> Tensor:
    """Lab 3's block from its weights: torch's TransformerEncoderLayer (pre-norm unless norm_first=False).
    approximate: "none" or "tanh" (the GELU), or "relu"; eps: ln1's and ln2's."""
    wts, x = _double(wts), x.to(torch.float64)
    T = x.size(1)
    width, D = wts["mlp.fc.weight"].shape
    layer = _Shell.of(("block", D, n_heads, width, approximate, norm_first),
                      lambda: _layer(D, n_heads, width, approximate, norm_first)).load(block_state(wts))
    layer.norm1.eps, layer.norm2.eps = (float(e) for e in eps)
    with torch.no_grad():
        return layer(x, src_mask=~causal(T), is_causal=True)


def _block_layer(wts: dict, n_heads: int, approximate: str, norm_first: bool, eps) -> nn.Module:
    """A layer of its own holding the block's weights as parameters (for gradients)."""
    width, D = wts["mlp.fc.weight"].shape
    with torch.device("meta"):
        layer = _layer(D, n_heads, width, approximate, norm_first)
    layer.load_state_dict(block_state(wts), assign=True)
    layer.norm1.eps, layer.norm2.eps = (float(e) for e in eps)
    return layer


def _gradients(out: Tensor, leaves: dict, grad_out: Tensor) -> dict:
    names = list(leaves)
    grads = torch.autograd.grad(out, [leaves[n] for n in names], grad_out.to(out.dtype), allow_unused=True)
    return {n: g if g is not None else torch.zeros_like(leaves[n]) for n, g in zip(names, grads)}


def mha_gradients(wts: dict, x: Tensor, n_heads: int, grad_out: Tensor) -> tuple:
    """(output, {name: d(out . grad_out)/d name} for every weight of wts and "x") of lab 2's attention, float64."""
    leaves = {n: t.detach().to("cpu", torch.float64).requires_grad_() for n, t in wts.items() if t is not None}
    leaves["x"] = x.detach().to(torch.float64).requires_grad_()
    with torch.enable_grad():
        out = mha({n: t for n, t in leaves.items() if n != "x"}, leaves["x"], n_heads, graph=True)
        return out.detach(), _gradients(out, leaves, grad_out)


def block_gradients(wts: dict, x: Tensor, n_heads: int, grad_out: Tensor, approximate: str = "none",
                    eps=(1e-5, 1e-5)) -> tuple:
    """(output, {contract name: gradient} for every weight of wts and "x") of lab 3's block, float64."""
    layer = _block_layer(_double(wts), n_heads, approximate, True, eps).train()  # no dropout: the layer has p=0
    theirs = {}
    for name, p in layer.named_parameters():
        base, _, kind = name.replace("_weight", ".weight").replace("_bias", ".bias").rpartition(".")
        theirs[f"{BLOCK_NAMES[base]}.{kind}"] = p
    leaves = {n: theirs[n] for n in wts if n in theirs}
    leaves["x"] = x.detach().to(torch.float64).requires_grad_()
    T = x.size(1)
    with torch.enable_grad():
        out = layer(leaves["x"], src_mask=~causal(T), is_causal=True)
        return out.detach(), _gradients(out, leaves, grad_out)


def gpt(wts: dict, idx: Tensor, n_heads: int, n_layers: int, approximate: str = "none") -> Tensor:
    """Lab 4's logits (B, T, vocab) from its weights."""
    return gpt_of(wts, n_heads, n_layers, approximate)(idx)


_BUILT = {}  # the last few forwards built, by the identity of their weights (kept alive here, so ids stay unique)


def gpt_of(wts: dict, n_heads: int, n_layers: int, approximate: str = "none"):
    """Lab 4's forward from its weights, as a function of idx: token plus position embeddings, torch's
    TransformerEncoder (the blocks, then ln_f as its final norm), then lm_head."""
    key = (n_heads, n_layers, approximate, *((n, id(t)) for n, t in wts.items()))
    if key not in _BUILT:
        if len(_BUILT) >= 8:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[key] = (_gpt_of(wts, n_heads, n_layers, approximate), wts)
    return _BUILT[key][0]


class _Shell:
    """One of torch's modules, made once per shape on the meta device and loaded with each call's weights (its
    tensors put in place, nothing copied) when that call runs: a module costs far more to build than a forward."""
    _made = {}

    @classmethod
    def of(cls, key: tuple, make) -> "_Shell":
        """The shell for `key` (everything its shape depends on); `make()` builds its module the first time."""
        if key not in cls._made:
            with torch.device("meta"):
                cls._made[key] = cls(make().eval())
        return cls._made[key]

    def __init__(self, module: nn.Module):
        self.module = module
        self.slots = {name: (module.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2])
                      for name, _ in module.named_parameters()}
        self.loaded = None

    def load(self, state: dict) -> nn.Module:
        """The module holding `state` ({parameter name: tensor}, every parameter), as load_state_dict(...,
        assign=True) would leave it."""
        if self.loaded is not state:
            if state.keys() != self.slots.keys():
                raise KeyError(f"weights for {sorted(self.slots.keys() ^ state.keys())[:3]} do not fit the module")
            for name, value in state.items():
                module, leaf = self.slots[name]
                module._parameters[leaf] = value if isinstance(value, nn.Parameter) else \
                    nn.Parameter(value, requires_grad=False)
            self.loaded = state
        return self.module


def _gpt_of(wts: dict, n_heads: int, n_layers: int, approximate: str):
    wts = _double(wts)
    D = wts["tok_emb.weight"].shape[1]
    state = {"norm.weight": wts["ln_f.weight"], "norm.bias": wts["ln_f.bias"]}
    for i in range(n_layers):
        blk = {n[len(f"blocks.{i}."):]: v for n, v in wts.items() if n.startswith(f"blocks.{i}.")}
        state.update(block_state(blk, f"layers.{i}."))
    state = {n: nn.Parameter(v, requires_grad=False) for n, v in state.items()}  # wrapped once, not at each load
    width = wts["blocks.0.mlp.fc.weight"].shape[0]
    stack = _Shell.of(("gpt", D, n_heads, width, n_layers, approximate), lambda: nn.TransformerEncoder(
        _layer(D, n_heads, width, approximate), n_layers, norm=nn.LayerNorm(D, dtype=torch.float64),
        enable_nested_tensor=False))

    def forward(idx: Tensor) -> Tensor:
        T = idx.size(1)
        x = F.embedding(idx, wts["tok_emb.weight"]) + wts["pos_emb.weight"][:T]
        with torch.no_grad():
            out = stack.load(state)(x, mask=~causal(T), is_causal=True)
            return F.linear(out, wts["lm_head.weight"], wts.get("lm_head.bias"))
    return forward


def next_token_loss(wts: dict, data: Tensor, seq_len: int, n_heads: int, n_layers: int, approximate="none") -> float:
    """Mean next-token cross-entropy over every window of `data`, from lab 4's weights."""
    return loss_of(gpt_of(wts, n_heads, n_layers, approximate), data, seq_len)


def loss_of(forward, data: Tensor, seq_len: int) -> float:
    """Mean next-token cross-entropy of `forward` (idx -> logits) over every window of `data`."""
    windows = data.unfold(0, seq_len + 1, 1)  # (N, seq_len + 1): every window, plus the token after it
    windows, counts = windows.unique(dim=0, return_counts=True)  # a repeating text has few distinct windows
    logits = forward(windows[:, :-1])
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1), reduction="none")
    losses = losses.view(len(windows), -1).mean(1)  # one per distinct window
    return float((losses * counts).sum() / counts.sum())


def greedy(wts: dict, idx: Tensor, steps: int, crop: int, n_heads: int, n_layers: int, approximate: str) -> Tensor:
    """Greedy continuation from lab 4's weights, feeding the last `crop` tokens each step."""
    return greedy_of(gpt_of(wts, n_heads, n_layers, approximate), idx, steps, crop)


def greedy_of(forward, idx: Tensor, steps: int, crop: int = None) -> Tensor:
    """Greedy continuation by `forward` (idx -> logits), feeding the last `crop` tokens (all when None) each step."""
    crop = crop or idx.size(1) + steps
    for _step in range(steps):
        nxt = forward(idx[:, -crop:])[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


# ---- lab 5: a Llama-style model ---------------------------------------------------------------------------------
# torch has RMSNorm (F.rms_norm) and attention; it has no rope or SwiGLU, so those two are the contract's formulas
# (rope as a complex multiplication). Grouped-query attention is torch's multi-head attention with wk's and wv's
# rows repeated for each query head of a group, and queries and keys turned by rope head by head in place: no head
# split is written out.
def rms_norm(weight: Tensor, x: Tensor, eps: float = 1e-5) -> Tensor:
    return F.rms_norm(x.to(torch.float64), (x.size(-1),), weight.detach().to(torch.float64), eps)


def swiglu(wts: dict, x: Tensor, act=F.silu) -> Tensor:
    """w2(act(w1 x) * w3 x) from SwiGLU's weights (w1, w2, w3): the gate and the value it gates come from one
    product with w1's and w3's rows stacked, as a gated unit (`F.glu`) takes its two halves."""
    wts, x = _double(wts), x.to(torch.float64)
    stacked = torch.stack([wts["w1.weight"], wts["w3.weight"]], dim=-3)  # (2, d_ff, D)
    gate, value = torch.einsum("...d,gfd->g...f", x, stacked).unbind(0)
    return torch.einsum("...f,df->...d", act(gate) * value, wts["w2.weight"])


def rope(x: Tensor, positions: Tensor, theta: float = 10000.0, halves: bool = False, rate: float = 2.0,
         sign: int = 1) -> Tensor:
    """The contract's rope in float64: adjacent pairs turned by position * theta ** (-2i / d). For diagnoses:
    halves=True pairs feature i with i + d/2; rate=1 uses theta ** (-i / d); sign=-1 turns the other way."""
    x, d = x.detach().to(torch.float64), x.size(-1)
    angles = sign * positions.to(torch.float64)[..., None] * theta ** (-rate * torch.arange(d // 2, dtype=torch.float64) / d)
    turn = torch.polar(torch.ones_like(angles), angles)
    if halves:
        z = torch.complex(x[..., :d // 2], x[..., d // 2:]) * turn
        return torch.cat([z.real, z.imag], -1)
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (d // 2, 2)).contiguous()) * turn).flatten(-2)


def _grouped(weight: Tensor, n_kv_heads: int, group: int, interleave: bool = True) -> Tensor:
    """wk's or wv's rows repeated so that query head h reads key/value head h // group (interleave=False: h % n_kv)."""
    heads = weight.unflatten(0, (n_kv_heads, -1))
    heads = heads.repeat_interleave(group, 0) if interleave else heads.repeat(group, 1, 1)
    return heads.flatten(0, 1)


def gqa(wts: dict, x: Tensor, n_heads: int, n_kv_heads: int, theta: float = 10000.0, positions: Tensor = None,
        mask: Tensor = None, rope_on=("q", "k"), interleave: bool = True, scale: float = None) -> Tensor:
    """Lab 5's grouped-query attention (wq, wk, wv, wo) on x (B, T, D); positions (T,) for rope (default 0..T-1);
    mask (T, T) True = may attend (default causal). For diagnoses: rope_on also "v" or fewer; interleave=False
    pairs query head h with key/value head h % n_kv_heads; scale multiplies the scores by scale * sqrt(d_head)."""
    wts, x = _double(wts), x.to(torch.float64)
    T, D = x.size(1), x.size(-1)
    d_head, group = D // n_heads, n_heads // n_kv_heads
    positions = torch.arange(T) if positions is None else positions
    turn = lambda t: rope(t.unflatten(-1, (n_heads, d_head)), positions[:, None], theta).flatten(-2)  # noqa: E731
    q = F.linear(x, wts["wq.weight"]) * (1.0 if scale is None else scale * d_head ** 0.5)
    k = F.linear(x, _grouped(wts["wk.weight"], n_kv_heads, group, interleave))
    v = F.linear(x, _grouped(wts["wv.weight"], n_kv_heads, group, interleave))
    q, k, v = (turn(t) if name in rope_on else t for name, t in zip("qkv", (q, k, v)))
    eye = torch.eye(D, dtype=torch.float64)
    out, _ = F.multi_head_attention_forward(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), D, n_heads, None, None, None, None, False, 0.0,
        wts["wo.weight"], None, training=False, need_weights=False,
        attn_mask=~(causal(T) if mask is None else mask), use_separate_proj_weight=True, q_proj_weight=eye,
        k_proj_weight=eye, v_proj_weight=eye)
    return out.transpose(0, 1)


def llama_block(wts: dict, x: Tensor, n_heads: int, n_kv_heads: int, positions=None, mask=None,
                post_norm: bool = False, norm2: str = "norm2", rope_on=("q", "k")) -> Tensor:
    """Lab 5's block from its weights (norm1, attn.*, norm2, ffn.*). For diagnoses: post_norm=True normalises after
    each residual add; norm2="norm1" uses norm1's weight for the feed-forward too."""
    attn = {n[5:]: t for n, t in wts.items() if n.startswith("attn.")}
    ffn = {n[4:]: t for n, t in wts.items() if n.startswith("ffn.")}
    x = x.to(torch.float64)
    if post_norm:
        x = rms_norm(wts["norm1.weight"], x + gqa(attn, x, n_heads, n_kv_heads, positions=positions, mask=mask))
        return rms_norm(wts[f"{norm2}.weight"], x + swiglu(ffn, x))
    x = x + gqa(attn, rms_norm(wts["norm1.weight"], x), n_heads, n_kv_heads, positions=positions, mask=mask,
                rope_on=rope_on)
    return x + swiglu(ffn, rms_norm(wts[f"{norm2}.weight"], x))


def llama_of(wts: dict, n_heads: int, n_kv_heads: int, n_layers: int):
    """Lab 5's forward from its weights, as a function of idx (and, for lab 6's diagnoses, of each token's position,
    a (T, T) mask, True = may attend, and which of q, k rope turns)."""
    wts = _double(wts)
    blocks = [{n[len(f"blocks.{i}."):]: t for n, t in wts.items() if n.startswith(f"blocks.{i}.")} for i in range(n_layers)]

    def forward(idx: Tensor, positions: Tensor = None, mask: Tensor = None, rope_on=("q", "k")) -> Tensor:
        x = F.embedding(idx, wts["tok_emb.weight"])
        for blk in blocks:
            x = llama_block(blk, x, n_heads, n_kv_heads, positions, mask, rope_on=rope_on)
        return F.linear(rms_norm(wts["norm.weight"], x), wts["lm_head.weight"])
    return forward


# ---- lab 6: a forward over a key/value cache, with weights that may change from call to call ----------------------
def gqa_step(wts: dict, x: Tensor, n_heads: int, n_kv_heads: int, past: tuple, start: int,
             theta: float = 10000.0) -> tuple:
    """Lab 5's grouped-query attention for the new positions start.. of x (B, T, D), whose queries see `past` (the
    earlier positions' keys and values as lab 6's cache holds them, rows repeated for each query head of a group,
    keys turned by rope; None before the first call) and their own keys up to themselves. Returns (out, past
    extended by the new positions)."""
    wts, x = _double(wts), x.to(torch.float64)
    T, D = x.size(1), x.size(-1)
    d_head, group = D // n_heads, n_heads // n_kv_heads
    positions = torch.arange(start, start + T)
    turn = lambda t: rope(t.unflatten(-1, (n_heads, d_head)), positions[:, None], theta).flatten(-2)  # noqa: E731
    q = turn(F.linear(x, wts["wq.weight"]))
    k = turn(F.linear(x, _grouped(wts["wk.weight"], n_kv_heads, group)))
    v = F.linear(x, _grouped(wts["wv.weight"], n_kv_heads, group))
    if past is not None:
        k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)
    seen = torch.arange(k.size(1))[None, :] <= positions[:, None]  # (T, start + T)
    eye = torch.eye(D, dtype=torch.float64)
    out, _ = F.multi_head_attention_forward(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), D, n_heads, None, None, None, None, False, 0.0,
        wts["wo.weight"], None, training=False, need_weights=False, attn_mask=~seen, use_separate_proj_weight=True,
        q_proj_weight=eye, k_proj_weight=eye, v_proj_weight=eye)
    return out.transpose(0, 1), (k, v)


def llama_steps(n_heads: int, n_kv_heads: int, n_layers: int):
    """Lab 6's cached forward as a function step(wts, idx, past, start) -> (logits of idx (B, T, vocab), past): the
    tokens idx sit at positions start.., computed with lab 5's weights `wts`, and each layer's queries see the
    keys and values `past` holds (what earlier calls computed, with the weights those calls had; None at first).
    With the same weights on every call, the steps give lab 5's full forward (llama_of)."""
    def step(wts: dict, idx: Tensor, past, start: int) -> tuple:
        wts = _double(wts)
        past = list(past) if past is not None else [None] * n_layers
        x = F.embedding(idx, wts["tok_emb.weight"])
        for i in range(n_layers):
            blk = {n[len(f"blocks.{i}."):]: t for n, t in wts.items() if n.startswith(f"blocks.{i}.")}
            attn = {n[5:]: t for n, t in blk.items() if n.startswith("attn.")}
            ffn = {n[4:]: t for n, t in blk.items() if n.startswith("ffn.")}
            out, past[i] = gqa_step(attn, rms_norm(blk["norm1.weight"], x), n_heads, n_kv_heads, past[i], start)
            x = x + out
            x = x + swiglu(ffn, rms_norm(blk["norm2.weight"], x))
        return F.linear(rms_norm(wts["norm.weight"], x), wts["lm_head.weight"]), past
    return step
