"""What the grader shows: a rich scorecard for people and a Gradescope-format results.json for machines."""
import json
import os
import sys

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


def check_text(check, hints: bool, verbose: bool) -> Text:
    text = Text(check.message or "")
    if not check.passed and check.hint:
        text.append(("\n" if text else "") + "Hint: " + hint_text(check.hint, deep=hints), style="cyan")
    if verbose and check.trace:
        text.append("\n" + "\n".join(check.trace), style="dim")
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
            "output_format": "text", "visibility": "visible", "stdout_visibility": "hidden",
            "extra_data": {"labs": {r.lab: {"status": r.status, "detail": r.detail, "score": r.score,
                                            "max_score": r.max_score, "seconds": round(r.seconds, 3), "device": r.device}
                                     for r in results}, "error": error},
            "tests": tests}


def write_json(path, results, elapsed: float, error: str = None, visibility: str = "visible"):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results_json(results, elapsed, error, visibility), f, indent=2)
    os.replace(tmp, path)
