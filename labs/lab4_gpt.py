"""Lab 4: a tiny GPT, trained on a short repeating text, that samples from it.

Contract:

PATTERN: a short repeating training text.
class CharTokenizer(text): encode(str) -> list[int], decode(list[int]) -> str, vocab_size.
    Each tokenizer has a vocabulary of its own (two built on different texts do not share one).
class TinyGPT(nn.Module)
    __init__(self, vocab_size, d_model=32, n_heads=4, n_layers=2, max_seq_len=32, dropout=0.0)
        tok_emb, pos_emb (learned: nn.Embedding(max_seq_len, d_model)), blocks (nn.ModuleList
        of lab 3's TransformerBlock), ln_f, lm_head (bias optional, weight tying allowed)
    forward(idx (B, T)) -> logits (B, T, vocab_size)
    generate(idx, max_new_tokens, temperature=1.0, top_k=None) -> (B, T + max_new_tokens)
        no gradients; feeds only the last max_seq_len tokens, so it can run past max_seq_len;
        max_new_tokens=0 returns idx; top_k may exceed vocab_size (then every token is kept).
get_batch(data, batch_size, seq_len) -> (x, y): x windows of data, y the same windows shifted by one.
    Each row's window starts at random, drawn afresh on every call: any window may be drawn, the last one
    (start len(data) - seq_len - 1) included, and data may be as short as seq_len + 1 tokens (one window).
train(model, data, steps=200, batch_size=16, seq_len=None, lr=3e-3) -> list[float]
    AdamW on every parameter + cross-entropy on next-token prediction, one loss per step: the mean over the
    whole batch, as computed before that step's update; seq_len defaults to model.max_seq_len.
No torch.manual_seed inside generate, get_batch or train: the caller seeds.
sample(model, tokenizer, prompt, max_new_tokens=40, temperature=1.0, top_k=None) -> str
    the prompt encoded as a (1, T) tensor on the model's device, then generate and decode.

Run `python grader.py lab4`, then `python labs/lab4_gpt.py` to train and sample.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from lab3_block import TransformerBlock

PATTERN = "hello transformer! "


class CharTokenizer:
    def __init__(self, text: str):
        # TODO: build the vocabulary (one id per distinct character) and set self.vocab_size
        raise NotImplementedError("lab4_gpt: build the vocabulary (one id per distinct character) and set self.vocab_size")

    def encode(self, s: str) -> list:
        # TODO: map each character to its id
        raise NotImplementedError("lab4_gpt: map each character to its id")

    def decode(self, ids) -> str:
        # TODO: map each id back to its character and join
        raise NotImplementedError("lab4_gpt: map each id back to its character and join")


class TinyGPT(nn.Module):
    def __init__(self, vocab_size: int, d_model: int = 32, n_heads: int = 4, n_layers: int = 2,
                 max_seq_len: int = 32, dropout: float = 0.0):
        super().__init__()
        self.max_seq_len = max_seq_len
        # TODO: create tok_emb, pos_emb (nn.Embedding(max_seq_len, d_model)), blocks, ln_f and lm_head
        raise NotImplementedError("lab4_gpt: create tok_emb, pos_emb (nn.Embedding(max_seq_len, d_model)), blocks, ln_f and lm_head")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        # TODO: token + position embeddings, the blocks, ln_f, lm_head
        raise NotImplementedError("lab4_gpt: token + position embeddings, the blocks, ln_f, lm_head")

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k=None):
        # TODO: repeat: crop to the last max_seq_len tokens, take the last logits / temperature, keep the top_k, sample, append
        raise NotImplementedError("lab4_gpt: repeat: crop to the last max_seq_len tokens, take the last logits / temperature, keep the top_k, sample, append")


def get_batch(data: torch.Tensor, batch_size: int, seq_len: int):
    # TODO: pick batch_size random starts; x = data[i:i+seq_len], y = data[i+1:i+seq_len+1]
    raise NotImplementedError("lab4_gpt: pick batch_size random starts; x = data[i:i+seq_len], y = data[i+1:i+seq_len+1]")


def train(model: TinyGPT, data: torch.Tensor, steps: int = 200, batch_size: int = 16, seq_len=None,
          lr: float = 3e-3) -> list:
    # TODO: AdamW; each step: get_batch, logits, cross-entropy over (B*T, vocab), backward, step; log loss.item()
    raise NotImplementedError("lab4_gpt: AdamW; each step: get_batch, logits, cross-entropy over (B*T, vocab), backward, step; log loss.item()")


def sample(model: TinyGPT, tokenizer: CharTokenizer, prompt: str, max_new_tokens: int = 40,
           temperature: float = 1.0, top_k=None) -> str:
    # TODO: encode the prompt as a (1, T) tensor on the model's device, generate, decode
    raise NotImplementedError("lab4_gpt: encode the prompt as a (1, T) tensor on the model's device, generate, decode")


def main(steps: int = 200, chunk: int = 10):
    """Train on PATTERN with a progress bar, then sample at a few temperatures."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead
    tok = CharTokenizer(PATTERN)
    data = torch.tensor(tok.encode(PATTERN * 50), dtype=torch.long)
    model = TinyGPT(tok.vocab_size)
    losses = []
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
               TextColumn("{task.fields[rate]:.0f} steps/s"), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("train", total=steps, loss=float("nan"), rate=0.0)
        while len(losses) < steps:  # train in chunks so the bar moves (each chunk starts a fresh optimizer)
            losses += train(model, data, steps=min(chunk, steps - len(losses)))
            elapsed = progress.tasks[0].elapsed or 1e-9
            progress.update(task, completed=len(losses), loss=losses[-1], rate=len(losses) / elapsed)
    console = Console()
    console.print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} after {len(losses)} steps")
    for temperature in (0.5, 1.0, 1.5):
        text = sample(model, tok, "hello", 60, temperature=temperature)
        console.print(f"temperature {temperature}: {text!r}", highlight=False)


if __name__ == "__main__":
    main()
