#!/usr/bin/env python
"""Benchmark grading speed against the floor every grade pays: starting Python and importing torch.

    python bench/bench.py --runs 5 --out bench/results.md

Every command starts as a fresh subprocess from the repository root, its output discarded. The commands run
round-robin (one of each per round, the starting one rotating), so machine noise hits all of them alike, and
each figure is the median of --runs rounds. Timed: the floor (`python -c "import torch, torch._dynamo"`),
`grader.py all --solutions`, each core lab alone, `bonus` (labs 5 and 6), lab 4's own checks (the child's seconds,
read from the JSON that `all --json` writes), a batch of --batch-size generated submissions graded with --jobs 1
and with --jobs 2, and `--watch`'s re-grade: from saving a lab file to the next scorecard, for each lab.
`--against REV` also times `all` and `bonus` from an export of commit REV (`git archive`), in the same rounds,
and reports this tree's time over REV's: a change's cost measured side by side, on the same noise.
Ratios from one interleaved run are what to compare; absolute seconds move with the machine's load. The batch's
throughput is also given in floors (submissions graded in one floor's time), to read beside the floor of the same
run; it has no target (the targets stay in seconds) and it too moves from run to run.
This is a benchmark, not a test: pytest never collects it.
"""
import argparse
import csv
import itertools
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pack.labs import CORE, FILES  # noqa: E402

LABS = CORE
LAB_FILES = tuple(FILES[lab] for lab in CORE)
BUG = ("/ math.sqrt(d_k)", "")  # every 5th generated submission: lab 1 without its 1/sqrt(d_k) scale
FLOOR = 'python -c "import torch, torch._dynamo"'
ALL = "grader.py all --solutions"
HEADER = ("measure", "median s", "figure", "target")


def parse_args():
    p = argparse.ArgumentParser(description="Measure grading speed (see the module docstring).")
    p.add_argument("--runs", type=int, default=5, help="rounds of the single-submission commands (default 5)")
    p.add_argument("--batch-runs", type=int, default=1, help="rounds of the two batch commands (default 1)")
    p.add_argument("--batch-size", type=int, default=20, help="generated submissions in the batch (default 20)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="passed to every grader.py")
    p.add_argument("--skip-batch", action="store_true", help="time the single-submission commands only")
    p.add_argument("--mutation", action="store_true",
                   help="also grade every generated mutant (tools/mutate.py) and report the mutation score per lab")
    p.add_argument("--out", metavar="PATH", help="also write the results as a markdown section to PATH")
    p.add_argument("--against", metavar="REV", help="also time all and bonus at commit REV, side by side")
    args = p.parse_args()
    if min(args.runs, args.batch_runs, args.batch_size) < 1:
        p.error("--runs, --batch-runs and --batch-size must be positive")
    return args


GRADED_IN = re.compile(r"graded in ([\d.]+) s")  # the batch's own timing, after its start-up


def timed(argv, cwd=ROOT) -> tuple:
    """(wall seconds, stderr) of one run of argv; a command that fails makes every figure meaningless: stop."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: {shlex.join(argv)} exited with {done.returncode}")
    return seconds, done.stderr


def round_robin(labels, runs, argv_for, measure=lambda seconds, stderr: seconds, cwd_of=lambda label: ROOT) -> dict:
    """{label: median of measure(wall seconds, stderr)}; each round runs every label's argv_for(label, round) once,
    in cwd_of(label)."""
    times = {label: [] for label in labels}
    for r in range(runs):
        shift = r % len(labels)  # rotate the start, so no command always runs right after the same one
        for label in labels[shift:] + labels[:shift]:
            wall, stderr = timed(argv_for(label, r), cwd_of(label))
            times[label].append(measure(wall, stderr))
            print(f"round {r + 1}/{runs}  {wall:6.2f} s  {label}", file=sys.stderr)
    return {label: tuple(map(statistics.median, zip(*t))) if isinstance(t[0], tuple) else statistics.median(t)
            for label, t in times.items()}  # a measure of several figures: the median of each


def make_submissions(folder: Path, count: int) -> int:
    """`count` sub-folders holding copies of the reference solutions, every 5th one broken; returns how many are."""
    lab1 = (ROOT / "solutions" / LAB_FILES[0]).read_text()
    if BUG[0] not in lab1:
        sys.exit(f"bench: solutions/{LAB_FILES[0]} no longer contains {BUG[0]!r}: update BUG")
    for i in range(1, count + 1):
        sub = folder / f"sub{i:03d}"
        sub.mkdir(parents=True)
        for name in LAB_FILES:
            shutil.copyfile(ROOT / "solutions" / name, sub / name)
        if i % 5 == 0:
            (sub / LAB_FILES[0]).write_text(lab1.replace(*BUG))
    return count // 5


def check_csv(path: Path, count: int, broken: int):
    """A batch that skipped or mis-graded submissions timed something else: say so (the figures still print)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    failed = sum(row.get("total", row.get("score")) != row.get("max_total", row.get("max_score")) for row in rows)
    if len(rows) != count or failed != broken:
        print(f"bench: WARNING {path.name}: {len(rows)} rows, {failed} not full marks; expected {count}, {broken}",
              file=sys.stderr)


def markdown_table(rows) -> str:
    widths = [max(map(len, column)) for column in zip(HEADER, *rows)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(HEADER), line(["-" * w for w in widths]), *map(line, rows)])


def git_version() -> str:
    """The commit measured, flagged when the working tree differs from it (read-only git commands)."""
    git = lambda *cmd: subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
    commit = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    return commit + (" with uncommitted changes" if git("diff", "--quiet", "HEAD", "--").returncode else "")


def export(rev: str, folder: Path) -> str:
    """Commit `rev`'s files in `folder` (git archive: the repository itself is left as it is); its short hash."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True)
    if commit.returncode != 0:
        sys.exit(f"bench: --against {rev}: not a commit here")
    folder.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return commit.stdout.strip()


def regrade_seconds(py, lab: str, folder: Path, device: list, runs: int) -> float:
    """Median seconds from saving the lab file to the next scorecard's total line, in one `--watch` process."""
    path = folder / LAB_FILES[LABS.index(lab)]
    proc = subprocess.Popen([py, "grader.py", lab, "--submission", str(folder), "--watch", *device], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        def total():
            for line in proc.stdout:
                if line.startswith("Total"):
                    return
            raise SystemExit(f"bench: `{lab} --watch` ended without a scorecard")
        total()
        seconds = []
        for i in range(runs):
            time.sleep(0.3)
            start = time.monotonic()
            path.write_text(path.read_text() + f"# saved {i}\n")
            total()
            seconds.append(time.monotonic() - start)
        return statistics.median(seconds)
    finally:
        proc.kill()
        proc.wait()


def mutation_rows(py, path: Path) -> list:
    """One row per lab: generated mutants killed, of those not on the reviewed equivalent list."""
    start = time.monotonic()
    subprocess.run([py, str(ROOT / "tools" / "mutate.py"), "--json", str(path)], cwd=ROOT, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    labs = json.loads(path.read_text())["labs"]
    rows = []
    for lab, r in labs.items():
        killable = r["mutants"] - r["equivalent"]
        rows.append((f"mutation score, {lab}", "", f"{r['killed']}/{killable} killed ({r['equivalent']} equivalent)",
                     f"100%: {verdict(r['killed'] >= killable)}"))
    total = sum(r["mutants"] for r in labs.values())
    rows.append((f"mutation run, {total} mutants", f"{seconds:.2f}", f"{total / seconds:.1f} mutants/s", ""))
    return rows


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main():
    args = parse_args()
    version = git_version()  # taken first: others may commit while this runs
    py, device = sys.executable, ["--device", args.device]
    commands = {FLOOR: [py, "-c", "import torch, torch._dynamo"]}
    for lab in ("all", *LABS, "bonus"):  # bonus: labs 5 and 6, reported beside the others (no target)
        commands[f"grader.py {lab} --solutions"] = [py, "grader.py", lab, "--solutions", *device]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp = Path(tmp)
        base, cwd = {}, {}
        if args.against:
            rev = export(args.against, tmp / "against")
            for lab in ("all", "bonus"):
                label = f"grader.py {lab} --solutions at {rev}"
                base[f"grader.py {lab} --solutions"] = label
                commands[label], cwd[label] = [py, "grader.py", lab, "--solutions", *device], tmp / "against"
        # `all` writes a JSON per round, read afterwards for lab 4's child seconds
        medians = round_robin(list(commands), args.runs, lambda label, r: commands[label] + (
            ["--json", str(tmp / f"all-{r}.json")] if label == ALL else []), cwd_of=lambda label: cwd.get(label, ROOT))
        lab4 = statistics.median(json.loads(p.read_text())["extra_data"]["labs"]["lab4"]["seconds"]
                                 for p in tmp.glob("all-*.json"))
        floor, full = medians[FLOOR], medians[ALL]
        # ratios and lab 4's seconds get 3 decimals: a figure by its threshold never shows as the other verdict
        full_target = f"<= 2.0x: {verdict(full <= 2 * floor)}, stretch <= 1.5x: {verdict(full <= 1.5 * floor)}"
        rows = [(label, f"{s:.2f}", f"{s / floor:.3f}x floor", full_target if label == ALL else "")
                for label, s in medians.items()]
        for ours, theirs in base.items():
            ratio = medians[ours] / medians[theirs]
            rows.append((f"{ours}: this tree / {theirs.rsplit(' ', 1)[1]}", "", f"{ratio:.3f}x",
                         f"<= 1.05x (no slowdown): {verdict(ratio <= 1.05)}"))
        rows.append(("lab 4's checks (child seconds, --json)", f"{lab4:.3f}", "", f"<= 1.5 s: {verdict(lab4 <= 1.5)}"))
        watched = tmp / "watched"
        watched.mkdir()
        for name in LAB_FILES:
            shutil.copyfile(ROOT / "solutions" / name, watched / name)
        for lab in LABS:
            s = regrade_seconds(py, lab, watched, device, args.runs)
            rows.append((f"--watch re-grade, {lab}", f"{s:.2f}", "save -> scorecard",
                         f"<= 1 s: {verdict(s <= 1.0)}" if lab != "lab4" else ""))
        if not args.skip_batch:
            n = args.batch_size
            broken = make_submissions(tmp / "subs", n)
            batch = {f"batch of {n}, --jobs {j}": [py, "grader.py", "all", "--batch", str(tmp / "subs"),
                                                   "--jobs", str(j), *device] for j in (1, 2)}
            older = f"batch of {n}, --jobs 2 at {rev}" if args.against else None
            if older:  # the same batch by the older tree, in the same rounds: a ratio the machine's speed cancels out of
                batch[older] = batch[f"batch of {n}, --jobs 2"]
                cwd[older] = tmp / "against"
            # a new CSV path for every run: an existing CSV makes the batch resume and skip what it lists
            fresh = itertools.count()
            both = round_robin(list(batch), args.batch_runs, lambda label, r: batch[label] + [
                "--csv", str(tmp / f"grades-{next(fresh)}.csv")],
                measure=lambda wall, err: (wall, float(GRADED_IN.search(err).group(1))),
                cwd_of=lambda label: cwd.get(label, ROOT))
            for path in tmp.glob("grades-*.csv"):
                check_csv(path, n, broken)
            then = both.pop(older) if older else None
            (wall1, grading1), (wall2, grading2) = both.values()
            for j, (label, (wall, grading)) in zip((1, 2), both.items()):
                rows.append((label, f"{wall:.2f}", f"{n / grading:.2f} submissions/s after start-up "
                                                   f"({grading:.2f} s)",
                             f">= 1.0/s: {verdict(n / grading >= 1.0)}" if j == 2 else ""))
            # the same throughput in units of this run's floor: how many submissions one floor's time grades
            rows.append((f"batch of {n}, --jobs 2, in floors", "", f"{n / grading2 * floor:.2f} submissions per floor "
                         f"({floor:.2f} s)", ""))
            if then:
                rows.append((older, f"{then[0]:.2f}", f"{n / then[1]:.2f} submissions/s after start-up "
                                                      f"({then[1]:.2f} s)", ""))
                rows.append((f"batch of {n}, --jobs 2: this tree / {rev}", "", f"{then[1] / grading2:.3f}x throughput",
                             f">= 1.5x: {verdict(then[1] / grading2 >= 1.5)}"))
            scaling = grading1 / grading2
            rows.append(("batch scaling, jobs 1 -> 2", "", f"{scaling:.3f}x throughput ({wall1 / wall2:.3f}x "
                         "whole command)", f">= 1.7x: {verdict(scaling >= 1.7)}"))
        if args.mutation:
            rows += mutation_rows(py, tmp / "mutants.json")
    if sys.stdout.isatty():
        table = Table(title=f"Grading speed (--device {args.device}, median of {args.runs})")
        for name in HEADER:
            table.add_column(name, justify="right" if name == "median s" else "left")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    else:
        print(markdown_table(rows))
    sys.path.insert(0, str(ROOT))
    from worker.zygote import confinement
    confined = {"uid": "confined (own uid, namespaces where the kernel allows, cgroup where writable)",
                "namespaces": "confined (user, pid and mount namespaces)", "": "NOT confined"}[confinement()]
    print(f"workers: {confined}", file=sys.stderr)
    if args.out:
        nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        Path(args.out).write_text(
            f"## Grading speed\n\nMeasured {date.today().isoformat()} on {nproc} CPU(s) (`nproc`) at commit {version}, "
            f"workers {confined}: "
            f"every grader.py command with `--device {args.device}`, each figure the median of {args.runs} "
            f"interleaved runs (batch: {args.batch_runs}), each run a fresh process.\n\n"
            f"```bash\npython bench/bench.py {shlex.join(sys.argv[1:])}\n```\n\n{markdown_table(rows)}\n")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
