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
        # BEGIN SOLUTION: build the vocabulary (one id per distinct character) and set self.vocab_size
        chars = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.itos = dict(enumerate(chars))
        self.vocab_size = len(chars)
        # END SOLUTION

    def encode(self, s: str) -> list:
        # BEGIN SOLUTION: map each character to its id
        return [self.stoi[ch] for ch in s]
        # END SOLUTION

    def decode(self, ids) -> str:
        # BEGIN SOLUTION: map each id back to its character and join
        return "".join(self.itos[int(i)] for i in ids)
        # END SOLUTION


class TinyGPT(nn.Module):
    def __init__(self, vocab_size: int, d_model: int = 32, n_heads: int = 4, n_layers: int = 2,
                 max_seq_len: int = 32, dropout: float = 0.0):
        super().__init__()
        self.max_seq_len = max_seq_len
        # BEGIN SOLUTION: create tok_emb, pos_emb (nn.Embedding(max_seq_len, d_model)), blocks, ln_f and lm_head
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([TransformerBlock(d_model, n_heads, dropout) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        # END SOLUTION

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        # BEGIN SOLUTION: token + position embeddings, the blocks, ln_f, lm_head
        pos = torch.arange(T, device=idx.device)  # (T,), on the same device as idx
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, vocab_size)
        # END SOLUTION

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k=None):
        # BEGIN SOLUTION: repeat: crop to the last max_seq_len tokens, take the last logits / temperature, keep the top_k, sample, append
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.max_seq_len:])[:, -1, :] / temperature  # (B, vocab)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_id = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
        return idx
        # END SOLUTION


def get_batch(data: torch.Tensor, batch_size: int, seq_len: int):
    # BEGIN SOLUTION: pick batch_size random starts; x = data[i:i+seq_len], y = data[i+1:i+seq_len+1]
    starts = torch.randint(len(data) - seq_len, (batch_size,)).tolist()
    x = torch.stack([data[i:i + seq_len] for i in starts])  # (B, T)
    y = torch.stack([data[i + 1:i + seq_len + 1] for i in starts])  # (B, T), shifted by one
    return x, y
    # END SOLUTION


def train(model: TinyGPT, data: torch.Tensor, steps: int = 200, batch_size: int = 16, seq_len=None,
          lr: float = 3e-3) -> list:
    # BEGIN SOLUTION: AdamW; each step: get_batch, logits, cross-entropy over (B*T, vocab), backward, step; log loss.item()
    seq_len = seq_len or model.max_seq_len
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        x, y = get_batch(data, batch_size, seq_len)
        logits = model(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
    # END SOLUTION


def sample(model: TinyGPT, tokenizer: CharTokenizer, prompt: str, max_new_tokens: int = 40,
           temperature: float = 1.0, top_k=None) -> str:
    # BEGIN SOLUTION: encode the prompt as a (1, T) tensor on the model's device, generate, decode
    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    model.eval()
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k)
    return tokenizer.decode(out[0].tolist())
    # END SOLUTION


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
