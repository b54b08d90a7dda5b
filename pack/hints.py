"""Hint texts, keyed by the mistake a check detects: (first hint, a second, deeper one). Standard library only:
the judge names a key (judge/checks.py refuses one that is not here), the parent prints the text."""

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
    "tokenizer_own": ("Keep each tokenizer's vocabulary on the instance (self.stoi, self.itos, self.vocab_size set in "
                      "__init__), not on the class or in a module-level dict.",
                      "Two tokenizers built on different texts must not see each other's characters."),
    "reseed": ("Do not call torch.manual_seed inside generate, get_batch or train: seed once, in the caller (main).",
               "Reseeding at each call makes every call draw the same random numbers: the same windows, the same "
               "samples."),
    "top_k_large": ("top_k may be larger than the vocabulary: keep min(top_k, logits.size(-1)) tokens "
                    "(torch.topk raises when k exceeds the dimension).", ""),
    "loss_rows": ("The loss is the mean cross-entropy over every row and position of the batch: "
                  "F.cross_entropy(logits.view(-1, vocab_size), y.view(-1)).",
                  "A loss of one row trains on one window per step and logs a noisy number."),
    "loss_before_step": ("Log the loss of the step's own batch, the one backward ran on (its loss.item()), "
                         "not a loss recomputed after the optimizer's step.", ""),
    "optimizer_params": ("Give the optimizer every parameter of the model: torch.optim.AdamW(model.parameters(), lr=lr).",
                         "A parameter the optimizer does not hold is never updated, and its .grad is never cleared by "
                         "optimizer.zero_grad()."),
    "defaults": ("Keep the contract's default values in the signature: the module docstring gives each one.",
                 "A caller who leaves an argument out gets its default; another default changes what the call does."),
    "gpt_args": ("TinyGPT must use the arguments it is given: vocab_size, d_model, n_heads, n_layers and dropout passed on "
                 "to the modules it builds, max_seq_len kept as self.max_seq_len.", ""),
    "compare": ("Compare the expected and the actual values shown above: the first mismatch tells where your "
                "computation departs from the contract's formula.",
                "Recompute that entry by hand from the contract, on a small input, and print the intermediate tensors."),
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
    "llama_prenorm": ("Pre-norm: x = x + attn(norm1(x)), then x = x + ffn(norm2(x)); norm1 feeds attention, norm2 "
                      "the feed-forward (SwiGLU).",
                      "Normalising after the residual add (post-norm) or reusing norm1 for the feed-forward gives "
                      "another function of the same weights."),
    "llama_residual": ("Add each sub-layer's output back onto its input: x = x + attn(norm1(x)), then "
                       "x = x + ffn(norm2(x)).", ""),
    "llama_blocks": ("Build n_layers separate LlamaBlocks: nn.ModuleList([LlamaBlock(...) for _ in range(n_layers)]).",
                     "[block] * n_layers repeats one block: every layer then shares the same weights."),
    "llama_args": ("LlamaGPT must pass its arguments on: d_model, n_heads, n_kv_heads and d_ff to each LlamaBlock (and "
                   "LlamaBlock its own to GQAttention and SwiGLU), n_layers blocks in all.", ""),
    "gqa_theta": ("GQAttention must rotate with the theta it was given: rope(q, positions, self.theta) and the same "
                  "for k.", ""),
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
    "cache_keys": ("Cache the keys after rope, each rotated once at its own position (start_pos + 0..T-1): "
                   "rope(k, positions) before cache.update.",
                   "Keys cached unrotated, or rotated at other positions, give the same scores only by the relative "
                   "property of rope; the cache's contract is keys after rope at their positions."),
    "cache_length": ("KVCache.length is the number of cached positions: the time size of layer 0's keys "
                     "(keys[0].size(2)), 0 when empty; not the number of layers filled.", ""),
    "cache_recompute": ("After the prompt, pass only the newest token (idx[:, -1:]) to forward, with the cache.",
                        "Recomputing the whole sequence each step costs O(T) per token; the cache makes it O(1) in the "
                        "model's matmuls."),
    "cache_inside": ("At a step, forward embeds and projects only its new tokens (idx); the earlier positions' keys "
                     "and values come from the cache (what update returns).",
                     "Recomputing the whole sequence inside forward, behind a one-token call, costs as much as no "
                     "cache at all."),
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
    # labs 1-3: diagnoses that name no single cause, and the contract's finer points
    "mismatch": ("Compare the expected and the actual values shown above: run your code on a small input and print "
                 "each intermediate result to find the first step where they part.",
                 "The checker recomputes the expected values independently, from the same inputs and weights; the "
                 "message names the input and the first index that differs."),
    "precision": ("The values are close to the reference but not within tolerance: look for a step computed in lower "
                  "precision (.half(), bfloat16, a float16 softmax) or a small constant added on the way.",
                  "Keep every step in the inputs' dtype; float16 keeps about 3 significant digits, the checks ask "
                  "for about 5."),
    "mask_batch": ("The mask may differ per batch item ((B, Tq, Tk) or (B, 1, Tq, Tk)): let it broadcast against "
                   "the scores (..., Tq, Tk) as it is, without indexing, squeezing or reshaping it.",
                   "Broadcasting aligns dimensions from the right: a (B, 1, T, T) mask squeezed to (B, T, T) lines its "
                   "batch up with the heads of (B, H, T, T) scores."),
    "inplace": ("Leave the caller's tensors as they are: use out-of-place operations (q * scale, ~mask, "
                "scores.masked_fill(...)) instead of in-place ones (q.mul_(...), mask.logical_not_(), "
                "masked_fill_ on an input).",
                "An in-place change to an argument changes the caller's tensor: the same mask or queries reused in "
                "the next call (every layer, every head) are then wrong."),
    "contiguous": ("Your code failed on inputs that are views (transposed, not contiguous): use .reshape(...) (or "
                   ".contiguous().view(...)) where .view(...) fails.",
                   ".view needs memory laid out in order; a transposed tensor is not, and lab 2 hands lab 1 exactly "
                   "such tensors."),
    "mha_spec": ("Keep the module-level mha as the contract builds it: mha = MultiHeadAttention(d_model=16, "
                 "n_heads=4), with dropout left at its default 0.",
                 "Other code imports mha and relies on its sizes, and on its output being deterministic."),
    "shared_state": ("Keep every setting on the instance (self.n_heads = n_heads, self.dropout = nn.Dropout(dropout)), "
                     "never on the class or in a module-level variable.",
                     "An attribute set on the class is shared by every instance: building a second module with "
                     "other settings changes the first one."),
    "grad_partial": ("The output is right but some gradients are not: look for .detach(), .data or torch.no_grad() "
                     "on part of the computation (one of q, k, v, a statistic such as a mean or a variance).",
                     "Every value forward uses must stay in the autograd graph, so that each parameter gets the "
                     "gradient the maths gives it."),
    "layer_norm": ("LayerNorm: (x - mean) / sqrt(var + eps) * weight + bias over the last dimension, with the biased "
                   "variance (unbiased=False), eps inside the square root and the eps the module holds; nn.LayerNorm "
                   "does all of it.",
                   "At inputs of scale 1e-3 the variance is close to eps, so where eps goes and which eps is used "
                   "change the output."),
    "dropout_rate": ("Pass the `dropout` argument itself on to nn.Dropout(dropout): the probability must be the "
                     "caller's, with no dropout at all when it is 0.",
                     "With p = 0.9 far more values are dropped than with p = 0.1; a hard-coded probability gives both "
                     "the same."),
}


from pack.labs import REGISTRY  # noqa: E402  (a lab's own hints live in its registry entry)

for _lab in REGISTRY:
    HINTS.update(_lab.hints)


def hint_text(key, deep: bool = False) -> str:
    first, second = HINTS.get(key, ("", ""))
    return f"{first} {second}".strip() if deep and second else first
