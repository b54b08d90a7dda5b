"""Mutants of solutions/ (tools/mutate.py) that survive grading because they change nothing the contract asks for.

Each entry is a mutant's id (lab:function:operator:old -> new) and the reason it is equivalent. Reviewed by hand:
an entry whose mutant the checks should kill is a gap to fix in the checks, not a line to add here.
tests/test_mutate.py grades every entry and fails when one is killed (then it is not equivalent: remove it).
"""
_TRAIN_MODE = "the contract's models have dropout 0.0 unless asked, where train and eval mode compute the same, and " \
              "the contract does not say which mode {} leaves the model in"
_ZERO_GRAD = "every parameter gets a gradient each step, so zeroed and cleared gradients give AdamW the same update"

EQUIVALENT = {
    "lab4:TinyGPT.__init__:constant:False -> True": "the contract: lm_head's bias is optional",
    "lab4:TinyGPT.__init__:drop keyword:nn.Linear(d_model, vocab_size, bias=False) -> nn.Linear(d_model, vocab_size)":
        "the contract: lm_head's bias is optional",
    "lab4:train:drop statement:model.train() -> pass": _TRAIN_MODE.format("train"),
    "lab4:sample:drop statement:model.eval() -> pass": _TRAIN_MODE.format("sample"),
    "lab4:train:constant:True -> False": _ZERO_GRAD,
    "lab4:train:drop keyword:optimizer.zero_grad(set_to_none=True) -> optimizer.zero_grad()": _ZERO_GRAD,
    "lab4:sample:drop keyword:torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device) -> "
    "torch.tensor([tokenizer.encode(prompt)], device=device)": "a tensor of Python ints is int64 (torch.long) anyway",
    "lab5:rope:drop keyword:torch.arange(0, d, 2, device=x.device, dtype=torch.float32) -> "
    "torch.arange(0, d, 2, device=x.device)": "an integer arange divided by d is float32 anyway (true division)",
    "lab1:scaled_dot_product_attention:swap name:q -> k": "the contract: q and k share their last dimension d_k",
    "lab5:GQAttention.forward:drop keyword:torch.arange(T, device=x.device) -> torch.arange(T)":
        "rope takes positions as any ints and moves them to x's device, so positions made on the CPU work anywhere",
    "lab6:attend:swap name:k -> v #3": "the cache holds as many values as keys: k.size(2) is v.size(2)",
    "lab6:generate_cached:drop keyword:model(idx, cache=cache, start_pos=0) -> model(idx, cache=cache)":
        "start_pos defaults to 0",
}
