"""What the grader shows: a rich scorecard for people and a Gradescope-format results.json for machines."""
import json
import os
import sys
import tempfile

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from checkers.common import LABS
from grading.verdict import hint_text

STYLE = {"passed": "bold green", "failed": "bold red", "not started": "bold yellow"}


def console() -> Console:
    """Colour only on a terminal (rich also honours NO_COLOR); a fixed, readable width when piped."""
    tty = sys.stdout.isatty()
    return Console(highlight=False, soft_wrap=False, width=None if tty else 110, color_system="auto" if tty else None)


SHADES = "·░▒▓█"  # 0, then quarters of the way to 1
SPARKS = "▁▂▃▄▅▆▇█"


def shade(v: float) -> str:
    return SHADES[0] if v <= 1e-6 else SHADES[1 + min(3, int(v * 4))]


def heatmap(fig) -> Group:
    """The student's attention weights beside the expected ones, one character pair per weight."""
    grid = Table.grid(padding=(0, 4))
    panes = []
    for label, rows in (("yours", fig["got"]), ("expected", fig["want"])):
        pane = Text(f"{label} (row = query, column = key)\n", style="bold")
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                leak = j > i and v > 1e-6 and label == "yours"
                pane.append(shade(v) * 2, style="bold red" if leak else f"grey{min(100, 30 + int(70 * v))}")
            pane.append(f" {sum(row):.2f}\n", style="dim")
        panes.append(pane)
    grid.add_row(*panes)
    return Group(Text(fig.get("title", ""), style="italic"), grid,
                 Text("· 0   ░ < .25   ▒ < .5   ▓ < .75   █ ≥ .75   (row sums at the right)", style="dim"))


def sparkline(values, width: int = 48) -> str:
    if not values:
        return ""
    step = max(1, len(values) // width)
    means = [sum(values[i:i + step]) / len(values[i:i + step]) for i in range(0, len(values), step)]
    low, high = min(means), max(means)
    return "".join(SPARKS[int((v - low) / (high - low + 1e-12) * (len(SPARKS) - 1))] for v in means)


def figure_view(fig):
    if fig.get("kind") == "heatmap":
        return heatmap(fig)
    if fig.get("kind") == "losses" and fig.get("values"):
        v = fig["values"]
        return Text(f"loss {v[0]:.3f} → {v[-1]:.3f} over {len(v)} steps  {sparkline(v)}")
    if fig.get("kind") == "text":
        return Text(f"{fig.get('label', 'text')}: {fig.get('text', '')!r}")
    return None


def check_text(check, hints: bool, verbose: bool) -> Text:
    text = Text(check.message or "")
    if not check.passed and check.hint:
        text.append(("\n" if text else "") + "Hint: " + hint_text(check.hint, deep=hints), style="cyan")
    if verbose and check.traceback:
        text.append("\n" + check.traceback.rstrip(), style="dim")
    elif check.trace and check.kind not in ("assert", "not_started"):
        text.append("\nyour code, innermost last:\n  " + "\n  ".join(check.trace), style="dim")
    return text


def lab_panel(result, hints: bool = False, verbose: bool = False) -> Panel:
    table = Table(show_header=False, box=None, expand=True, padding=(0, 1))
    table.add_column(width=1)
    table.add_column(width=32, no_wrap=True, overflow="ellipsis")
    table.add_column(justify="right", width=5)
    table.add_column(ratio=1, overflow="fold")
    for c in result.checks:
        mark = Text("✓", style="green") if c.passed else Text("✗", style="red")
        table.add_row(mark, c.title, f"{c.score}/{c.points}", check_text(c, hints, verbose) if not c.passed else
                      Text(c.doc, style="dim") if verbose else "")
    parts = [table]
    drawn = set()
    for c in result.checks:
        figures = [f for f in c.figures if f.get("kind") not in drawn]  # one heatmap per lab is enough
        drawn |= {f.get("kind") for f in figures if f.get("kind") == "heatmap"}
        views = [v for v in map(figure_view, figures) if v is not None]
        if views:
            parts += [Text(f"{c.title}:", style="bold"), *views]
    if result.detail and result.status != "failed":
        parts.insert(0, Text(result.detail, style=STYLE.get(result.status, "bold magenta")))
    for note in result.notes:
        parts.append(Text("→ " + note, style="yellow"))
    if result.output.strip() and (verbose or result.status in ("error", "crashed", "exited", "timeout", "out of memory")):
        tail = "\n".join(result.output.strip().splitlines()[-15:])
        parts.append(Text("Output of the code (last lines):\n" + tail, style="dim"))
    title = f"Lab {result.lab[3]} · {LABS[result.lab][1]}"
    subtitle = f"{result.status} · {result.score}/{result.max_score}"
    return Panel(Group(*parts), title=title, title_align="left", subtitle=subtitle, subtitle_align="right",
                 border_style=STYLE.get(result.status, "magenta"))


def print_scorecard(results, out: Console, hints=False, verbose=False, source="", elapsed=0.0):
    for r in results:
        out.print(lab_panel(r, hints, verbose))
    total, best = sum(r.score for r in results), sum(r.max_score for r in results)
    verdicts = ", ".join(f"lab {r.lab[3]} {r.status}" for r in results)
    device = results[0].device if results else ""
    out.print(Text(f"Total {total}/{best}  ({verdicts})  [{source}, {device}, {elapsed:.1f} s]",
                   style="bold green" if total == best and all(r.status == "passed" for r in results) else "bold"))


def results_json(results, elapsed: float, error: str = None, visibility: str = "visible") -> dict:
    """Gradescope's results.json: one test per check, tagged with its lab."""
    tests = []
    for r in results:
        for i, c in enumerate(r.checks, 1):
            output = c.message if not c.passed else ""
            if not c.passed and c.hint:
                output += f"\nHint: {hint_text(c.hint)}"
            if r.status not in ("passed", "failed"):
                output = f"[lab {r.status}: {r.detail}]\n{output}".strip()
            tests.append({"name": f"{r.lab} · {c.title}", "number": f"{r.lab[3]}.{i}", "score": c.score,
                          "max_score": c.points, "status": "passed" if c.passed and c.score == c.points else "failed",
                          "output": output.strip(), "output_format": "text", "tags": [r.lab], "visibility": visibility})
    summary = [f"{r.lab}: {r.status} {r.score}/{r.max_score}" + (f" ({r.detail})" if r.detail else "") for r in results]
    if error:
        summary.append(f"grading error: {error}")
    return {"score": sum(r.score for r in results), "execution_time": round(elapsed, 2), "output": "\n".join(summary),
            "output_format": "text", "visibility": visibility, "stdout_visibility": "hidden",
            "extra_data": {"labs": {r.lab: {"status": r.status, "detail": r.detail, "score": r.score,
                                            "max_score": r.max_score, "seconds": round(r.seconds, 3), "device": r.device}
                                     for r in results}, "error": error},
            "tests": tests}


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


def write_json(path, results, elapsed: float, error: str = None, visibility: str = "visible"):
    write_atomic(path, json.dumps(results_json(results, elapsed, error, visibility), indent=2))
