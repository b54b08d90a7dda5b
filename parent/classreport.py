"""A class report for instructors: one self-contained HTML page from a batch's grades.csv (and grades.checks.json).

    python grader.py report grades.csv --html report.html

The page has a header (submissions, labs, grader version, when graded), then per lab a score histogram, the mean
and median and the count of each status, the pass rate of each check (lowest first) and the most common diagnosed
mistakes (each (submission, lab, hint) counted once), and at the end the slowest submissions. Figures are inline
SVG drawn here; the page loads nothing (no script, no stylesheet, no image, no font). Every text that came from a
submission or from the files read is cleaned (parent.verdict) and HTML-escaped.

The CSV is the source of the submissions, scores, statuses and times; the checks JSON beside it (the CSV's path
with `.checks.json` for its suffix) of the per-check results and hints, read defensively: an entry of the wrong
shape is skipped. Without it the page says that per-check data is unavailable. Standard library only.
"""
import csv
import html
import json
import math
import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

from pack.hints import hint_text
from pack.labs import LABS
from parent.gradebook import MAX_FILE, checks_path, uncell
from parent.verdict import clean, clean_name

MAX_BYTES = MAX_FILE  # a CSV or checks JSON larger than this is refused, not read (as the gradebook's)
SHOWN = 200  # characters of a name shown; a reason shows up to REASON
REASON = 300
SLOWEST = 10
INTEGER_BINS = 30  # a lab out of at most this many points gets one bar per score; otherwise BINS equal bins
BINS = 10
# the order statuses are listed in (parent/verdict.py's); any other comes after these, alphabetically
STATUSES = ("passed", "failed", "timeout", "crashed", "exited", "out of memory", "error", "forbidden", "not started")
NOT_GRADED = "not graded"  # a row whose cells for a lab are empty


class ReportError(Exception):
    """Input the report cannot be built from (missing, too large, not a grades CSV): one line for the user."""


# ---------------------------------------------------------------------------------------------------------------
# reading


def unguard(value) -> str:
    """A CSV cell as it was before the spreadsheet guard (gradebook.cell): one leading apostrophe before = + - @
    removed."""
    return uncell("" if value is None else str(value))


def number(value):
    """A cell's finite number, or None."""
    try:
        x = float(unguard(value).strip())
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _bounded(path: Path, what: str) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ReportError(f"{what} {clean_name(path)}: no such file") from None
    except OSError as exc:
        raise ReportError(f"{what} {clean_name(path)}: cannot read it ({exc.strerror or exc})") from None
    if not path.is_file():
        raise ReportError(f"{what} {clean_name(path)}: not a file")
    if size > MAX_BYTES:
        raise ReportError(f"{what} {clean_name(path)}: {size / 2**20:.0f} MB, over the {MAX_BYTES // 2**20} MB "
                          "this report reads")


def read_csv(path: Path):
    """(labs, rows) of a grades CSV: the labs its header names, in lab order, and one dict per submission."""
    _bounded(path, "CSV")
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if "submission" not in fields:
                raise ReportError(f"CSV {clean_name(path)}: not a grades CSV (no 'submission' column in its header)")
            rows = [r for r in reader if unguard(r.get("submission"))]
    except OSError as exc:
        raise ReportError(f"CSV {clean_name(path)}: cannot read it ({exc.strerror or exc})") from None
    except csv.Error as exc:
        raise ReportError(f"CSV {clean_name(path)}: not readable as CSV ({exc})") from None
    labs = [lab for lab in LABS if f"{lab}_score" in fields or f"{lab}_status" in fields]
    return labs, rows


def _check(entry):
    """One check of the JSON as (name, title, passed, skipped, hidden, hint), or None when its shape is wrong."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        return None
    if not isinstance(entry.get("passed"), bool):
        return None
    title = entry.get("title") if isinstance(entry.get("title"), str) and entry.get("title") else entry["name"]
    hint = entry.get("hint") if isinstance(entry.get("hint"), str) and entry.get("hint") else None
    return (entry["name"], title, entry["passed"], entry.get("skipped") is True, entry.get("hidden") is True, hint)


def read_checks(path: Path):
    """{submission: {lab: {"seconds": float or None, "checks": [check tuples]}}} from a checks JSON, and a note:
    (None, why) when there is no usable file."""
    if not path.exists():
        return None, f"Per-check data is unavailable: there is no {path.name} beside the CSV."
    try:
        _bounded(path, "checks JSON")
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8", errors="replace"))
    except ReportError as exc:
        return None, f"Per-check data is unavailable: {exc}."
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"Per-check data is unavailable: {path.name} is not readable JSON ({type(exc).__name__})."
    subs = data.get("submissions") if isinstance(data, dict) else None
    if not isinstance(subs, dict):
        return None, f"Per-check data is unavailable: {path.name} has no \"submissions\" object."
    out = {}
    for name, labs in subs.items():
        if not isinstance(labs, dict):
            continue
        for lab, entry in labs.items():
            if lab not in LABS or not isinstance(entry, dict) or not isinstance(entry.get("checks"), list):
                continue
            checks, seen = [], set()
            for raw in entry["checks"]:
                c = _check(raw)
                if c and c[0] not in seen:
                    seen.add(c[0])
                    checks.append(c)
            seconds = entry.get("seconds")
            seconds = float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) \
                and math.isfinite(seconds) and seconds >= 0 else None
            out.setdefault(name, {})[lab] = {"seconds": seconds, "checks": checks}
    version = data.get("grader_version") if isinstance(data.get("grader_version"), str) else None
    return {"submissions": out, "grader_version": version}, None


# ---------------------------------------------------------------------------------------------------------------
# the facts the page shows (plain data, so they can be tested apart from the HTML)


def lab_scores(rows, lab):
    """(scores, max) of a lab: the score of each row that has one, and the lab's maximum (the largest max cell)."""
    scores = [s for s in (number(r.get(f"{lab}_score")) for r in rows) if s is not None]
    maxes = [m for m in (number(r.get(f"{lab}_max")) for r in rows) if m is not None and m > 0]
    top = max(maxes) if maxes else max(scores, default=0.0)
    return scores, top


def histogram(scores, top):
    """[(low, high, count)]: one bin per score 0..top when scores and top are whole and top <= INTEGER_BINS, else
    BINS equal bins over [0, top] (the last one closed). A score outside [0, top] counts in the nearest bin."""
    if not scores:
        return []
    whole = float(top).is_integer() and all(float(s).is_integer() for s in scores)
    if whole and top <= INTEGER_BINS:
        n, width = int(top) + 1, 1.0
    else:
        n, width = BINS, (top / BINS if top > 0 else 1.0)
    counts = [0] * n
    for s in scores:
        counts[min(n - 1, max(0, int(s // width)))] += 1
    if whole and top <= INTEGER_BINS:
        return [(float(i), float(i), c) for i, c in enumerate(counts)]
    return [(i * width, (i + 1) * width, c) for i, c in enumerate(counts)]


def status_counts(rows, lab):
    """[(status, count)] for a lab, in STATUSES order then the others alphabetically, "not graded" last."""
    seen = Counter()
    for r in rows:
        status = unguard(r.get(f"{lab}_status")).strip()
        if not status:
            status = NOT_GRADED if number(r.get(f"{lab}_score")) is None else "(no status)"
        seen[status] += 1
    rank = {s: i for i, s in enumerate(STATUSES)}
    return sorted(seen.items(), key=lambda kv: (kv[0] == NOT_GRADED, rank.get(kv[0], len(rank)), kv[0]))


def reasons(rows, lab, top=5):
    """The most common reasons given for a lab that was neither passed nor failed: [(reason, count)]."""
    seen = Counter()
    for r in rows:
        status, why = unguard(r.get(f"{lab}_status")).strip(), unguard(r.get(f"{lab}_reason")).strip()
        if why and status not in ("passed", "failed"):
            seen[why] += 1
    return seen.most_common(top)


def check_rates(checks, lab):
    """[(name, title, hidden, passed, graded)] of a lab's checks over every submission, lowest pass rate first
    (checks never graded, every run skipped, last); None when no submission has per-check data for the lab."""
    stats, any_entry = {}, False
    for labs in checks["submissions"].values():
        entry = labs.get(lab)
        if entry is None:
            continue
        any_entry = True
        for name, title, passed, skipped, hidden, _ in entry["checks"]:
            s = stats.setdefault(name, {"title": title, "hidden": hidden, "passed": 0, "graded": 0})
            if not skipped:
                s["graded"] += 1
                s["passed"] += passed
    if not any_entry:
        return None
    out = [(name, s["title"], s["hidden"], s["passed"], s["graded"]) for name, s in stats.items()]
    order = {name: i for i, name in enumerate(stats)}  # first seen: the checker's order
    return sorted(out, key=lambda c: (c[4] == 0, c[3] / c[4] if c[4] else 0.0, order[c[0]]))


def common_mistakes(checks, lab):
    """([(hint, count)], submissions): how many submissions failed at least one check of the lab naming each hint
    (one submission's bug counts once however many checks name it), most common first, and how many submissions
    have per-check data for the lab."""
    seen, graded = Counter(), 0
    for labs in checks["submissions"].values():
        entry = labs.get(lab)
        if entry is None:
            continue
        graded += 1
        seen.update({hint for _, _, passed, skipped, _, hint in entry["checks"] if hint and not passed and not skipped})
    return sorted(seen.items(), key=lambda kv: (-kv[1], kv[0])), graded


def submission_seconds(row, labs, checks):
    """A submission's seconds: the CSV's `seconds`, else the sum of its labs' seconds in the checks JSON."""
    seconds = number(row.get("seconds"))
    if seconds is not None:
        return seconds
    if checks:
        entry = checks["submissions"].get(unguard(row.get("submission"))) or {}
        times = [entry[lab]["seconds"] for lab in labs if lab in entry and entry[lab]["seconds"] is not None]
        if times:
            return sum(times)
    return None


def slowest(rows, labs, checks, top=SLOWEST):
    """[(seconds, row)] of the `top` slowest submissions, slowest first."""
    timed = [(s, r) for r in rows for s in [submission_seconds(r, labs, checks)] if s is not None]
    return sorted(timed, key=lambda sr: (-sr[0], unguard(sr[1].get("submission"))))[:top]


# ---------------------------------------------------------------------------------------------------------------
# the page


def esc(value, limit=None) -> str:
    """Text for the page: cleaned of control characters and bidirectional overrides, shortened, HTML-escaped."""
    text = clean_name(unguard(value))
    if limit and len(text) > limit:
        text = text[:limit - 1] + "…"
    return html.escape(text, quote=True)


def fmt(x) -> str:
    """A number as a person writes it: 7, 7.5, 0.33."""
    if x is None:
        return "–"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}".rstrip("0").rstrip(".")


def pct(part, whole) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "–"


STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; margin: 24px auto;
       max-width: 1100px; padding: 0 16px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 8px; } h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 2px solid #d6dde8; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 4px 0 8px; } td, th { padding: 3px 10px; text-align: left;
        border-bottom: 1px solid #e3e7ee; vertical-align: middle; } th { background: #f2f5f9; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } code { font-size: 12px; color: #505a6b; }
.summary td:first-child { color: #505a6b; } .row { display: flex; gap: 28px; flex-wrap: wrap; align-items: flex-start; }
.note { color: #6b3d00; background: #fff6e5; padding: 6px 10px; border-left: 3px solid #e0a030; }
.muted { color: #6b7383; } svg text { font: 11px system-ui, sans-serif; fill: #39414f; }
"""


def svg_histogram(lab, bins, top) -> str:
    """The histogram as inline SVG: one <rect class="bar"> per bin (data-count, data-low, data-high)."""
    width, height, left, right, upper, lower = 520, 240, 50, 12, 14, 46
    plot_w, plot_h = width - left - right, height - upper - lower
    most = max(c for _, _, c in bins) or 1
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10 ** 4, 10 ** 5,
                            10 ** 6, 10 ** 9) if most / s <= 5)
    slot = plot_w / len(bins)
    gap = min(3.0, slot * 0.12)
    parts = [f'<svg class="histogram" data-lab="{esc(lab)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(LABS[lab].title)}: score histogram">']
    for k in range(0, most + 1, step):  # the y axis: gridlines and counts
        y = upper + plot_h - k / most * plot_h
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.2f}" y2="{y:.2f}" stroke="#e3e7ee"/>'
                     f'<text x="{left - 6}" y="{y + 4:.2f}" text-anchor="end">{k}</text>')
    label_every = max(1, math.ceil(len(bins) / 16))
    for i, (low, high, count) in enumerate(bins):
        h = count / most * plot_h
        x, y = left + i * slot + gap / 2, upper + plot_h - h
        label = fmt(low) if low == high else f"{fmt(low)}–{fmt(high)}"
        parts.append(f'<rect class="bar" x="{x:.2f}" y="{y:.2f}" width="{slot - gap:.2f}" height="{h:.2f}" '
                     f'fill="#3f74b8" data-count="{count}" data-low="{fmt(low)}" data-high="{fmt(high)}">'
                     f'<title>score {label}: {count} submission{"" if count == 1 else "s"}</title></rect>')
        if i % label_every == 0:
            parts.append(f'<text x="{left + (i + 0.5) * slot:.2f}" y="{upper + plot_h + 15}" '
                         f'text-anchor="middle">{label}</text>')
    parts.append(f'<line class="x-axis" x1="{left}" x2="{left + plot_w}" y1="{upper + plot_h}" y2="{upper + plot_h}" '
                 f'stroke="#39414f"/><line class="y-axis" x1="{left}" x2="{left}" y1="{upper}" y2="{upper + plot_h}" '
                 f'stroke="#39414f"/>'
                 f'<text class="axis" x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">'
                 f'score (out of {fmt(top)})</text>'
                 f'<text class="axis" x="14" y="{upper + plot_h / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {upper + plot_h / 2})">number of submissions</text></svg>')
    return "".join(parts)


def svg_rate(passed, graded) -> str:
    """A small bar: the share of graded runs that passed."""
    share = passed / graded if graded else 0.0
    colour = "#c0392b" if share < 0.5 else "#d9901a" if share < 0.8 else "#2e8b57"
    return (f'<svg class="rate" width="120" height="12" viewBox="0 0 120 12"><rect x="0" y="0" width="120" height="12" '
            f'fill="#e9edf2"/><rect class="fill" x="0" y="0" width="{120 * share:.2f}" height="12" fill="{colour}" '
            f'data-share="{share:.4f}"/></svg>')


def _header(csv_path, rows, labs, checks) -> str:
    versions = sorted({v for r in rows for v in [unguard(r.get("grader_version")).strip()] if v})
    if not versions and checks and checks.get("grader_version"):
        versions = [checks["grader_version"]]
    times = sorted({t for r in rows for t in [unguard(r.get("graded_at")).strip()] if t})
    when = "–" if not times else esc(times[0]) if len(times) == 1 else f"{esc(times[0])} to {esc(times[-1])}"
    lab_names = ", ".join(f"{esc(lab)} ({esc(LABS[lab].title)})" for lab in labs) or "none"
    return (f"<h1>Class report</h1>\n<table class=\"summary\">"
            f"<tr><td>submissions</td><td id=\"submissions\">{len(rows)}</td></tr>"
            f"<tr><td>labs</td><td id=\"labs\">{lab_names}</td></tr>"
            f"<tr><td>grader version</td><td id=\"version\">{', '.join(esc(v) for v in versions) or '–'}</td></tr>"
            f"<tr><td>graded</td><td id=\"graded-at\">{when}</td></tr>"
            f"<tr><td>from</td><td id=\"source\">{esc(Path(csv_path).name)}</td></tr></table>\n")


def _lab_section(lab, rows, checks, note) -> str:
    info = LABS[lab]
    out = [f'<section class="lab" id="lab-{esc(lab)}" data-lab="{esc(lab)}">',
           f"<h2>Lab {info.number}: {esc(info.title)} <code>{esc(lab)}</code></h2>"]
    scores, top = lab_scores(rows, lab)
    bins = histogram(scores, top)
    figure = svg_histogram(lab, bins, top) if bins else \
        f'<p class="empty">No scores for lab {info.number} in this CSV.</p>'
    stats = ""
    if scores:
        stats = (f'<table class="stats"><tr><th>graded</th><td class="n" data-stat="graded">{len(scores)}</td></tr>'
                 f'<tr><th>mean</th><td class="n" data-stat="mean">{fmt(round(statistics.mean(scores), 2))}</td></tr>'
                 f'<tr><th>median</th><td class="n" data-stat="median">{fmt(statistics.median(scores))}</td></tr>'
                 f'<tr><th>out of</th><td class="n" data-stat="max">{fmt(top)}</td></tr></table>')
    statuses = "".join(f'<tr data-status="{esc(s)}"><td>{esc(s)}</td><td class="n">{n}</td></tr>'
                       for s, n in status_counts(rows, lab))
    out.append(f'<div class="row"><div>{figure}</div><div>{stats}</div><div><table class="statuses">'
               f'<tr><th>status</th><th>submissions</th></tr>{statuses}</table></div></div>')
    why = reasons(rows, lab)
    if why:
        out.append('<h3>Reasons given (labs neither passed nor failed)</h3><table class="reasons"><tr><th>reason</th>'
                   '<th>submissions</th></tr>' + "".join(f'<tr><td>{esc(w, REASON)}</td><td class="n">{n}</td></tr>'
                                                         for w, n in why) + "</table>")
    out.append("<h3>Pass rate per check</h3>")
    rates = check_rates(checks, lab) if checks else None
    if checks is None:
        out.append(f'<p class="note">{esc(note)}</p>')
    elif not rates:
        out.append(f'<p class="empty">No per-check results for lab {info.number}.</p>')
    else:
        out.append('<table class="checks" data-lab="%s"><tr><th>check</th><th>passed / graded</th><th>pass rate</th>'
                   '<th></th></tr>' % esc(lab))
        for name, title, hidden, passed, graded in rates:
            out.append(f'<tr data-check="{esc(name)}" data-passed="{passed}" data-graded="{graded}">'
                       f'<td>{esc(title, SHOWN)} <code>{esc(name, SHOWN)}</code>'
                       f'{" <span class=muted>(hidden)</span>" if hidden else ""}</td>'
                       f'<td class="n">{passed} / {graded}</td><td class="n">{pct(passed, graded)}</td>'
                       f'<td>{svg_rate(passed, graded)}</td></tr>')
        out.append("</table>")
    out.append("<h3>Most common mistakes</h3>")
    if checks is None:
        out.append(f'<p class="note">{esc(note)}</p>')
    else:
        mistakes, graded = common_mistakes(checks, lab)
        if not mistakes:
            out.append(f'<p class="empty">No diagnosed mistakes in lab {info.number}.</p>')
        else:
            out.append(f'<p class="muted">Submissions that failed a check naming the mistake, each counted once, out '
                       f'of the {graded} with per-check results for lab {info.number}.</p>'
                       f'<table class="hints" data-lab="{esc(lab)}"><tr><th>mistake</th><th>submissions</th>'
                       f'<th>of all</th><th>hint</th></tr>')
            for key, n in mistakes:
                out.append(f'<tr data-hint="{esc(key)}" data-count="{n}"><td><code>{esc(key, SHOWN)}</code></td>'
                           f'<td class="n">{n}</td><td class="n">{pct(n, graded)}</td>'
                           f'<td>{esc(hint_text(key) or "(no hint text for this key)")}</td></tr>')
            out.append("</table>")
    out.append("</section>")
    return "\n".join(out)


def _slowest_section(rows, labs, checks) -> str:
    out = ["<section id=\"slowest\"><h2>Slowest submissions</h2>"]
    top = slowest(rows, labs, checks)
    if not top:
        out.append('<p class="empty">No submission has a time.</p></section>')
        return "\n".join(out)
    out.append('<table class="slowest"><tr><th>submission</th><th>seconds</th><th>score</th><th>status</th></tr>')
    for seconds, r in top:
        statuses = ", ".join(f"{lab} {unguard(r.get(f'{lab}_status')).strip() or NOT_GRADED}" for lab in labs)
        total, of = number(r.get("total")), number(r.get("max_total"))
        out.append(f'<tr data-submission="{esc(r.get("submission"), SHOWN)}" data-seconds="{seconds:.2f}">'
                   f'<td>{esc(r.get("submission"), SHOWN)}</td><td class="n">{seconds:.2f}</td>'
                   f'<td class="n">{fmt(total)} / {fmt(of)}</td><td>{esc(statuses)}</td></tr>')
    out.append("</table></section>")
    return "\n".join(out)


def render(csv_path, labs, rows, checks, note) -> str:
    """The whole page."""
    body = [_header(csv_path, rows, labs, checks)]
    if checks is None:
        body.append(f'<p class="note" id="no-checks">{esc(note)}</p>')
    if not rows:
        body.append(f'<p class="empty" id="no-submissions">No submissions in {esc(Path(csv_path).name)}.</p>')
    elif not labs:
        body.append('<p class="empty">The CSV names no lab.</p>')
    else:
        body += [_lab_section(lab, rows, checks, note) for lab in labs]
        body.append(_slowest_section(rows, labs, checks))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Class report: {esc(Path(csv_path).name)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def default_html(csv_path) -> Path:
    """Where the page goes without --html: beside the CSV, grades.csv -> grades.report.html."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.stem + ".report.html")


def build(csv_path, html_path=None) -> Path:
    """Write the report; ReportError for input it cannot be built from."""
    csv_path = Path(csv_path)
    out = Path(html_path) if html_path else default_html(csv_path)
    labs, rows = read_csv(csv_path)
    checks, note = read_checks(checks_path(csv_path))
    page = render(csv_path, labs, rows, checks, note)
    try:
        if out.resolve() == csv_path.resolve():
            raise ReportError(f"{clean_name(out)} is the CSV itself: choose another --html")
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise ReportError(f"cannot write {clean_name(out)} ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ReportError(f"cannot write {clean_name(out)} ({exc.strerror or exc})") from None
    return out


def write_report(csv_path, html_path=None):
    """Write the class report for `csv_path` (to `html_path`, default beside the CSV) and return its path; for input
    it cannot use, or any failure of its own, say why on stderr and return None: it never raises."""
    try:
        return build(csv_path, html_path)
    except ReportError as exc:
        print(f"class report: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001  (a report must never stop the batch that asked for it)
        print(f"class report: internal error: {type(exc).__name__}: {clean(exc)}", file=sys.stderr)
    return None


def run(csv_path, html_path=None) -> int:
    """`grader.py report`: 0 when the page was written, 2 for input it cannot use, 1 for a failure of its own."""
    try:
        out = build(csv_path, html_path)
    except ReportError as exc:
        print(f"grader.py report: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001
        print(f"grader.py report: internal error: {type(exc).__name__}: {clean(exc)}", file=sys.stderr)
        return 1
    print(f"wrote {clean_name(out)}", file=sys.stderr)
    return 0
