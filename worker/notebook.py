"""The notebooks' helpers (notebooks/labN_*.ipynb), run in the student's Jupyter or Colab kernel.

`setup(lab, root)` registers the `%%lab` cell magic. A cell marked `%%lab <digest>` holds lab code: running it saves
the definitions it holds into the lab file (labs/labN_*.py, the same file a terminal student edits), replacing that
file's definitions of the same names, and then runs it in the kernel. A cell still exactly as shipped (its text
has the digest on its magic line) saves nothing and runs the file's own version of its definitions instead, so work
done in a terminal is never overwritten by a stub and the kernel sees it. `grade(lab)` runs grader.py in a
subprocess (never in the kernel: the kernel is the student's process) and prints its scorecard, colours included.
The `try_*` helpers let a student try their code; an error there is printed, not raised, so a notebook always runs
to its grading cell.

The earlier labs a lab builds on are loaded into the kernel by `earlier_labs`, not by a plain import: a lab file that
is finished and runs is the student's own; one that still has a TODO (a `raise NotImplementedError`), does not parse
or raises when run is replaced by the pack's stand-in (worker/standins/, the code grading uses in its place), or,
where this copy of the pack has none, by a placeholder whose every name says which lab to finish first. Before each
`%%lab` and `%%try` cell, a lab file changed since it was loaded is loaded again (and every earlier lab after it, as
they import it), and the notebook's names that came from it are re-bound, so an edit needs no restart.
"""
import ast
import hashlib
import os
import subprocess
import sys
import traceback
import types
from pathlib import Path

from pack.labs import FILES, LABS, earlier

STATE = {}


def digest(cell: str) -> str:
    """What a `%%lab` line carries: the first 12 hex digits of the sha256 of the shipped cell's stripped text."""
    return hashlib.sha256(cell.strip().encode()).hexdigest()[:12]


def setup(lab: str, root):
    """Prepare the kernel for `lab`: the labs folder on sys.path, the `%%lab` and `%%try` magics registered, the labs
    it builds on loaded (`earlier_labs`)."""
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
    STATE["earlier"] = {}
    for note in earlier_labs(shell.user_ns if shell is not None else None):
        print(note)


# ---- the earlier labs in the kernel -----------------------------------------------------------------------------
class EarlierLab(NotImplementedError):
    """Raised by a placeholder's names: the earlier lab they belong to is not finished and has no stand-in."""


def unfinished(path: Path) -> str:
    """Why the lab file at `path` cannot serve a later lab yet, or "" when it can: it is missing, does not parse, or
    one of its functions or classes still raises NotImplementedError (a TODO)."""
    try:
        tree = ast.parse(path.read_bytes())
    except OSError:
        return "is missing"
    except (SyntaxError, ValueError) as exc:
        return f"has a syntax error (line {getattr(exc, 'lineno', '?')}: {getattr(exc, 'msg', exc)})"
    for node in _defined(tree):
        if node.name == "main":
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Raise) and inner.exc is not None:
                raised = inner.exc.func if isinstance(inner.exc, ast.Call) else inner.exc
                if isinstance(raised, ast.Name) and raised.id == "NotImplementedError":
                    return f"has a TODO left (line {inner.lineno}, in {node.name})"
    return ""


def _module(name: str, path: Path) -> types.ModuleType:
    """Run the file at `path` as module `name`, registered in sys.modules (from its source, never a stale .pyc)."""
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    try:
        exec(compile(path.read_bytes(), str(path), "exec"), module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


class _Unfinished(type):
    """The type of a placeholder's names: any public attribute of one (lab 5's `TinyGPT.generate`) is a function that
    raises, as calling it does."""
    def __getattr__(cls, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return cls.__init__


def _placeholder(lab, why: str) -> types.ModuleType:
    """A module standing for an unfinished lab without a stand-in: each name it is asked for is a class that raises
    EarlierLab when called (or when a class built on it is), so importing from it works and using it says what to do."""
    module = types.ModuleType(lab.module, f"placeholder: labs/{lab.file} {why}")
    message = f"finish lab {lab.number} first: labs/{lab.file} {why}"

    def refuse(*args, **kwargs):
        raise EarlierLab(message)

    def missing(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unfinished(name, (), {"__init__": refuse, "__module__": lab.module, "__doc__": message})
    module.__getattr__ = missing
    module.placeholder = message
    return module


def _load(lab, path: Path) -> tuple:
    """(module, note) for earlier lab `lab`: the student's file when it can serve, else the stand-in or a placeholder,
    with a sentence saying which and why ("" for the student's own)."""
    why = unfinished(path)
    if not why:
        try:
            return _module(lab.module, path), ""
        except Exception as exc:  # noqa: BLE001  (the student's file: say what it raised, use the pack's version)
            why = f"raises {type(exc).__name__} when run ({str(exc).splitlines()[0] if str(exc) else 'no message'})"
    standin = STATE["root"] / "worker" / "standins" / lab.file
    if standin.is_file():
        return _module(lab.module, standin), (f"Lab {lab.number}: labs/{lab.file} {why}, so this notebook runs the "
                                              f"pack's lab {lab.number} in its place until it is finished "
                                              f"(grading does the same).")
    return _placeholder(lab, why), (f"Lab {lab.number}: labs/{lab.file} {why}. This lab builds on it: finish lab "
                                    f"{lab.number} first to try your code here.")


def _signature(path: Path):
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def earlier_labs(namespace: dict = None) -> list:
    """Load each lab the notebook's lab builds on (see the module's docstring), again from the first one whose file
    changed since it was loaded; re-bind the names in `namespace` (the kernel's) that came from a module replaced.
    Returns the notes to print."""
    loaded, notes, replaced = STATE.setdefault("earlier", {}), [], {}
    stale = False
    for name in earlier(STATE["lab"]):
        lab = LABS[name]
        path = STATE["root"] / "labs" / lab.file
        signature, known = _signature(path), loaded.get(lab.module)
        if not stale and known is not None and known[0] == signature and sys.modules.get(lab.module) is known[1]:
            continue
        stale = True
        old = sys.modules.pop(lab.module, None)
        module, note = _load(lab, path)
        sys.modules[lab.module] = module
        if known is not None:
            note = f"labs/{lab.file} changed: loaded it again. {note}".rstrip()
        if note:
            notes.append(note)
        loaded[lab.module] = (signature, module)
        if old is not None and old is not module:
            replaced[id(old)] = module
    if replaced and namespace is not None:
        notes += rebind(namespace, replaced)
    return notes


def rebind(namespace: dict, replaced: dict) -> list:
    """Point the namespace's modules, functions and classes that came from a replaced module (`replaced`: id of the
    old module -> the new one) at the new module's; returns a note for each class of the notebook's own built on an
    old class (its cell must run again)."""
    by_name = {module.__name__: module for module in replaced.values()}
    for key, value in list(namespace.items()):
        if isinstance(value, types.ModuleType) and id(value) in replaced:
            namespace[key] = replaced[id(value)]
        elif isinstance(value, (type, types.FunctionType)) and getattr(value, "__module__", None) in by_name:
            new = getattr(by_name[value.__module__], value.__name__, None)
            if new is not None:
                namespace[key] = new
    notes = []
    for key, value in namespace.items():
        if isinstance(value, type) and value.__module__ == "__main__":
            old = [base.__name__ for base in value.__mro__[1:] if base.__module__ in by_name
                   and getattr(by_name[base.__module__], base.__name__, None) is not base]
            if old:
                notes.append(f"run the cell that defines {key} again: it is built on the old {old[0]}.")
    return notes


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


def _fresh(shell):
    """Before a cell runs: the earlier labs loaded again where their files changed (their notes printed)."""
    for note in earlier_labs(shell.user_ns):
        print(note)


def _todo_line(exc: NotImplementedError) -> str:
    """A TODO reached (NotImplementedError), or an earlier lab to finish first (EarlierLab), in one line."""
    return f"{exc}." if isinstance(exc, EarlierLab) else f"not written yet: {exc}"


def _todo(shell, etype, value, tb, tb_offset=None):
    """IPython's handler for a NotImplementedError raised while a cell ran: one line, not a traceback."""
    print(_todo_line(value))


def _run(shell, source: str):
    """Run `source` as a cell, a NotImplementedError shown by _todo (any other error keeps its traceback)."""
    saved = shell.custom_exceptions, shell.CustomTB
    shell.set_custom_exc((NotImplementedError,), _todo)
    try:
        shell.run_cell(source)
    finally:
        shell.custom_exceptions, shell.CustomTB = saved


def lab_cell(line: str, cell: str):
    """%%lab <digest>: save the cell into the lab file, then run it (or the file's version) in the kernel."""
    from IPython import get_ipython
    shell = get_ipython()
    _fresh(shell)
    _run(shell, save(cell, line.strip()))


def try_cell(line: str, cell: str):
    """%%try: run the cell; an error is shown and the notebook goes on (to its grading cell)."""
    from IPython import get_ipython
    shell = get_ipython()
    _fresh(shell)
    _run(shell, cell)


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
            print(_todo_line(exc))
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
