"""Batch grading: every sub-folder of a folder is one submission; one CSV row per submission.

Rows are appended as submissions finish, so an interrupted run loses nothing, and a re-run skips every
submission already in the CSV (delete a row, or the file, to grade again). A submission that hangs or
crashes is recorded with its status and the batch goes on.
"""
import csv
import os
import sys
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

COLUMNS = ["submission", "score", "max_score"]


def columns(labs) -> list:
    return COLUMNS + [f"{lab}_{what}" for lab in labs for what in ("score", "status")]


def done_already(path: Path) -> set:
    if not path.exists():
        return set()
    with open(path, newline="") as f:
        return {row["submission"] for row in csv.DictReader(f) if row.get("submission")}


def row(name: str, results) -> dict:
    out = {"submission": name, "score": sum(r.score for r in results), "max_score": sum(r.max_score for r in results)}
    for r in results:
        out[f"{r.lab}_score"], out[f"{r.lab}_status"] = r.score, r.status
    return out


def run_batch(folder, labs, args, device, grade_submissions) -> int:
    """Grade every submission in `folder` not yet in args.csv; returns the process exit code."""
    folder, out = Path(folder), Path(args.csv)
    submissions = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    skip = done_already(out)
    todo = [p for p in submissions if p.name not in skip]
    fresh = not out.exists() or out.stat().st_size == 0
    os.makedirs(out.parent if str(out.parent) else ".", exist_ok=True)
    print(f"{len(submissions)} submissions in {folder}: {len(skip & {p.name for p in submissions})} already in "
          f"{out}, grading {len(todo)} ({len(labs)} lab(s) each, {args.jobs} at a time)", file=sys.stderr)
    finished, started = {}, time.monotonic()
    with open(out, "a", newline="") as f, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                                   TimeElapsedColumn(), disable=not sys.stderr.isatty()) as bar:
        writer = csv.DictWriter(f, fieldnames=columns(labs))
        if fresh:
            writer.writeheader()
        task = bar.add_task("grading", total=len(todo) * len(labs))

        def lab_done(key, result):
            bar.advance(task)
            finished.setdefault(key, {})[result.lab] = result
            if len(finished[key]) == len(labs):  # the submission is complete: write its row now
                writer.writerow(row(key, [finished[key][lab] for lab in labs]))
                f.flush()
                if not sys.stderr.isatty():
                    print(f"graded {key}: " + ", ".join(f"{lab} {finished[key][lab].status}" for lab in labs),
                          file=sys.stderr)

        grade_submissions([(p.name, p, p.name) for p in todo], labs, args, device, on_done=lab_done, probe=False,
                          hide=(str(folder.resolve()),))
    seconds = time.monotonic() - started
    print(f"wrote {out}: {len(todo)} submissions graded in {seconds:.2f} s "
          f"({len(todo) / max(seconds, 1e-9):.2f} per second)", file=sys.stderr)
    return 0
