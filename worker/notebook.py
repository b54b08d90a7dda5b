"""The notebooks' helpers (notebooks/labN_*.ipynb), run in the student's Jupyter or Colab kernel.

`setup(lab, root)` registers the `%%lab` cell magic. A cell marked `%%lab <digest>` holds lab code: running it saves
the definitions it holds into the lab file (labs/labN_*.py, the same file a terminal student edits), replacing that
file's definitions of the same names, and then runs it in the kernel. A cell still exactly as shipped (its text
has the digest on its magic line) saves nothing and runs the file's own version of its definitions instead, so work
done in a terminal is never overwritten by a stub and the kernel sees it. `grade(lab)` runs grader.py in a
subprocess (never in the kernel: the kernel is the student's process) and prints its scorecard, colours included.
The `try_*` helpers let a student try their code; an error there is printed, not raised, so a notebook always runs
to its grading cell.
"""
import ast
import hashlib
import os
import subprocess
import sys
import traceback
from pathlib import Path

from pack.labs import FILES, LABS

STATE = {}


def digest(cell: str) -> str:
    """What a `%%lab` line carries: the first 12 hex digits of the sha256 of the shipped cell's stripped text."""
    return hashlib.sha256(cell.strip().encode()).hexdigest()[:12]


def setup(lab: str, root):
    """Prepare the kernel for `lab`: the labs folder on sys.path, the `%%lab` and `%%try` magics registered."""
    root = Path(root)
    folder = root / "labs"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    STATE.update(lab=lab, root=root, file=folder / FILES[lab])
    import torch
    torch.set_num_threads(1)  # the labs' tensors are tiny: more threads only cost
    from IPython import get_ipython
    shell = get_ipython()
    if shell is not None:
        shell.register_magic_function(lab_cell, "cell", "lab")
        shell.register_magic_function(try_cell, "cell", "try")
    print(f"Lab {LABS[lab].number}: running a %%lab cell saves it into {STATE['file'].relative_to(root)}; the last cell grades it.")


# ---- one cell into the lab file ---------------------------------------------------------------------------------
def _defined(tree) -> list:
    """The top-level functions and classes of a parsed module, in order."""
    return [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def _span(lines: list, nodes: list) -> tuple:
    """(first, last) line numbers (1-based) of nodes, decorators and the comment lines just above included."""
    first = min(min([d.lineno for d in n.decorator_list] + [n.lineno]) for n in nodes)
    while first > 1 and lines[first - 2].lstrip().startswith("#"):
        first -= 1
    return first, max(n.end_lineno for n in nodes)


def file_version(text: str, cell: str):
    """The lab file's own source of the definitions `cell` holds, or None when it has none of them (or does not parse)."""
    try:
        names = {n.name for n in _defined(ast.parse(cell))}
        tree = ast.parse(text)
    except SyntaxError:
        return None
    nodes = [n for n in _defined(tree) if n.name in names]
    if not nodes:
        return None
    lines = text.splitlines(keepends=True)
    first, last = _span(lines, nodes)
    return "".join(lines[first - 1:last])


def spliced(text: str, cell: str) -> str:
    """The lab file's text with the definitions `cell` holds replaced by the cell (from the first of them to the last),
    or the cell added before the `if __name__ == "__main__":` block when the file has none of them. Raises
    SyntaxError when the file or the cell does not parse."""
    defined = _defined(ast.parse(cell))
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    names = {n.name for n in defined}
    nodes = [n for n in _defined(tree) if n.name in names]
    block = cell.strip("\n") + "\n"
    if nodes:
        first, last = _span(lines, nodes)
        return "".join(lines[:first - 1]) + block + "".join(lines[last:])
    main = next((n.lineno for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)),
                len(lines) + 1)
    return "".join(lines[:main - 1]).rstrip("\n") + "\n\n\n" + block + "\n\n" + "".join(lines[main - 1:])


def save(cell: str, shipped: str = "") -> str:
    """Save the cell into the lab file (see the module's docstring); returns the source the kernel should run."""
    path = STATE["file"]
    text = path.read_text() if path.is_file() else ""
    try:
        defined = _defined(ast.parse(cell))
    except SyntaxError as exc:
        print(f"not saved: this cell has a syntax error (line {exc.lineno}: {exc.msg}); {path.name} is unchanged.")
        return cell
    if not defined:  # imports: they are in the file already
        return cell
    if shipped and digest(cell) == shipped:  # the cell as shipped: the file's own version wins
        return file_version(text, cell) or cell
    try:
        new = spliced(text, cell)
    except SyntaxError as exc:
        print(f"not saved: {path.name} has a syntax error (line {exc.lineno}: {exc.msg}): fix it there first.")
        return cell
    if new != text:
        if text:
            path.with_name(f".{path.name}.bak").write_text(text)  # the previous version, one step back
        path.write_text(new)
    return cell


def lab_cell(line: str, cell: str):
    """%%lab <digest>: save the cell into the lab file, then run it (or the file's version) in the kernel."""
    from IPython import get_ipython
    get_ipython().run_cell(save(cell, line.strip()))


def try_cell(line: str, cell: str):
    """%%try: run the cell; an error is shown and the notebook goes on (to its grading cell)."""
    from IPython import get_ipython
    get_ipython().run_cell(cell)


# ---- grading ------------------------------------------------------------------------------------------------------
def grade(lab: str = None, *options: str):
    """Run `python grader.py LAB OPTIONS` on the lab files in a subprocess and print its scorecard (its exit code is
    kept in STATE["exit"])."""
    lab = lab or STATE["lab"]
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "110"}  # rich: colour and width, for the cell's output
    proc = subprocess.run([sys.executable, str(STATE["root"] / "grader.py"), lab, *options], cwd=STATE["root"],
                          capture_output=True, text=True, env=env)
    print(proc.stdout + proc.stderr, end="")
    print(f"\nTo submit, hand in {STATE['file'].relative_to(STATE['root'])} (this notebook saved your cells there).")
    if "google.colab" in sys.modules:
        print(f"On Colab: from google.colab import files; files.download({str(STATE['file'])!r})")
    STATE["exit"] = proc.returncode


# ---- trying code out --------------------------------------------------------------------------------------------
def _guarded(fn):
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotImplementedError as exc:
            print(f"not written yet: {exc}")
        except Exception:  # noqa: BLE001  (the student's code: show what went wrong, keep the notebook going)
            print("your code raised an error (the last lines are yours):")
            traceback.print_exc(limit=-4, file=sys.stdout)
    run.__doc__, run.__name__ = fn.__doc__, fn.__name__
    return run


def _plot(draw):
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        print("(install matplotlib to see the plot)")
        return
    fig = plt.figure(figsize=(4, 3))
    draw(plt)
    plt.tight_layout()
    plt.show()
    plt.close(fig)


@_guarded
def try_attention(attention, causal_mask, T: int = 6, d_k: int = 8):
    """Shapes, row sums and a heatmap of your attention weights on random inputs with a causal mask."""
    import torch
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, T, d_k) for _ in range(3))
    out, weights = attention(q, k, v, causal_mask(T))
    print(f"out {tuple(out.shape)}, weights {tuple(weights.shape)}, row sums {weights.sum(-1)[0].tolist()}")
    _plot(lambda plt: (plt.imshow(weights[0].detach(), cmap="viridis"), plt.colorbar(),
                       plt.title("weights: query (row) x key (column)")))


@_guarded
def try_module(make, shape=(2, 6, 16), *args):
    """Build make(*args), run it on random inputs of `shape`, print the output's shape."""
    import torch
    torch.manual_seed(0)
    module = make(*args)
    out = module(torch.randn(*shape))
    print(f"{type(module).__name__}: input {tuple(shape)} -> output {tuple(out.shape)}, "
          f"{sum(p.numel() for p in module.parameters())} parameters")


@_guarded
def try_gpt(model_class, tokenizer_class, train, sample, text: str, steps: int = 100):
    """Train model_class on `text` with `train` (max_seq_len=16), plot the losses and print a sample."""
    import torch
    torch.manual_seed(0)
    tok = tokenizer_class(text)
    model = model_class(tok.vocab_size, max_seq_len=16)
    losses = train(model, torch.tensor(tok.encode(text * 20)), steps=steps)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} after {len(losses)} steps")
    _plot(lambda plt: (plt.plot(losses), plt.xlabel("step"), plt.ylabel("loss")))
    print("greedy sample:", repr(sample(model, tok, text[:5], 40, top_k=1)))


@_guarded
def try_rope(rope, d: int = 8):
    """rope keeps lengths, and q . k depends on the distance between positions only."""
    import torch
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)
    for m, n in ((2, 0), (7, 5), (30, 28)):
        score = (rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum().item()
        print(f"positions ({m}, {n}): q . k = {score:+.4f}")
    print(f"|q| = {q.norm():.4f}, |rope(q)| at position 5 = {rope(q, torch.tensor([5])).norm():.4f}")


@_guarded
def try_cache(model_class, generate_cached, new_tokens: int = 100):
    """The same greedy tokens with and without the cache, and the time each takes, on a 4-layer model."""
    import time
    import torch
    torch.manual_seed(0)
    model = model_class(64, d_model=64, n_layers=4, max_seq_len=256).eval()
    prompt = torch.randint(64, (1, 4))
    timings = {}
    for name, run in (("cached", lambda: generate_cached(model, prompt, new_tokens, top_k=1)),
                      ("uncached", lambda: model.generate(prompt, new_tokens, top_k=1))):
        start = time.perf_counter()
        timings[name] = (run(), time.perf_counter() - start)
    same = torch.equal(timings["cached"][0], timings["uncached"][0])
    print(f"same tokens: {same}; cached {timings['cached'][1]:.2f} s, uncached {timings['uncached'][1]:.2f} s")
