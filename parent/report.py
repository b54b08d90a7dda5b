"""What the grader shows: a rich scorecard for people and a Gradescope-format results.json for machines.

Every text either one shows goes through verdict.clean (no control characters, nothing UTF-8 cannot encode), and
the scorecard reaches a console that cannot encode a character as "?" rather than failing."""
import json
import math
import os
import sys
import tempfile

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pack.hints import hint_text
from pack.labs import LABS
from parent.verdict import clean

STYLE = {"passed": "bold green", "failed": "bold red", "not started": "bold yellow"}


def console() -> Console:
    """Colour only on a terminal (rich also honours NO_COLOR); a fixed, readable width when piped."""
    tty = sys.stdout.isatty()
    return Console(highlight=False, soft_wrap=False, width=None if tty else 110, color_system="auto" if tty else None)


SHADES = "·░▒▓█"  # 0, then quarters of the way to 1
SPARKS = "▁▂▃▄▅▆▇█"


def finite(v):
    """v as a float, or None when it is not a finite number (NaN, inf, not a number at all)."""
    try:
        v = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def number(v, digits: int = 3) -> str:
    """A value as the scorecard shows it: `digits` decimals, or what it is (nan, inf, -inf, ?)."""
    f = finite(v)
    if f is not None:
        return f"{f:.{digits}f}" if abs(f) < 1e6 else f"{f:.3g}"
    try:
        return str(float(v))
    except (TypeError, ValueError, OverflowError):
        return "?"


def shade(v) -> str:
    v = finite(v)
    if v is None:
        return "?"
    return SHADES[0] if v <= 1e-6 else SHADES[1 + min(3, int(min(v, 1.0) * 4))]


def heatmap(fig) -> Group:
    """The student's attention weights beside the expected ones, one character pair per weight (? where a weight
    is NaN or infinite)."""
    grid = Table.grid(padding=(0, 4))
    panes = []
    for label, rows in (("yours", fig.got), ("expected", fig.want)):
        pane = Text(f"{label} (row = query, column = key)\n", style="bold")
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                f = finite(v)
                leak = label == "yours" and (f is None or j > i and f > 1e-6)
                grey = 30 + int(70 * min(max(f or 0.0, 0.0), 1.0))
                pane.append(shade(v) * 2, style="bold red" if leak else f"grey{grey}")
            total = sum(finite(v) for v in row) if all(finite(v) is not None for v in row) else float("nan")
            pane.append(f" {number(total, 2)}\n", style="dim")
        panes.append(pane)
    grid.add_row(*panes)
    return Group(Text(clean(fig.title), style="italic"), grid,
                 Text("· 0   ░ < .25   ▒ < .5   ▓ < .75   █ ≥ .75   ? NaN/inf   (row sums at the right)", style="dim"))


def sparkline(values, width: int = 48) -> str:
    """One bar per chunk of values; `!` for a chunk holding a NaN or an infinite value."""
    if not values:
        return ""
    step = max(1, len(values) // width)
    chunks = [values[i:i + step] for i in range(0, len(values), step)]
    means = [sum(map(finite, c)) / len(c) if all(finite(x) is not None for x in c) else None for c in chunks]
    seen = [m for m in means if m is not None and math.isfinite(m)]
    if not seen:
        return "!" * len(means)
    low, high = min(seen), max(seen)

    def bar(m):
        if m is None or not math.isfinite(m):
            return "!"
        frac = (m / 2 - low / 2) / (high / 2 - low / 2) if high > low else 0.0  # halves: no overflow at 1e308
        return SPARKS[int(min(max(frac, 0.0), 1.0) * (len(SPARKS) - 1))]
    return "".join(map(bar, means))


def figure_view(fig):
    """A figure a check attached, drawn; a figure that cannot be drawn says so instead of breaking the scorecard."""
    try:
        if fig.kind == "heatmap":
            return heatmap(fig)
        if fig.kind == "losses" and fig.values:
            v = fig.values
            return Text(f"loss {number(v[0])} → {number(v[-1])} over {len(v)} steps  {sparkline(v)}")
        if fig.kind == "text":
            return Text(f"{clean(fig.label) or 'text'}: {fig.text!r}")
    except Exception as exc:  # a figure is an extra: the verdicts stand without it
        return Text(f"(this figure could not be drawn: {type(exc).__name__})", style="dim")
    return None


def check_text(check, hints: bool, verbose: bool) -> Text:
    text = Text(clean(check.message or ""))
    if not check.passed and check.hint:
        text.append(("\n" if text else "") + "Hint: " + hint_text(check.hint, deep=hints), style="cyan")
    if verbose and check.traceback:
        text.append("\n" + clean(check.traceback).rstrip(), style="dim")
    elif check.trace and check.kind not in ("assert", "not_started"):
        text.append("\nyour code, innermost last:\n  " + "\n  ".join(map(clean, check.trace)), style="dim")
    return text


NARROW = 100  # below this many columns, a check's message goes under its name


def lab_panel(result, hints: bool = False, verbose: bool = False, width: int = 110) -> Panel:
    table = Table(show_header=False, box=None, expand=True, padding=(0, 1))
    table.add_column(width=1)
    narrow = width < NARROW
    if narrow:
        table.add_column(ratio=1, overflow="fold")
    else:
        table.add_column(width=36, no_wrap=True, overflow="ellipsis")
    table.add_column(justify="right", width=5)
    if not narrow:
        table.add_column(ratio=1, overflow="fold")
    # one exception met by several checks is shown once, on the first of them
    same = {}
    key = lambda c: (c.kind, c.message.split(":", 1)[0], tuple(c.trace))  # noqa: E731  (type and frames)
    for c in result.checks:
        if not c.passed and c.trace:
            same.setdefault(key(c), []).append(c)
    for c in result.checks:
        # a check that passed but earns nothing (its lab was voided: forbidden, say) is neither ticked nor crossed
        # a check failed because of an earlier lab (no points at stake here) is flagged, not crossed; one that did
        # not apply is dashed
        mark = Text("!", style="yellow") if c.blame and not c.passed else Text("✗", style="red") if not c.passed \
            else Text("–") if c.skipped or c.score != c.points else Text("✓", style="green")
        message = check_text(c, hints, verbose) if not c.passed else Text(clean(c.message), style="dim") if c.skipped \
            else Text(clean(c.doc), style="dim") if verbose else Text("")
        group = same.get(key(c), []) if not c.passed and c.trace else []
        if len(group) > 1 and group[0] is not c:
            message = Text(f"the same error as in “{clean(group[0].title)}”", style="dim")
        elif len(group) > 1:
            message.append(f"\n(the same error in {len(group) - 1} more check{'s' if len(group) > 2 else ''})", style="dim")
        title = clean(c.title) + (" (hidden)" if c.hidden else "")  # an instructor's copy: held back from students
        if narrow:
            name = Text(title, style="bold")
            if message:
                name.append("\n")
                name.append_text(message)
            table.add_row(mark, name, f"{c.score}/{c.points}")
        else:
            table.add_row(mark, title, f"{c.score}/{c.points}", message)
    parts = [table]
    drawn = set()
    for c in result.checks:
        figures = [f for f in c.figures if f.kind not in drawn]  # one heatmap per lab is enough
        drawn |= {f.kind for f in figures if f.kind == "heatmap"}
        views = [v for v in map(figure_view, figures) if v is not None]
        if views:
            parts += [Text(f"{clean(c.title)}:", style="bold"), *views]
    if result.detail and result.status != "failed":
        parts.insert(0, Text(clean(result.detail), style=STYLE.get(result.status, "bold magenta")))
    for note in result.notes:
        parts.append(Text("→ " + clean(note), style="yellow"))
    count, worth = result.held_back
    if count:
        parts.append(Text(f"+ {count} more check{'s' if count > 1 else ''} ({worth} point{'s' if worth != 1 else ''}) "
                          "will run when you submit: the contract, on sizes and values these checks do not use.",
                          style="dim"))
    if result.output.strip() and (verbose or result.status in ("error", "crashed", "exited", "timeout", "out of memory")):
        tail = "\n".join(clean(result.output).strip().splitlines()[-15:])
        parts.append(Text("What your code printed (last lines):\n" + tail, style="dim"))
    if result.internal.strip() and verbose and result.status == "error":
        tail = "\n".join(clean(result.internal).strip().splitlines()[-15:])
        parts.append(Text("The grader's own output (last lines):\n" + tail, style="dim"))
    title = f"Lab {LABS[result.lab].number} · {LABS[result.lab].title}"
    subtitle = f"{clean(result.status)} · {result.score}/{result.max_score}"
    return Panel(Group(*parts), title=title, title_align="left", subtitle=subtitle, subtitle_align="right",
                 border_style=STYLE.get(result.status, "magenta"))


def emit(out: Console, renderable):
    """Print on `out`; where its file's encoding is not UTF (ascii, a Windows code page) a character it cannot encode
    is written as "?" instead of failing the whole scorecard."""
    encoding = out.encoding
    if encoding.replace("-", "").replace("_", "").startswith("utf"):
        out.print(renderable)
        return
    with out.capture() as captured:
        out.print(renderable)
    out.file.write(captured.get().encode(encoding, "replace").decode(encoding))
    out.file.flush()


def print_scorecard(results, out: Console, hints=False, verbose=False, source="", elapsed=0.0):
    for r in results:
        emit(out, lab_panel(r, hints, verbose, out.width))
    total, best = sum(r.score for r in results), sum(r.max_score for r in results)
    verdicts = ", ".join(f"lab {LABS[r.lab].number} {clean(r.status)}" for r in results)
    device = clean(results[0].device) if results else ""
    emit(out, Text(f"Total {total}/{best}  ({verdicts})  [{clean(source)}, {device}, {elapsed:.1f} s]",
                   style="bold green" if total == best and all(r.status == "passed" for r in results) else "bold"))


ADVICE = "Advice only (0 points: this does not change your score):"
WHEN = {"after_due_date": "after the due date", "after_published": "once grades are published",
        "hidden": "to the course staff only", "visible": "with the others"}


def results_json(results, elapsed: float, error: str = None, visibility: str = "visible",
                 hidden_visibility: str = "after_due_date") -> dict:
    """Gradescope's results.json: one test per check, tagged with its lab; checks held back for submission get
    `hidden_visibility`. A lab's notes (fix an earlier lab first) go in the summary and in its checks' output. A check
    worth 0 points that did not pass is never a failed test (Gradescope would show it as a red 0/0 failure): it is
    a passed test whose output starts with ADVICE and says what the check found.

    When the held-back checks are not shown with the others (`hidden_visibility` is not `visibility`), what shows
    with the others (the summary, `output`, and every visible test) is the lab as its visible checks alone have it
    (LabResult.shown): their status, points, detail and notes, so nothing there tells how a held-back check did.
    The total `score` counts every check (it is the grade): keep it from students until the due date with
    Gradescope's own setting (README, Gradescope)."""
    apart = hidden_visibility != visibility
    tests = []
    for r in results:
        view = r.shown if apart and r.shown is not None else r
        for i, c in enumerate(r.checks, 1):
            lab = r if c.hidden else view
            output = c.message if not c.passed else ""
            if not c.passed and c.hint:
                output += f"\nHint: {hint_text(c.hint)}"
            if c.skipped:
                output = c.message
            if lab.status not in ("passed", "failed"):
                output = f"[lab {lab.status}: {lab.detail}]\n{output}".strip()
            # a check worth no points is advice: Gradescope shows a failed test as a red failure even at 0/0, so it
            # stays a passed test (it costs nothing) and its output says what it found
            advice = not c.passed and c.points == 0
            if advice:
                output = f"{ADVICE}\n{output}"
            tests.append({"name": f"{r.lab} · {c.title}", "number": f"{LABS[r.lab].number}.{i}", "score": c.score,
                          "max_score": c.points,
                          "status": "passed" if advice or c.passed and c.score == c.points else "failed",
                          "output": output.strip(), "output_format": "text", "tags": [r.lab],
                          "visibility": hidden_visibility if c.hidden else visibility})
    summary = []
    for r in results:
        view = r.shown if apart and r.shown is not None else r
        line = f"{r.lab}: {view.status} {view.score}/{view.max_score}"
        if view is not r:
            held = [c for c in r.checks if c.hidden]
            points = sum(c.points for c in held)
            line += (f" (visible checks; {len(held)} held-back check{'s' if len(held) > 1 else ''}, {points} "
                     f"point{'s' if points != 1 else ''}, shown {WHEN.get(hidden_visibility, 'later')})")
        summary.append(line + (f" ({view.detail})" if view.detail else "") + "".join(f"\n  {note}" for note in view.notes))
    if error:
        summary.append(f"grading error: {error}")
    return plain({"score": sum(r.score for r in results), "execution_time": round(elapsed, 2),
                  "output": "\n".join(summary), "output_format": "text", "visibility": visibility,
                  "stdout_visibility": "hidden",
                  "extra_data": {"labs": {r.lab: {"status": r.status, "detail": r.detail, "score": r.score,
                                                  "max_score": r.max_score, "notes": r.notes,
                                                  "seconds": round(r.seconds, 3), "device": r.device}
                                          for r in results}, "error": error},
                  "tests": tests})


def plain(value):
    """`value` as strict JSON can carry it: every text through clean, every non-finite number (NaN, inf) as null."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {clean(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def write_atomic(path, text: str):
    """Write a results file as the grader's own: a fresh temporary file (created exclusively, under a random name)
    in the same folder, then renamed over `path`, so nothing another process made at either name is written."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path, results, elapsed: float, error: str = None, visibility: str = "visible",
               hidden_visibility: str = "after_due_date"):
    write_atomic(path, json.dumps(results_json(results, elapsed, error, visibility, hidden_visibility), indent=2))
