"""Buggy variants of the reference solutions: each is one classic mistake, the checks that must catch it,
and the hint its failure must name. Together they make every check of every lab fail at least once."""
from dataclasses import dataclass


@dataclass
class Mutant:
    id: str
    lab: str
    edits: list  # (old, new) replacements in the lab's solution file
    fails: set  # checks that must fail
    hint: str = None  # the hint key at least one of those failures must carry
    status: str = "failed"
    seen_from: str = None  # a later lab to grade instead: the mistake is in `lab`, the failures in that lab's checks


L1_SCORES = "scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., Tq, Tk)"
L1_MASK = 'scores = scores.masked_fill(~mask, float("-inf"))  # hidden keys get zero weight'
L1_SOFTMAX = "weights = torch.softmax(scores, dim=-1)  # (..., Tq, Tk), rows sum to 1"
# batch dimensions flattened with .view: fine on contiguous inputs, an error on a transposed view
L1_VIEW_SCORES = ("scores = (q.view(-1, q.size(-2), d_k) @ k.view(-1, k.size(-2), d_k).transpose(1, 2))"
                  ".view(*q.shape[:-1], k.size(-2)) / math.sqrt(d_k)")
L2_VIEW = "{0} = {0}.view(B, T, self.n_heads, self.d_head).transpose(1, 2)"
L2_MERGE = "out = out.transpose(1, 2).contiguous().view(B, T, D)"
L2_RETURN = "return self.dropout(self.proj(out))"
L2_SPLIT_LINE = "q, k, v = self.qkv(x).split(D, dim=-1)  # each (B, T, D)"
L3_ATTN = "x = x + self.attn(self.ln1(x))"
L3_MLP = "x = x + self.dropout(self.mlp(self.ln2(x)))"
# a LayerNorm written out, as a subclass of nn.LayerNorm (its weight, bias and eps), its normalisation given
L3_LN_CLASS = ("class LN(nn.LayerNorm):\n    def forward(self, x):\n        mu = x.mean(-1, keepdim=True)\n"
               "        return {} * self.weight + self.bias\n\n\n")
L3_USE_LN = [("self.ln1 = nn.LayerNorm(d_model)", "self.ln1 = LN(d_model)"), ("self.ln2 = nn.LayerNorm(d_model)", "self.ln2 = LN(d_model)")]
L4_FORWARD_END = "return self.lm_head(self.ln_f(x))  # (B, T, vocab_size)"
L4_EMB = "x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, D)"
L5_RMS = "rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)"
L5_RMS_OUT = "return (x32 * rms * self.weight.float()).to(x.dtype)"
L5_FFN = "return self.w2(F.silu(self.w1(x)) * self.w3(x))"
L5_FREQS = "freqs = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)  # (d/2,)"
L5_PAIRS = "even, odd = x[..., 0::2].float(), x[..., 1::2].float()  # (..., T, d/2) each"
L5_TURN = "out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)  # (..., T, d/2, 2)"
L5_ROPE_QK = "q, k = rope(q, positions, self.theta), rope(k, positions, self.theta)"
L5_GROUP = "k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, H, T, d_head)"
L5_MASK = "causal_mask(T, device=x.device))  # (B, H, T, d_head)"
L5_ATTN = "x = x + self.attn(self.norm1(x))"
L5_FFN_ADD = "return x + self.ffn(self.norm2(x))"
L5_HEAD = "return self.lm_head(self.norm(x))  # (B, T, vocab_size)\n        # END SOLUTION\n\n    generate"
L5_EMB = "x = self.tok_emb(idx)  # (B, T, D)\n        for block in self.blocks:\n            x = block(x)"
L6_INIT = "self.keys = [None] * n_layers\n        self.values = [None] * n_layers"
L6_CAT = "k = torch.cat([self.keys[layer], k], dim=2)  # (B, H_kv, T_cached + T_new, d_head)"
L6_LENGTH = "return 0 if self.keys[0] is None else self.keys[0].size(2)"
L6_POS = "positions = torch.arange(start_pos, start_pos + T, device=x.device)"
L6_UPDATE = "k, v = cache.update(layer, k, v)  # (B, H_kv, start_pos + T, d_head): everything so far"
L6_MASK = "mask = keys[None, :] <= positions[:, None]  # (T, start_pos + T): query i sees positions 0..start_pos+i"
L6_ROPE = "q, k = rope(q, positions, attn.theta), rope(k, positions, attn.theta)"
L6_STEP = "logits = model(next_id, cache=cache, start_pos=idx.size(1) - 1)  # (B, 1, vocab): one token per step"
L6_NEW_CACHE = "cache = KVCache(len(model.blocks))"
L6_GENERATE = """    cache = KVCache(len(model.blocks))
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
"""
# the same sampler written another way: feed, then sample (no call after the last token), top_k by scatter, the
# temperature after it, self(...) with positional arguments
L6_FEED_THEN_SAMPLE = """    cache, x, pos = KVCache(len(model.blocks)), idx, 0
    for _ in range(max_new_tokens):
        logits = model(x, cache, pos)[:, -1]
        pos += x.size(1)
        if top_k is not None:
            values, where = logits.topk(min(top_k, logits.size(-1)))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, where, values)
        x = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1)
        idx = torch.cat([idx, x], 1)
    return idx
"""
# no cache at all behind one-token calls: each step re-embeds the whole sequence with F.embedding and projects it
# with the weights read directly (no tok_emb or wk call to count), filling the cache only to keep its length right
L6_RECOMPUTE = [
    ("    q = attn.wq(x).view(B, T, attn.n_heads, attn.d_head).transpose(1, 2)  # (B, H, T, d_head)\n"
     "    k = attn.wk(x).view(B, T, attn.n_kv_heads, attn.d_head).transpose(1, 2)  # (B, H_kv, T, d_head)\n"
     "    v = attn.wv(x).view(B, T, attn.n_kv_heads, attn.d_head).transpose(1, 2)\n"
     "    positions = torch.arange(start_pos, start_pos + T, device=x.device)\n",
     "    q = F.linear(x, attn.wq.weight).view(B, T, attn.n_heads, attn.d_head).transpose(1, 2)\n"
     "    k = F.linear(x, attn.wk.weight).view(B, T, attn.n_kv_heads, attn.d_head).transpose(1, 2)\n"
     "    v = F.linear(x, attn.wv.weight).view(B, T, attn.n_kv_heads, attn.d_head).transpose(1, 2)\n"
     "    positions = torch.arange(T, device=x.device)\n"),
    (L6_UPDATE, "cache.update(layer, k[:, :, start_pos:], v[:, :, start_pos:])  # its length only: never read"),
    ("        x = self.tok_emb(idx)  # (B, T, D)\n        for layer",
     "        cache.seen = torch.cat([cache.seen, idx], 1) if start_pos else idx\n"
     "        x = F.embedding(cache.seen, self.tok_emb.weight)  # the whole sequence again\n        for layer"),
    ("        return self.lm_head(self.norm(x))  # (B, T, vocab_size)\n        # END SOLUTION\n\n\n@torch.no_grad()",
     "        return self.lm_head(self.norm(x))[:, start_pos:]\n        # END SOLUTION\n\n\n@torch.no_grad()"),
    ("import torch\n", "import torch\nimport torch.nn.functional as F\n")]

MUTANTS = [
    # ---- lab 1
    Mutant("lab1-no-scale", "lab1", [(L1_SCORES, "scores = q @ k.transpose(-2, -1)")],
           {"test_matches_oracle", "test_gradients_flow"}, "scale"),
    Mutant("lab1-mask-after-softmax", "lab1", [(L1_MASK, "pass"), (L1_SOFTMAX, L1_SOFTMAX + "\n    weights = weights * mask if mask is not None else weights")],
           {"test_weight_rows_sum_to_one", "test_matches_oracle"}, "mask"),
    Mutant("lab1-mask-ignored", "lab1", [(L1_MASK, "pass")], {"test_upper_triangle_is_zero", "test_matches_oracle"}, "causal"),
    Mutant("lab1-mask-inverted", "lab1", [(L1_MASK, 'scores = scores.masked_fill(mask, -1e9)')],
           {"test_upper_triangle_is_zero", "test_matches_oracle"}, "mask"),
    Mutant("lab1-mask-inverted-inf", "lab1", [(L1_MASK, 'scores = scores.masked_fill(mask, float("-inf"))')],
           {"test_upper_triangle_is_zero", "test_matches_oracle", "test_weight_rows_sum_to_one"}, "mask"),  # NaN rows
    Mutant("lab1-no-scale-gradients", "lab1", [(L1_SCORES, "scores = q @ k.transpose(-2, -1)")],
           {"test_gradients_flow"}, "scale"),
    Mutant("lab1-softmax-over-queries-rows", "lab1", [(L1_SOFTMAX, "weights = torch.softmax(scores, dim=-2)")],
           {"test_weight_rows_sum_to_one"}, "softmax"),
    Mutant("lab1-softmax-wrong-dim", "lab1", [(L1_SOFTMAX, "weights = torch.softmax(scores, dim=-2)")],
           {"test_weight_rows_sum_to_one", "test_matches_oracle"}, "softmax"),
    Mutant("lab1-uniform-lower-triangle", "lab1", [(L1_SOFTMAX, "weights = (mask.float() / mask.float().sum(-1, keepdim=True)).expand_as(scores) if mask is not None else torch.softmax(scores, -1)")],
           {"test_matches_oracle"}),
    Mutant("lab1-detached-weights", "lab1", [(L1_SOFTMAX, "weights = torch.softmax(scores, dim=-1).detach()")],
           {"test_gradients_flow"}, "grad"),
    Mutant("lab1-out-transposed", "lab1", [("out = weights @ v  #", "out = (weights @ v).transpose(-2, -1)  #")],
           {"test_output_shape", "test_matches_oracle"}),
    Mutant("lab1-mask-float-upper", "lab1", [("torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))",
                                              "torch.triu(torch.ones(T, T, device=device))")], {"test_causal_mask"}, "causal"),
    Mutant("lab1-mask-ignores-device", "lab1", [("dtype=torch.bool, device=device))", "dtype=torch.bool))")],
           {"test_device_discipline"}, "device"),
    Mutant("lab1-naive-softmax-overflows", "lab1", [(L1_SOFTMAX, "weights = scores.exp() / scores.exp().sum(-1, keepdim=True)")],
           {"test_unusual_shapes_and_scales"}, "overflow"),  # public checks pass; exp() of large scores is inf
    Mutant("lab1-shortcut-via-getattr", "lab1", [(L1_SCORES, L1_SCORES + "\n    return getattr(torch.nn.functional, 'scaled_dot_product_' + 'attention')(q, k, v, attn_mask=mask), None")],
           {"test_no_shortcuts"}, status="forbidden"),
    Mutant("lab1-first-item-mask-for-all", "lab1", [(L1_MASK, "if mask.dim() > 2:\n            mask = mask.reshape(-1, *mask.shape[-2:])[0]  # one mask for the whole batch\n        " + L1_MASK)],
           {"test_masks_broadcast"}, "mask_batch"),
    Mutant("lab1-mask-squeezed", "lab1", [(L1_MASK, "mask = mask.squeeze(1) if mask.dim() == 4 else mask\n        " + L1_MASK)],
           {"test_masks_broadcast"}, "mask_batch"),  # (B, 1, T, T) -> (B, T, T): lined up with the heads
    Mutant("lab1-mask-flipped-in-place", "lab1", [(L1_MASK, 'scores = scores.masked_fill(mask.logical_not_(), float("-inf"))')],
           {"test_inputs_left_unchanged"}, "inplace"),
    Mutant("lab1-queries-scaled-in-place", "lab1", [(L1_SCORES, "q = q.mul_(1 / math.sqrt(d_k))\n    scores = q @ k.transpose(-2, -1)")],
           {"test_inputs_left_unchanged"}, "inplace"),
    Mutant("lab1-view-needs-contiguous", "lab1", [(L1_SCORES, L1_VIEW_SCORES)], {"test_non_contiguous_inputs"}, "contiguous"),
    Mutant("lab1-squeezed-single-query", "lab1", [("out = weights @ v  #", "out = (weights @ v).squeeze(-2)  #")],
           {"test_matches_oracle"}, "shape"),  # T=1 loses its query dimension
    Mutant("lab1-float16-softmax", "lab1", [(L1_SOFTMAX, "weights = torch.softmax(scores.half(), dim=-1).to(scores.dtype)")],
           {"test_matches_oracle", "test_gradients_flow"}, "precision"),
    Mutant("lab1-weights-rolled", "lab1", [(L1_SOFTMAX, "weights = torch.softmax(scores, dim=-1).roll(1, dims=-1)")],
           {"test_matches_oracle"}, "mismatch"),  # no known cause: the neutral hint, never "apply the mask"
    # ---- lab 2
    Mutant("lab2-heads-without-transpose", "lab2", [(L2_VIEW.format(c), f"{c} = {c}.reshape(B, self.n_heads, T, self.d_head)") for c in "qkv"],
           {"test_matches_oracle", "test_causality"}, "heads"),
    Mutant("lab2-heads-without-transpose-causality", "lab2", [(L2_VIEW.format(c), f"{c} = {c}.reshape(B, self.n_heads, T, self.d_head)") for c in "qkv"],
           {"test_causality"}, "heads"),
    Mutant("lab2-qkv-order", "lab2", [("q, k, v = self.qkv(x).split(D, dim=-1)", "k, q, v = self.qkv(x).split(D, dim=-1)")],
           {"test_matches_oracle"}, "order"),
    Mutant("lab2-dropout-in-eval", "lab2", [(L2_RETURN, "return torch.nn.functional.dropout(self.proj(out), self.dropout.p)")],
           {"test_matches_oracle"}, "dropout"),
    Mutant("lab2-no-bias-merge-without-transpose", "lab2", [(L2_MERGE, "out = out.contiguous().view(B, T, D)"),
                                                            ("nn.Linear(d_model, 3 * d_model)", "nn.Linear(d_model, 3 * d_model, bias=False)"),
                                                            ("nn.Linear(d_model, d_model)", "nn.Linear(d_model, d_model, bias=False)")],
           {"test_matches_oracle"}, "heads"),
    Mutant("lab2-dropout-ignored", "lab2", [("self.dropout = nn.Dropout(dropout)", "self.dropout = nn.Dropout(0.0)")],
           {"test_dropout_only_in_training"}, "dropout_train"),
    Mutant("lab2-merge-without-transpose", "lab2", [(L2_MERGE, "out = out.contiguous().view(B, T, D)")],
           {"test_matches_oracle"}, "heads"),
    Mutant("lab2-no-proj", "lab2", [(L2_RETURN, "return self.dropout(out)")],
           {"test_matches_oracle", "test_gradients_reach_every_parameter"}, "proj"),
    Mutant("lab2-no-causal-mask", "lab2", [("causal_mask(T, device=x.device))", "None)")],
           {"test_matches_oracle", "test_causality"}, "causal"),
    Mutant("lab2-mask-on-cpu", "lab2", [("causal_mask(T, device=x.device)", "causal_mask(T)")], {"test_device_discipline"}, "device"),
    Mutant("lab2-one-head", "lab2", [("mha = MultiHeadAttention(d_model=16, n_heads=4)", "mha = MultiHeadAttention(d_model=16, n_heads=1)")],
           {"test_mha_exists"}),
    Mutant("lab2-wrong-shape", "lab2", [(L2_RETURN, L2_RETURN + ".transpose(0, 1)")], {"test_output_shape", "test_matches_oracle"}),
    Mutant("lab2-mask-of-fixed-size", "lab2", [("causal_mask(T, device=x.device))", "causal_mask(8, device=x.device)[:T, :T])")],
           {"test_other_sizes_and_lengths"}),  # public checks stop at T=8
    Mutant("lab2-builtin-mha", "lab2", [("self.dropout = nn.Dropout(dropout)", "self.dropout = nn.Dropout(dropout)\n        self.mha = nn.MultiheadAttention(d_model, n_heads, batch_first=True)")],
           {"test_no_shortcuts"}, status="forbidden"),
    Mutant("lab2-keys-detached", "lab2", [(L2_SPLIT_LINE, L2_SPLIT_LINE + "\n        k = k.detach()")],
           {"test_gradients_reach_every_parameter"}, "grad_partial"),  # qkv.weight still has some gradient
    Mutant("lab2-values-no-grad", "lab2", [(L2_SPLIT_LINE, L2_SPLIT_LINE + "\n        v = v.data")],
           {"test_gradients_reach_every_parameter"}, "grad_partial"),
    Mutant("lab2-mha-with-dropout", "lab2", [("mha = MultiHeadAttention(d_model=16, n_heads=4)", "mha = MultiHeadAttention(d_model=16, n_heads=4, dropout=0.1)")],
           {"test_mha_exists"}, "mha_spec"),
    Mutant("lab2-mha-other-size", "lab2", [("mha = MultiHeadAttention(d_model=16, n_heads=4)", "mha = MultiHeadAttention(d_model=32, n_heads=8)")],
           {"test_mha_exists"}, "mha_spec"),
    Mutant("lab2-dropout-hard-coded", "lab2", [("self.dropout = nn.Dropout(dropout)", "self.dropout = nn.Dropout(0.1)")],
           {"test_dropout_only_in_training"}, "dropout_rate"),
    Mutant("lab2-dropout-all-or-nothing", "lab2", [("self.dropout = nn.Dropout(dropout)", "self.dropout = nn.Dropout(0.5 if dropout else 0.0)")],
           {"test_dropout_only_in_training"}, "dropout_rate"),
    Mutant("lab2-heads-on-the-class", "lab2", [("self.n_heads = n_heads", "MultiHeadAttention.n_heads = n_heads")],
           {"test_instances_are_independent"}, "shared_state"),
    Mutant("lab2-dropout-on-the-class", "lab2", [("self.dropout = nn.Dropout(dropout)", "MultiHeadAttention.dropout = nn.Dropout(dropout)")],
           {"test_instances_are_independent"}, "shared_state"),
    Mutant("lab2-mask-transposed", "lab2", [("causal_mask(T, device=x.device))", "causal_mask(T, device=x.device).T)")],
           {"test_causality", "test_matches_oracle"}, "causal"),  # keys after the query: a mask mistake, not the heads'
    Mutant("lab2-output-slightly-scaled", "lab2", [(L2_RETURN, "return self.dropout(self.proj(out)) * 1.01")],
           {"test_matches_oracle"}, "mismatch"),  # no known cause: the neutral hint, not "split the heads"
    # ---- lab 3
    Mutant("lab3-post-norm", "lab3", [(L3_ATTN, "x = self.ln1(x + self.attn(x))"), (L3_MLP, "x = self.ln2(x + self.mlp(x))")],
           {"test_matches_oracle", "test_residual_gradient"}, "prenorm"),
    Mutant("lab3-post-norm-identity", "lab3", [(L3_ATTN, "x = self.ln1(x + self.attn(x))"), (L3_MLP, "x = self.ln2(x + self.mlp(x))")],
           {"test_residual_gradient"}, "prenorm"),
    Mutant("lab3-relu-block", "lab3", [("self.act = nn.GELU()", "self.act = nn.ReLU()")], {"test_matches_oracle"}, "mlp"),
    Mutant("lab3-dropout-in-eval", "lab3", [(L3_MLP, "x = x + torch.nn.functional.dropout(self.mlp(self.ln2(x)), self.dropout.p)")],
           {"test_matches_oracle"}, "dropout"),
    Mutant("lab3-dropout-ignored", "lab3", [("self.dropout = nn.Dropout(dropout)", "self.dropout = nn.Dropout(0.0)"),
                                            ("MultiHeadAttention(d_model, n_heads, dropout)", "MultiHeadAttention(d_model, n_heads)")],
           {"test_dropout_only_in_training"}, "dropout_train"),
    Mutant("lab3-expansion-ignored", "lab3", [("self.fc = nn.Linear(d_model, expansion * d_model)", "self.fc = nn.Linear(d_model, 4 * d_model)"),
                                              ("nn.Linear(expansion * d_model, d_model)", "nn.Linear(4 * d_model, d_model)")],
           {"test_mlp_matches_oracle"}, "mlp"),
    Mutant("lab3-ln1-twice", "lab3", [(L3_MLP, "x = x + self.dropout(self.mlp(self.ln1(x)))")],
           {"test_matches_oracle", "test_gradients_reach_every_parameter"}, "prenorm"),
    Mutant("lab3-no-residual", "lab3", [(L3_ATTN, "x = self.attn(self.ln1(x))")],
           {"test_residual_gradient", "test_matches_oracle"}, "residual"),
    Mutant("lab3-relu", "lab3", [("self.act = nn.GELU()", "self.act = nn.ReLU()")], {"test_mlp_matches_oracle"}, "mlp"),
    Mutant("lab3-mlp-2x", "lab3", [("self.fc = nn.Linear(d_model, expansion * d_model)", "self.fc = nn.Linear(d_model, 2 * d_model)"),
                                   ("nn.Linear(expansion * d_model, d_model)", "nn.Linear(2 * d_model, d_model)")],
           {"test_mlp_matches_oracle"}, "mlp"),
    Mutant("lab3-wrong-shape", "lab3", [("        return x\n", "        return x[:, -1]\n")], {"test_output_shape_preserved"}),
    Mutant("lab3-future-leak", "lab3", [(L3_ATTN, L3_ATTN + " + x.mean(1, keepdim=True)")], {"test_causality"}, "causal"),
    Mutant("lab3-cpu-tensor", "lab3", [(L3_ATTN, L3_ATTN + " + torch.zeros(x.size(-1))")], {"test_device_discipline"}, "device"),
    Mutant("lab3-layernorm-eps-outside-root", "lab3", [("class MLP(nn.Module):", L3_LN_CLASS.format(
        "(x - mu) / ((x - mu).pow(2).mean(-1, keepdim=True).sqrt() + self.eps)") + "class MLP(nn.Module):"), *L3_USE_LN],
           {"test_extreme_inputs_and_sizes"}, "layer_norm"),  # visible only when the inputs' variance is near eps
    Mutant("lab3-layernorm-unbiased-variance", "lab3", [("class MLP(nn.Module):", L3_LN_CLASS.format(
        "(x - mu) / (x.var(-1, keepdim=True) + self.eps).sqrt()") + "class MLP(nn.Module):"), *L3_USE_LN],
           {"test_matches_oracle"}, "layer_norm"),
    Mutant("lab3-layernorm-stats-detached", "lab3", [("class MLP(nn.Module):", L3_LN_CLASS.format(
        "(x - mu.detach()) / ((x - mu).pow(2).mean(-1, keepdim=True).detach() + self.eps).sqrt()") + "class MLP(nn.Module):"), *L3_USE_LN],
           {"test_gradients_reach_every_parameter"}, "grad_partial"),  # the same output, other gradients
    Mutant("lab3-half-hidden-detached", "lab3", [("return self.proj(self.act(self.fc(x)))", "h = self.act(self.fc(x))\n        half = h.size(-1) // 2\n        return self.proj(torch.cat([h[..., :half], h[..., half:].detach()], -1))")],
           {"test_gradients_reach_every_parameter"}, "grad_partial"),  # fc's second half of rows gets none
    Mutant("lab3-attn-dropout-hard-coded", "lab3", [("MultiHeadAttention(d_model, n_heads, dropout)", "MultiHeadAttention(d_model, n_heads, 0.1)")],
           {"test_dropout_only_in_training"}, "dropout_rate"),
    Mutant("lab3-dropout-all-or-nothing", "lab3", [("self.dropout = nn.Dropout(dropout)", "self.dropout = nn.Dropout(0.5 if dropout else 0.0)"),
                                                   ("MultiHeadAttention(d_model, n_heads, dropout)", "MultiHeadAttention(d_model, n_heads)")],
           {"test_dropout_only_in_training"}, "dropout_rate"),
    Mutant("lab3-mlp-output-scaled", "lab3", [(L3_MLP, "x = x + 1.01 * self.dropout(self.mlp(self.ln2(x)))")],
           {"test_matches_oracle"}, "mismatch"),  # no known cause: the neutral hint, not "pre-norm"
    Mutant("lab3-builtin-layer", "lab3", [("self.dropout = nn.Dropout(dropout)", "self.dropout = nn.Dropout(dropout)\n        self.layer = nn.TransformerEncoderLayer(d_model, n_heads, batch_first=True)")],
           {"test_no_shortcuts"}, status="forbidden"),
    # ---- lab 4
    Mutant("lab4-no-ln-f", "lab4", [(L4_FORWARD_END, "return self.lm_head(x)")],
           {"test_matches_oracle", "test_gradients_reach_every_parameter"}, "gpt"),
    Mutant("lab4-no-pos-emb", "lab4", [(L4_EMB, "x = self.drop(self.tok_emb(idx))")],
           {"test_matches_oracle", "test_gradients_reach_every_parameter"}, "gpt"),
    Mutant("lab4-positions-on-cpu", "lab4", [("pos = torch.arange(T, device=idx.device)", "pos = torch.arange(T)")],
           {"test_device_discipline"}, "device"),
    Mutant("lab4-no-shift", "lab4", [("data[i + 1:i + seq_len + 1]", "data[i:i + seq_len]")],
           {"test_get_batch_shift", "test_losses_are_honest", "test_greedy_continues_pattern"}, "shift"),
    Mutant("lab4-no-crop", "lab4", [("self(idx[:, -self.max_seq_len:])", "self(idx)")],
           {"test_generate_length_and_crop", "test_greedy_continues_pattern"}),
    Mutant("lab4-crop-wrong-end", "lab4", [("self(idx[:, -self.max_seq_len:])", "self(idx[:, :self.max_seq_len])")],
           {"test_generate_length_and_crop", "test_greedy_continues_pattern"}, "crop"),
    Mutant("lab4-hard-coded-losses", "lab4", [("    seq_len = seq_len or model.max_seq_len\n",
                                                "    return [2.9 * 0.98 ** i for i in range(steps)]\n")],
           {"test_losses_are_honest", "test_greedy_continues_pattern"}, "train"),
    Mutant("lab4-short-windows", "lab4", [("seq_len = seq_len or model.max_seq_len", "seq_len = seq_len or 8")],
           {"test_train_uses_full_context"}, "train"),
    Mutant("lab4-logs-every-other-step", "lab4", [("        losses.append(loss.item())", "        if _ % 2:\n            losses.append(loss.item())")],
           {"test_training_logs_every_step"}, "train"),
    Mutant("lab4-tiny-lr", "lab4", [("AdamW(model.parameters(), lr=lr)", "AdamW(model.parameters(), lr=lr * 1e-3)")],
           {"test_loss_drops_30_percent", "test_greedy_continues_pattern"}, "train"),
    Mutant("lab4-train-diverges", "lab4", [("AdamW(model.parameters(), lr=lr)", "AdamW(model.parameters(), lr=lr * 1e12)")],
           {"test_training_logs_every_step", "test_loss_drops_30_percent", "test_losses_are_honest",
            "test_greedy_continues_pattern"}, "train"),  # NaN losses
    Mutant("lab4-top-k-ignored", "lab4", [("if top_k is not None:", "if False:")], {"test_top_k_sampling"}, "sampling"),
    Mutant("lab4-argmax-not-sampling", "lab4", [("torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)", "logits.argmax(-1, keepdim=True)")],
           {"test_top_k_sampling"}, "sampling"),
    Mutant("lab4-generate-with-grad", "lab4", [("    @torch.no_grad()\n    def generate", "    def generate")],
           {"test_generate_length_and_crop"}, "sampling"),
    Mutant("lab4-sample-returns-ids", "lab4", [("return tokenizer.decode(out[0].tolist())", "return out[0].tolist()")],
           {"test_sample_returns_text"}, "sampling"),
    Mutant("lab4-tokenizer-mismatch", "lab4", [("self.itos = dict(enumerate(chars))", "self.itos = dict(enumerate(reversed(chars)))")],
           {"test_tokenizer_round_trip"}, "tokenizer"),
    Mutant("lab4-pos-emb-too-long", "lab4", [("self.pos_emb = nn.Embedding(max_seq_len, d_model)", "self.pos_emb = nn.Embedding(2 * max_seq_len, d_model)")],
           {"test_model_structure"}, "gpt"),
    Mutant("lab4-last-logits-only", "lab4", [(L4_FORWARD_END, "return self.lm_head(self.ln_f(x))[:, -1]")],
           {"test_logits_shape", "test_matches_oracle"}, "gpt"),
    Mutant("lab4-temperature-ignored", "lab4", [("[:, -1, :] / temperature", "[:, -1, :]")],
           {"test_temperature_scales_the_logits"}, "temperature"),
    Mutant("lab4-temperature-multiplied", "lab4", [("[:, -1, :] / temperature", "[:, -1, :] * temperature")],
           {"test_temperature_scales_the_logits"}, "temperature"),
    Mutant("lab4-sample-drops-options", "lab4", [("model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k)",
                                                  "model.generate(idx, max_new_tokens)")],
           {"test_sample_forwards_its_options"}, "options"),
    Mutant("lab4-train-ignores-lr", "lab4", [("AdamW(model.parameters(), lr=lr)", "AdamW(model.parameters(), lr=3e-3)")],
           {"test_train_honours_its_arguments"}, "train_args"),
    Mutant("lab4-train-ignores-batch-size", "lab4", [("get_batch(data, batch_size, seq_len)", "get_batch(data, 16, seq_len)")],
           {"test_train_honours_its_arguments"}, "train_args"),
    Mutant("lab4-train-ignores-seq-len", "lab4", [("seq_len = seq_len or model.max_seq_len", "seq_len = model.max_seq_len")],
           {"test_train_honours_its_arguments"}, "train_args"),
    Mutant("lab4-never-zero-grad", "lab4", [("        optimizer.zero_grad(set_to_none=True)\n", "")],
           {"test_gradients_reset_each_step"}, "zero_grad"),
    Mutant("lab4-fixed-batch-starts", "lab4", [("starts = torch.randint(len(data) - seq_len, (batch_size,)).tolist()",
                                                "starts = list(range(batch_size))")],
           {"test_get_batch_shift", "test_greedy_continues_pattern"}, "batch_random"),
    Mutant("lab4-generate-returns-new-only", "lab4", [("        return idx\n        # END SOLUTION", "        return idx[:, -max_new_tokens:]\n        # END SOLUTION")],
           {"test_generate_length_and_crop"}, "append"),
    Mutant("lab4-no-crop-index-error", "lab4", [("self(idx[:, -self.max_seq_len:])", "self(idx)")],
           {"test_generate_length_and_crop", "test_greedy_continues_pattern"}, "crop"),
    Mutant("lab4-batch-start-off-by-one", "lab4", [("torch.randint(len(data) - seq_len, (batch_size,))",
                                                    "torch.randint(len(data) - seq_len - 1, (batch_size,))")],
           {"test_edge_windows_and_prompts"}),  # never picks the last window
    Mutant("lab4-future-leak", "lab4", [(L4_EMB, L4_EMB + "\n        x = x + x.mean(1, keepdim=True)")], {"test_causality"}, "causal"),
    Mutant("lab4-generates-at-least-one-token", "lab4", [("        for _ in range(max_new_tokens):\n            logits = self(",
                                                          "        for _ in range(max(1, max_new_tokens)):\n            logits = self(")],
           {"test_generate_length_and_crop"}, "append"),
    Mutant("lab4-top-k-above-vocabulary", "lab4", [("torch.topk(logits, min(top_k, logits.size(-1)))", "torch.topk(logits, top_k)")],
           {"test_top_k_sampling"}, "top_k_large"),
    Mutant("lab4-vocabulary-on-the-class", "lab4", [("        self.stoi = {ch: i for i, ch in enumerate(chars)}\n        self.itos = dict(enumerate(chars))\n",
                                                     "        CharTokenizer.stoi = {ch: i for i, ch in enumerate(chars)}\n        CharTokenizer.itos = dict(enumerate(chars))\n")],
           {"test_tokenizer_round_trip"}, "tokenizer_own"),
    Mutant("lab4-loss-of-the-first-row", "lab4", [("loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))",
                                                   "loss = F.cross_entropy(logits[0], y[0])")],
           {"test_train_honours_its_arguments"}, "loss_rows"),
    Mutant("lab4-one-window-per-batch", "lab4", [("starts = torch.randint(len(data) - seq_len, (batch_size,)).tolist()",
                                                  "starts = torch.randint(len(data) - seq_len, (1,)).tolist() * batch_size")],
           {"test_get_batch_shift"}, "batch_random"),
    Mutant("lab4-loss-logged-after-the-step", "lab4", [("        losses.append(loss.item())",
                                                        "        with torch.no_grad():\n            losses.append(F.cross_entropy(model(x).view(-1, logits.size(-1)), y.view(-1)).item())")],
           {"test_losses_are_honest"}, "loss_before_step"),
    Mutant("lab4-get-batch-reseeds", "lab4", [("    starts = torch.randint(", "    torch.manual_seed(0)\n    starts = torch.randint(")],
           {"test_get_batch_shift"}, "reseed"),
    Mutant("lab4-generate-reseeds", "lab4", [("        for _ in range(max_new_tokens):\n            logits = self(",
                                              "        torch.manual_seed(0)\n        for _ in range(max_new_tokens):\n            logits = self(")],
           {"test_top_k_sampling"}, "reseed"),
    Mutant("lab4-optimizer-holds-the-blocks-only", "lab4", [("AdamW(model.parameters(), lr=lr)", "AdamW(model.blocks.parameters(), lr=lr)")],
           {"test_gradients_reset_each_step", "test_losses_are_honest"}, "optimizer_params"),
    Mutant("lab4-default-dropout-0.1", "lab4", [("max_seq_len: int = 32, dropout: float = 0.0):", "max_seq_len: int = 32, dropout: float = 0.1):")],
           {"test_model_structure"}, "defaults"),
    Mutant("lab4-default-heads-2", "lab4", [("d_model: int = 32, n_heads: int = 4, n_layers: int = 2,", "d_model: int = 32, n_heads: int = 2, n_layers: int = 2,")],
           {"test_model_structure"}, "defaults"),
    Mutant("lab4-default-width-64", "lab4", [("d_model: int = 32, n_heads: int = 4, n_layers: int = 2,", "d_model: int = 64, n_heads: int = 4, n_layers: int = 2,")],
           {"test_model_structure"}, "defaults"),
    Mutant("lab4-dropout-not-passed-on", "lab4", [("self.drop = nn.Dropout(dropout)", "self.drop = nn.Dropout(0.0)"),
                                                  ("TransformerBlock(d_model, n_heads, dropout)", "TransformerBlock(d_model, n_heads, 0.0)")],
           {"test_model_structure"}, "dropout_train"),
    Mutant("lab4-blocks-of-four-heads", "lab4", [("TransformerBlock(d_model, n_heads, dropout)", "TransformerBlock(d_model, 4, dropout)")],
           {"test_matches_oracle"}, "gpt_args"),
    Mutant("lab4-generate-default-temperature-half", "lab4", [("max_new_tokens: int, temperature: float = 1.0, top_k=None):",
                                                               "max_new_tokens: int, temperature: float = 0.5, top_k=None):")],
           {"test_temperature_scales_the_logits"}, "defaults"),
    Mutant("lab4-generate-default-top-k-5", "lab4", [("max_new_tokens: int, temperature: float = 1.0, top_k=None):",
                                                      "max_new_tokens: int, temperature: float = 1.0, top_k=5):")],
           {"test_temperature_scales_the_logits"}, "defaults"),
    Mutant("lab4-sample-default-top-k-1", "lab4", [("temperature: float = 1.0, top_k=None) -> str:", "temperature: float = 1.0, top_k=1) -> str:")],
           {"test_sample_forwards_its_options"}, "defaults"),
    Mutant("lab4-sample-default-20-tokens", "lab4", [("prompt: str, max_new_tokens: int = 40,", "prompt: str, max_new_tokens: int = 20,")],
           {"test_sample_returns_text"}, "defaults"),
    Mutant("lab4-train-default-100-steps", "lab4", [("steps: int = 200, batch_size: int = 16", "steps: int = 100, batch_size: int = 16")],
           {"test_train_honours_its_arguments"}, "defaults"),
    Mutant("lab4-train-default-batch-8", "lab4", [("steps: int = 200, batch_size: int = 16", "steps: int = 200, batch_size: int = 8")],
           {"test_train_honours_its_arguments"}, "defaults"),
    Mutant("lab4-train-default-lr-1e-3", "lab4", [("          lr: float = 3e-3) -> list:", "          lr: float = 1e-3) -> list:")],
           {"test_train_honours_its_arguments"}, "defaults"),
    # ---- lab 5
    Mutant("lab5-rms-no-sqrt", "lab5", [(L5_RMS, "rms = 1 / (x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)")],
           {"test_rmsnorm_matches_formula", "test_block_matches_oracle", "test_model_matches_oracle"}, "rms_sqrt"),
    Mutant("lab5-rms-mean-over-time", "lab5", [(L5_RMS, "rms = torch.rsqrt(x32.pow(2).mean(dim=-2, keepdim=True) + self.eps)")],
           {"test_rmsnorm_matches_formula"}, "rms_dim"),
    Mutant("lab5-rms-centred", "lab5", [("x32 = x.float()", "x32 = x.float() - x.float().mean(-1, keepdim=True)")],
           {"test_rmsnorm_matches_formula"}, "rms_center"),
    Mutant("lab5-rms-eps-outside-sqrt", "lab5", [(L5_RMS, "rms = 1 / (x32.pow(2).mean(dim=-1, keepdim=True).sqrt() + self.eps)")],
           {"test_rmsnorm_matches_formula"}, "rms_eps"),
    Mutant("lab5-rms-eps-ignored", "lab5", [(L5_RMS, "rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + 1e-5)")],
           {"test_rmsnorm_matches_formula", "test_other_sizes_and_positions"}, "rms_eps"),
    Mutant("lab5-rms-in-half-precision", "lab5", [("x32 = x.float()", "x32 = x"), (L5_RMS_OUT, "return (x32 * rms * self.weight).to(x.dtype)")],
           {"test_rmsnorm_keeps_half_precision"}, "rms_float32"),
    Mutant("lab5-rms-returns-float32", "lab5", [(L5_RMS_OUT, "return x32 * rms * self.weight.float()")],
           {"test_rmsnorm_keeps_half_precision"}, "rms_float32"),
    Mutant("lab5-swiglu-gate-swapped", "lab5", [(L5_FFN, "return self.w2(F.silu(self.w3(x)) * self.w1(x))")],
           {"test_swiglu_matches_formula", "test_block_matches_oracle"}, "swiglu_gate"),
    Mutant("lab5-swiglu-gelu", "lab5", [(L5_FFN, "return self.w2(F.gelu(self.w1(x)) * self.w3(x))")],
           {"test_swiglu_matches_formula"}, "swiglu_act"),
    Mutant("lab5-rope-half-pairs", "lab5", [(L5_PAIRS, "even, odd = x[..., :d // 2].float(), x[..., d // 2:].float()"),
                                            (L5_TURN, "out = torch.cat([even * cos - odd * sin, even * sin + odd * cos], dim=-1)"),
                                            ("return out.flatten(-2).to(x.dtype)", "return out.to(x.dtype)")],
           {"test_rope_matches_formula", "test_attention_matches_oracle"}, "rope_pairs"),
    Mutant("lab5-rope-frequencies-i-over-d", "lab5", [(L5_FREQS, "freqs = theta ** (-torch.arange(d // 2, device=x.device, dtype=torch.float32) / d)")],
           {"test_rope_matches_formula", "test_attention_matches_oracle"}, "rope_freq"),
    Mutant("lab5-rope-ignores-theta", "lab5", [(L5_FREQS, "freqs = 10000.0 ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)")],
           {"test_rope_matches_formula"}, "rope_freq"),
    Mutant("lab5-rope-reflection", "lab5", [(L5_TURN, "out = torch.stack([even * cos - odd * sin, even * sin - odd * cos], dim=-1)")],
           {"test_rope_matches_formula", "test_rope_relative_positions"}, "rope_rotation"),
    Mutant("lab5-rope-on-values", "lab5", [(L5_ROPE_QK, L5_ROPE_QK + "\n        v = rope(v, positions, self.theta)")],
           {"test_attention_matches_oracle"}, "rope_values"),
    Mutant("lab5-rope-on-queries-only", "lab5", [(L5_ROPE_QK, "q = rope(q, positions, self.theta)")],
           {"test_attention_matches_oracle"}, "rope_qk"),
    Mutant("lab5-kv-heads-tiled", "lab5", [(L5_GROUP, "k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)")],
           {"test_attention_matches_oracle"}, "gqa_order"),
    Mutant("lab5-no-causal-mask", "lab5", [(L5_MASK, "None)")], {"test_attention_matches_oracle", "test_causality"}, "causal"),
    Mutant("lab5-mask-of-fixed-size", "lab5", [(L5_MASK, "causal_mask(12, device=x.device)[:T, :T])")],
           {"test_other_sizes_and_positions", "test_loss_drops_30_percent"}),  # 13 tokens, and training's 16
    Mutant("lab5-rope-table-of-512-positions", "lab5", [  # a precomputed table, Llama-style: positions past it fail
        ("angles = positions.to(x.device, torch.float32)[..., None] * freqs  # (..., T, d/2)",
         "angles = (torch.arange(512, device=x.device, dtype=torch.float32)[:, None] * freqs)[positions.to(x.device)]")],
           {"test_other_sizes_and_positions"}),  # public checks stay below position 110
    Mutant("lab5-frequencies-on-cpu", "lab5", [(L5_FREQS, "freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)")],
           {"test_device_discipline"}, "device"),
    Mutant("lab5-post-norm", "lab5", [(L5_ATTN, "x = self.norm1(x + self.attn(x))"), (L5_FFN_ADD, "return self.norm2(x + self.ffn(x))")],
           {"test_block_matches_oracle", "test_model_matches_oracle"}, "llama_prenorm"),
    Mutant("lab5-norm1-twice", "lab5", [(L5_FFN_ADD, "return x + self.ffn(self.norm1(x))")],
           {"test_block_matches_oracle", "test_gradients_reach_every_parameter"}, "llama_prenorm"),
    Mutant("lab5-no-final-norm", "lab5", [(L5_HEAD, L5_HEAD.replace("self.lm_head(self.norm(x))", "self.lm_head(x)"))],
           {"test_model_matches_oracle", "test_gradients_reach_every_parameter"}, "llama"),
    Mutant("lab5-learned-positions", "lab5", [("self.norm = RMSNorm(d_model)", "self.norm = RMSNorm(d_model)\n        self.pos_emb = nn.Embedding(max_seq_len, d_model)"),
                                              ("x = self.tok_emb(idx)  # (B, T, D)", "x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.size(1), device=idx.device))")],
           {"test_module_structure", "test_model_matches_oracle"}, "llama"),
    Mutant("lab5-blocks-in-a-plain-list", "lab5", [("self.blocks = nn.ModuleList([LlamaBlock(d_model, n_heads, n_kv_heads, d_ff) for _ in range(n_layers)])",
                                                    "self.blocks = [LlamaBlock(d_model, n_heads, n_kv_heads, d_ff) for _ in range(n_layers)]")],
           {"test_module_structure", "test_model_matches_oracle", "test_loss_drops_30_percent", "test_greedy_continues_pattern"}, "llama"),
    Mutant("lab5-future-leak", "lab5", [(L5_EMB, L5_EMB + " + x.mean(1, keepdim=True)")], {"test_causality"}, "causal"),
    Mutant("lab5-detached-attention", "lab5", [(L5_ATTN, "x = x + self.attn(self.norm1(x)).detach()")],
           {"test_gradients_reach_every_parameter"}, "grad"),
    Mutant("lab5-builtin-rmsnorm", "lab5", [("self.norm = RMSNorm(d_model)", "self.norm = nn.RMSNorm(d_model)")],
           {"test_no_shortcuts"}, status="forbidden"),
    Mutant("lab5-rms-default-eps-1e-6", "lab5", [("def __init__(self, d_model: int, eps: float = 1e-5):", "def __init__(self, d_model: int, eps: float = 1e-6):")],
           {"test_rmsnorm_matches_formula", "test_module_structure"}, "rms_eps"),
    Mutant("lab5-attention-ignores-its-theta", "lab5", [(L5_ROPE_QK, "q, k = rope(q, positions), rope(k, positions)")],
           {"test_attention_matches_oracle"}, "gqa_theta"),
    Mutant("lab5-theta-not-kept", "lab5", [("self.d_head, self.theta = n_heads, n_kv_heads, d_model // n_heads, theta",
                                            "self.d_head, self.theta = n_heads, n_kv_heads, d_model // n_heads, 10000.0")],
           {"test_attention_matches_oracle", "test_module_structure"}, "gqa_theta"),
    Mutant("lab5-gpt-ignores-d-ff", "lab5", [("d_ff = d_ff or 4 * d_model", "d_ff = 4 * d_model")],
           {"test_model_matches_oracle"}, "llama_args"),
    Mutant("lab5-gpt-default-kv-heads-4", "lab5", [("n_heads: int = 4, n_kv_heads: int = 2, n_layers: int = 2,",
                                                    "n_heads: int = 4, n_kv_heads: int = 4, n_layers: int = 2,")],
           {"test_model_matches_oracle"}, "defaults"),
    Mutant("lab5-gpt-default-max-seq-len-16", "lab5", [("n_layers: int = 2,\n                 max_seq_len: int = 32, d_ff: int = None):",
                                                        "n_layers: int = 2,\n                 max_seq_len: int = 16, d_ff: int = None):")],
           {"test_model_matches_oracle"}, "defaults"),
    Mutant("lab5-rope-default-theta-500", "lab5", [("def rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0)",
                                                    "def rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 500.0)")],
           {"test_rope_matches_formula"}, "defaults"),
    Mutant("lab5-own-generate-reads-the-first-position", "lab5", [  # training is fine: the sampler alone is wrong
        ("    generate = TinyGPT.generate  # lab 4's sampler works on any model with max_seq_len and forward(idx)\n",
         "    @torch.no_grad()\n    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):\n"
         "        for _ in range(max_new_tokens):\n            logits = self(idx[:, -self.max_seq_len:])[:, 0] / temperature\n"
         "            if top_k is not None:\n                logits[logits < logits.topk(top_k).values[:, -1:]] = -float('inf')\n"
         "            idx = torch.cat([idx, torch.multinomial(logits.softmax(-1), 1)], 1)\n        return idx\n")],
           {"test_greedy_continues_pattern"}, "sampling"),
    Mutant("lab5-one-block-repeated", "lab5", [("self.blocks = nn.ModuleList([LlamaBlock(d_model, n_heads, n_kv_heads, d_ff) for _ in range(n_layers)])",
                                                "self.blocks = nn.ModuleList([LlamaBlock(d_model, n_heads, n_kv_heads, d_ff)] * n_layers)")],
           {"test_module_structure"}, "llama_blocks"),
    # ---- lab 6
    Mutant("lab6-cache-never-read", "lab6", [(L6_UPDATE, "cache.update(layer, k, v)"),
                                             (L6_MASK, "mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()")],
           {"test_cached_steps_match_uncached_logits", "test_cached_greedy_matches_uncached"}, "cache_unread"),
    Mutant("lab6-read-before-append", "lab6", [(L6_UPDATE, "past = (cache.keys[layer], cache.values[layer])\n    cache.update(layer, k, v)\n"
                                                           "    k, v = past if past[0] is not None else (k, v)")],
           {"test_cached_steps_match_uncached_logits"}, "cache_self"),
    Mutant("lab6-rope-positions-restart-at-zero", "lab6", [(L6_ROPE, "q, k = rope(q, torch.arange(T), attn.theta), rope(k, torch.arange(T), attn.theta)")],
           {"test_cached_steps_match_uncached_logits", "test_cached_greedy_matches_uncached"}, "cache_positions"),
    Mutant("lab6-keys-cached-without-rope", "lab6", [(L6_ROPE, "q = rope(q, positions, attn.theta)")],
           {"test_prefill_matches_uncached", "test_cached_steps_match_uncached_logits"}, "cache_positions"),
    Mutant("lab6-step-start-pos-off-by-one", "lab6", [(L6_STEP, "logits = model(next_id, cache=cache, start_pos=idx.size(1))")],
           {"test_cached_greedy_matches_uncached"}, "cache_off_by_one"),
    Mutant("lab6-mask-ignores-start-pos", "lab6", [(L6_MASK, "mask = keys[None, :] <= torch.arange(T, device=x.device)[:, None]")],
           {"test_cached_steps_match_uncached_logits"}, "cache_mask"),
    Mutant("lab6-no-mask-after-prefill", "lab6", [(L6_MASK, L6_MASK + "\n    mask = mask if start_pos == 0 else None")],
           {"test_chunks_and_long_generation"}, "cache_mask"),  # one-token steps need no mask: public checks pass
    Mutant("lab6-recompute-every-step", "lab6", [(L6_STEP, "logits = model(idx)")], {"test_one_token_per_step"}, "cache_recompute"),
    Mutant("lab6-recompute-behind-one-token", "lab6", [  # a one-token call that reruns the whole sequence inside
        ("        if cache is None:\n            return super().forward(idx)\n",
         "        if cache is None:\n            return super().forward(idx)\n"
         "        cache.seen = torch.cat([cache.seen, idx], 1) if start_pos else idx\n"
         "        return super().forward(cache.seen)[:, -idx.size(1):]\n")], {"test_one_token_per_step"}, "cache_inside"),
    Mutant("lab6-recompute-by-function", "lab6", L6_RECOMPUTE, {"test_one_token_per_step"}, "cache_inside"),
    Mutant("lab6-cache-in-class-attributes", "lab6", [("class KVCache:\n", "class KVCache:\n    keys, values = [None] * 4, [None] * 4\n\n"),
                                                      (L6_INIT, "pass")],
           {"test_each_cache_is_its_own"}, "cache_stale"),
    Mutant("lab6-cache-kept-between-calls", "lab6", [(L6_NEW_CACHE, "cache = _CACHES.setdefault(id(model), KVCache(len(model.blocks)))"),
                                                     ("@torch.no_grad()\ndef generate_cached", "_CACHES = {}\n\n\n@torch.no_grad()\ndef generate_cached")],
           {"test_cached_greedy_matches_uncached"}, "cache_stale"),
    Mutant("lab6-update-overwrites", "lab6", [(L6_CAT, "pass"), ("v = torch.cat([self.values[layer], v], dim=2)", "pass")],
           {"test_cache_update_appends"}, "cache_update"),
    Mutant("lab6-length-counts-layers", "lab6", [(L6_LENGTH, "return sum(k is not None for k in self.keys)")],
           {"test_cache_update_appends", "test_cache_grows_one_position_per_step"}, "cache_length"),
    Mutant("lab6-generate-with-grad", "lab6", [("@torch.no_grad()\ndef generate_cached", "def generate_cached")],
           {"test_one_token_per_step"}, "sampling"),
    Mutant("lab6-top-k-ignored", "lab6", [("if top_k is not None:", "if False:")], {"test_sampling_options"}, "sampling"),
    Mutant("lab6-argmax-not-sampling", "lab6", [("torch.multinomial(torch.softmax(last, dim=-1), num_samples=1)", "last.argmax(-1, keepdim=True)")],
           {"test_sampling_options"}, "sampling"),
    Mutant("lab6-positions-ignore-start-pos", "lab6", [(L6_POS, "positions = torch.arange(T, device=x.device)")],
           {"test_cached_steps_match_uncached_logits"}, "cache_mask"),  # rope and mask both: a step sees position 0 only
    Mutant("lab6-positions-on-cpu", "lab6", [(L6_POS, "positions = torch.arange(start_pos, start_pos + T)"),
                                             ("keys = torch.arange(k.size(2), device=x.device)", "keys = torch.arange(k.size(2))")],
           {"test_device_discipline"}, "device"),
    Mutant("lab6-temperature-ignored", "lab6", [("last = logits[:, -1, :] / temperature  # (B, vocab)", "last = logits[:, -1, :]  # (B, vocab)")],
           {"test_sampling_options"}, "temperature"),
    Mutant("lab6-keys-turned-one-position-on", "lab6", [  # q and k shifted alike: every score, every logit is right
        (L6_ROPE, "q, k = rope(q, positions + 1, attn.theta), rope(k, positions + 1, attn.theta)")],
           {"test_cache_grows_one_position_per_step"}, "cache_keys"),
    Mutant("lab6-keys-cached-unturned-turned-when-read", "lab6", [  # right logits; the cache holds keys before rope
        (L6_ROPE, "q = rope(q, positions, attn.theta)"),
        (L6_UPDATE, L6_UPDATE + "\n    k = rope(k, torch.arange(k.size(2), device=x.device), attn.theta)"),
        (L6_LENGTH, "return 0 if self.keys[0] is None else int(self.keys[0].shape[-2])")],
           {"test_cache_grows_one_position_per_step"}, "cache_keys"),
    Mutant("lab6-length-is-the-number-of-layers", "lab6", [(L6_LENGTH, "return len(self.keys)")],
           {"test_cache_update_appends", "test_each_cache_is_its_own"}, "cache_length"),
    Mutant("lab6-forward-default-start-pos-1", "lab6", [("cache: KVCache = None, start_pos: int = 0)", "cache: KVCache = None, start_pos: int = 1)")],
           {"test_prefill_matches_uncached"}, "defaults"),
    Mutant("lab6-generate-default-temperature-half", "lab6", [("max_new_tokens: int, temperature: float = 1.0, top_k=None):",
                                                               "max_new_tokens: int, temperature: float = 0.5, top_k=None):")],
           {"test_sampling_options"}, "defaults"),
    Mutant("lab6-generate-default-top-k-3", "lab6", [("max_new_tokens: int, temperature: float = 1.0, top_k=None):",
                                                      "max_new_tokens: int, temperature: float = 1.0, top_k=3):")],
           {"test_sampling_options"}, "defaults"),
    Mutant("lab6-builtin-attention", "lab6", [("out, _ = scaled_dot_product_attention(q, k, v, mask)",
                                               "out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)")],
           {"test_no_shortcuts"}, status="forbidden"),
    # ---- an earlier lab's mistake, seen from a later lab: no points lost there, the own-chain check names the lab
    Mutant("lab1-no-scale-seen-from-lab2", "lab1", [(L1_SCORES, "scores = q @ k.transpose(-2, -1)")],
           {"test_works_with_your_own_earlier_labs"}, "chain", status="passed", seen_from="lab2"),
    Mutant("lab2-merge-seen-from-lab3", "lab2", [(L2_MERGE, "out = out.contiguous().view(B, T, D)")],
           {"test_works_with_your_own_earlier_labs"}, "chain", status="passed", seen_from="lab3"),
    Mutant("lab3-post-norm-seen-from-lab4", "lab3", [(L3_ATTN, "x = self.ln1(x + self.attn(x))")],
           {"test_works_with_your_own_earlier_labs"}, "chain", status="passed", seen_from="lab4"),
    Mutant("lab1-no-scale-seen-from-lab5", "lab1", [(L1_SCORES, "scores = q @ k.transpose(-2, -1)")],
           {"test_works_with_your_own_earlier_labs"}, "chain", status="passed", seen_from="lab5"),
    Mutant("lab5-rope-frequencies-seen-from-lab6", "lab5", [(L5_FREQS, "freqs = theta ** (-torch.arange(d // 2, device=x.device, dtype=torch.float32) / d)")],
           {"test_works_with_your_own_earlier_labs"}, "chain", status="passed", seen_from="lab6"),
    Mutant("lab4-builtin-attention", "lab4", [(L4_EMB, L4_EMB + "\n        x = x + F.scaled_dot_product_attention(x, x, x, is_causal=True)")],
           {"test_no_shortcuts"}, status="forbidden"),
]


# Correct implementations in other styles: every one must pass every check.
L2_SPLIT = ("        q, k, v = self.qkv(x).split(D, dim=-1)  # each (B, T, D)\n"
            "        # (B, T, D) -> (B, n_heads, T, d_head): each head attends on its own slice\n"
            "        q = q.view(B, T, self.n_heads, self.d_head).transpose(1, 2)\n"
            "        k = k.view(B, T, self.n_heads, self.d_head).transpose(1, 2)\n"
            "        v = v.view(B, T, self.n_heads, self.d_head).transpose(1, 2)\n")
NANOGPT_INIT = '''        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
'''
LM_HEAD = "        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)\n"
VARIANTS = [
    Mutant("lab1-einsum-and-large-negative", "lab1", [(L1_SCORES, "scores = torch.einsum('...qd,...kd->...qk', q, k) * d_k ** -0.5"),
                                                     (L1_MASK, "scores = scores.masked_fill(mask == 0, -1e9)")], set(), status="passed"),
    Mutant("lab1-reshape-and-where", "lab1", [(L1_SCORES, L1_VIEW_SCORES.replace(".view(", ".reshape(")),
                                              (L1_MASK, 'scores = torch.where(mask, scores, torch.tensor(float("-inf"), dtype=scores.dtype))')],
           set(), status="passed"),
    Mutant("lab1-mask-expanded-to-scores", "lab1", [(L1_MASK, 'scores = scores.masked_fill(~mask.expand_as(scores), float("-inf"))')],
           set(), status="passed"),
    Mutant("lab2-fused-view-permute", "lab2", [(L2_SPLIT, "        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)\n"),
                                               (L2_MERGE, "out = out.permute(0, 2, 1, 3).reshape(B, T, D)")], set(), status="passed"),
    Mutant("lab2-reshape-and-4d-mask", "lab2", [*((L2_VIEW.format(c), f"{c} = {c}.reshape(B, T, self.n_heads, self.d_head).transpose(1, 2)") for c in "qkv"),
                                                ("causal_mask(T, device=x.device))", "causal_mask(T, device=x.device).expand(B, 1, T, T))")],
           set(), status="passed"),
    Mutant("lab2-functional-dropout-before-proj", "lab2", [("self.dropout = nn.Dropout(dropout)", "self.p = dropout"),
                                                          (L2_RETURN, "return self.proj(F.dropout(out, self.p, training=self.training))"),
                                                          ("import torch.nn as nn\n", "import torch.nn as nn\nimport torch.nn.functional as F\n")],
           set(), status="passed"),
    Mutant("lab3-tanh-gelu", "lab3", [("nn.GELU()", 'nn.GELU(approximate="tanh")')], set(), status="passed"),
    Mutant("lab3-layernorm-eps-1e-6", "lab3", [("nn.LayerNorm(d_model)", "nn.LayerNorm(d_model, eps=1e-6)")],
           set(), status="passed"),  # the contract names no eps: the one the modules hold is read
    Mutant("lab3-layernorm-written-out-eps-1e-6", "lab3", [("class MLP(nn.Module):", L3_LN_CLASS.format(
        "(x - mu) / ((x - mu).pow(2).mean(-1, keepdim=True) + self.eps).sqrt()") + "class MLP(nn.Module):"),
        ("self.ln1 = nn.LayerNorm(d_model)", "self.ln1 = LN(d_model, eps=1e-6)"), ("self.ln2 = nn.LayerNorm(d_model)", "self.ln2 = LN(d_model, eps=1e-6)")],
           set(), status="passed"),
    Mutant("lab3-functional-dropout", "lab3", [("self.dropout = nn.Dropout(dropout)", "self.p = dropout"),
                                              (L3_MLP, "x = x + F.dropout(self.mlp(self.ln2(x)), self.p, self.training)"),
                                              ("import torch.nn as nn\n", "import torch.nn as nn\nimport torch.nn.functional as F\n")],
           set(), status="passed"),
    Mutant("lab4-nanogpt-init", "lab4", [(LM_HEAD, LM_HEAD + NANOGPT_INIT)], set(), status="passed"),
    Mutant("lab4-tied-with-bias", "lab4", [
        (LM_HEAD, "        self.lm_head = nn.Linear(d_model, vocab_size, bias=True)\n        self.lm_head.weight = self.tok_emb.weight\n")],
           set(), status="passed"),
    Mutant("lab4-clipped-gradients", "lab4", [("        optimizer.zero_grad(set_to_none=True)\n        loss.backward()\n",
                                              "        optimizer.zero_grad()\n        loss.backward()\n"
                                              "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n")], set(), status="passed"),
    # forward called directly, zero_grad after the forward pass, embeddings through F.embedding
    Mutant("lab4-forward-called-directly", "lab4", [("        logits = model(x)  # (B, T, vocab)\n        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))\n        optimizer.zero_grad(set_to_none=True)\n",
                                                     "        logits = model.forward(x)\n        optimizer.zero_grad()\n        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))\n"),
                                                    ("self(idx[:, -self.max_seq_len:])", "self.forward(idx[:, -self.max_seq_len:])"),
                                                    ("self.tok_emb(idx)", "F.embedding(idx, self.tok_emb.weight)")], set(), status="passed"),
    Mutant("lab5-complex-rope-expand-groups-own-generate", "lab5", [
        ("    d = x.size(-1)\n    freqs", "    d = x.size(-1)\n    return _complex_rope(x, positions, theta, d)\n    freqs"),
        ("def rope(", "def _complex_rope(x, positions, theta, d):\n    freqs = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device).float() / d)\n"
                      "    turn = torch.polar(torch.ones_like(freqs), torch.outer(positions.float().flatten(), freqs)).view(*positions.shape, d // 2)\n"
                      "    z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], d // 2, 2))\n"
                      "    return torch.view_as_real(z * turn).flatten(-2).type_as(x)\n\n\ndef rope("),
        (L5_GROUP, "k = k[:, :, None].expand(B, self.n_kv_heads, group, T, self.d_head).reshape(B, self.n_heads, T, self.d_head)\n"
                   "        v = v[:, :, None].expand(B, self.n_kv_heads, group, T, self.d_head).reshape(B, self.n_heads, T, self.d_head)"),
        (L5_RMS, "rms = 1.0 / (x32.norm(dim=-1, keepdim=True) ** 2 / x32.size(-1) + self.eps).sqrt()"),
        ("    generate = TinyGPT.generate  # lab 4's sampler works on any model with max_seq_len and forward(idx)\n",
         "    @torch.no_grad()\n    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):\n"
         "        for _ in range(max_new_tokens):\n            logits = self(idx[:, -self.max_seq_len:])[:, -1] / temperature\n"
         "            if top_k is not None:\n                logits[logits < logits.topk(top_k).values[:, -1:]] = -float('inf')\n"
         "            idx = torch.cat([idx, torch.multinomial(logits.softmax(-1), 1)], 1)\n        return idx\n"),
        ("from lab4_gpt import TinyGPT\n", "")], set(), status="passed"),
    Mutant("lab6-embedding-by-function", "lab6", [("x = self.tok_emb(idx)  # (B, T, D)\n        for layer",
                                                    "x = F.embedding(idx, self.tok_emb.weight)\n        for layer"),
                                                   ("import torch\n", "import torch\nimport torch.nn.functional as F\n")],
           set(), status="passed"),
    Mutant("lab6-forward-called-directly", "lab6", [
        ("logits = model(idx, cache=cache, start_pos=0)", "logits = model.forward(idx, cache, 0)"),
        (L6_STEP, "logits = model.forward(next_id, cache, idx.size(1) - 1)")], set(), status="passed"),
    Mutant("lab6-feed-then-sample-scatter-top-k", "lab6", [(L6_GENERATE, L6_FEED_THEN_SAMPLE),
                                                          ("import torch\n", "import torch\nimport torch.nn.functional as F\n")],
           set(), status="passed"),
]

# Correct styles that the grader's own machinery used to fail (tests/test_machinery.py grades them too):
# code that reads a tensor's value (the device probe runs on the meta device, which has no values)
L1_READS_VALUES = [("    if mask is not None:\n        scores = scores.masked_fill",
                    "    if not torch.isfinite(q).all():\n        raise ValueError('non-finite queries')\n"
                    "    if mask is not None and not bool(mask.all()):  # an all-True mask hides nothing\n"
                    "        scores = scores.masked_fill")]
# an MLP that also keeps an nn.Sequential of its own layers (each parameter reachable under two names), either order
L3_MLP_LAYERS = ("        self.fc = nn.Linear(d_model, expansion * d_model)\n        self.act = nn.GELU()\n"
                 "        self.proj = nn.Linear(expansion * d_model, d_model)\n")
L3_MLP_FORWARD = "return self.proj(self.act(self.fc(x)))"
L3_SEQUENTIAL_AFTER = [(L3_MLP_LAYERS, L3_MLP_LAYERS + "        self.net = nn.Sequential(self.fc, self.act, self.proj)\n"),
                       (L3_MLP_FORWARD, "return self.net(x)")]
L3_SEQUENTIAL_FIRST = [(L3_MLP_LAYERS, "        self.net = nn.Sequential(nn.Linear(d_model, expansion * d_model), nn.GELU(),\n"
                                       "                                 nn.Linear(expansion * d_model, d_model))\n"
                                       "        self.fc, self.proj = self.net[0], self.net[2]\n"),
                       (L3_MLP_FORWARD, "return self.net(x)")]
VARIANTS += [
    Mutant("lab1-reads-values", "lab1", L1_READS_VALUES, set(), status="passed"),
    Mutant("lab3-mlp-sequential-alias", "lab3", L3_SEQUENTIAL_AFTER, set(), status="passed"),
    Mutant("lab3-mlp-sequential-first", "lab3", L3_SEQUENTIAL_FIRST, set(), status="passed"),
]
MUTANTS += [
    # reads a value, then makes a tensor off the input's device: the probe still sees the second device
    Mutant("lab1-reads-values-mask-off-device", "lab1", [
        ("    if mask is not None:\n        scores = scores.masked_fill",
         "    if mask is not None and mask.any():\n        mask = mask & torch.ones(scores.shape[-2:], dtype=torch.bool)\n"
         "    if mask is not None:\n        scores = scores.masked_fill")], {"test_device_discipline"}, "device"),
    # the aliased MLP without its residual: zeroing mlp.proj (under both its names) must still show it
    Mutant("lab3-mlp-sequential-no-mlp-residual", "lab3", L3_SEQUENTIAL_AFTER + [(L3_MLP, "x = self.mlp(self.ln2(x))")],
           {"test_residual_gradient"}, "residual"),
]
MUTANTS += [
    # found by tools/mutate.py: sample builds the prompt on the CPU whatever the model's device
    Mutant("lab4-sample-prompt-on-cpu", "lab4", [
        ("torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)",
         "torch.tensor([tokenizer.encode(prompt)], dtype=torch.long)")], {"test_device_discipline"}, "device"),
    # the group size taken as the number of key/value heads (the same at 4 heads over 2)
    Mutant("lab6-group-is-n-kv-heads", "lab6", [
        ("group = attn.n_heads // attn.n_kv_heads", "group = attn.n_kv_heads")],
           {"test_cached_steps_match_uncached_logits"}),
    # top_k capped by the number of rows instead of the vocabulary
    Mutant("lab6-top-k-capped-by-rows", "lab6", [
        ("min(top_k, last.size(-1))", "min(top_k, last.size(-2))")], {"test_sampling_options"}, "top_k_large"),
]
MUTANTS += [
    # positions off by one in generate_cached, seen in the greedy tokens on weights the judge picks to show them
    Mutant("lab6-prompt-at-start-pos-1", "lab6", [
        ("logits = model(idx, cache=cache, start_pos=0)", "logits = model(idx, cache=cache, start_pos=1)")],
           {"test_cached_greedy_matches_uncached"}, "cache_off_by_one"),
]
