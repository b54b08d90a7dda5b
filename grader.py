#!/usr/bin/env python
"""Grade the transformer labs.

    python grader.py lab2                      # grade labs/lab2_multihead.py
    python grader.py all --solutions           # grade the reference solutions
    python grader.py all --submission DIR      # grade a folder holding the lab files
    python grader.py lab1 --json results.json  # also write Gradescope-format results

Each lab is judged in a child process (the judge) that never runs student code: it asks a worker process, forked
from a zygote that holds torch and nothing of the grader, to run the student's code, and decides every verdict
from the plain data that comes back. This process owns the list of checks, their points and the limits.
Exit code: 0 when every check of the chosen labs passed, 1 when any failed, 2 for a usage error.
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # the grader never writes its own tree (nor could a worker's poisoned cache count)

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from grading.labs import CORE, FILES, GROUPS  # noqa: E402  (standard library only)

LAB_NAMES = tuple(FILES)
LAB_FILES = tuple(FILES.values())
VISIBILITY = ("visible", "hidden", "after_due_date", "after_published")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="grader.py", description="Grade the transformer labs.")
    p.add_argument("lab", nargs="*", default=["all"], metavar="LAB",
                   help=f"{LAB_NAMES[0]} .. {LAB_NAMES[-1]}, several of them, all ({', '.join(CORE)}, the default) or "
                        f"bonus ({', '.join(GROUPS['bonus'])})")
    p.add_argument("--solutions", action="store_true", help="grade the reference solutions in solutions/")
    p.add_argument("--submission", metavar="DIR", help="grade a folder holding the lab files")
    p.add_argument("--json", metavar="PATH", help="write Gradescope-format results.json to PATH")
    p.add_argument("--own-labs", action="store_true",
                   help="grade each lab on the submission's own earlier labs, not the pack's stand-ins for them "
                        "(one bug then costs points in every lab built on it)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where checks run (default auto)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="wall time per lab (default 60)")
    p.add_argument("--memory", type=float, default=4.0, metavar="GIB", help="memory cap per lab in GiB (default 4)")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="labs graded at once")
    p.add_argument("-k", "--check", action="append", metavar="NAME", help="run only this check (repeatable)")
    p.add_argument("--hints", action="store_true", help="show the longer second hint for each failure")
    p.add_argument("-v", "--verbose", action="store_true", help="show each failure's student frames and the output")
    p.add_argument("--batch", metavar="DIR", help="grade every sub-folder of DIR (one submission each) into --csv")
    p.add_argument("--csv", metavar="PATH", default="grades.csv", help="batch results, one row per submission")
    p.add_argument("--gradescope", action="store_true",
                   help="grade $GRADESCOPE_ROOT/submission (default /autograder) into results/results.json")
    p.add_argument("--visibility", default="visible", choices=VISIBILITY,
                   help="Gradescope visibility of each check (default visible)")
    p.add_argument("--hidden-visibility", default="after_due_date", choices=VISIBILITY,
                   help="Gradescope visibility of the checks held back for submission (default after_due_date)")
    p.add_argument("--docker", action="store_true", help="run the same grading inside the grading image")
    p.add_argument("--image", default="transformer-labs-grader:latest", help="image for --docker")
    p.add_argument("--dry-run", action="store_true", help="with --docker: print the docker command, run nothing")
    p.add_argument("--watch", action="store_true",
                   help="stay running and grade again each time a lab file is saved (Ctrl-C to stop)")
    p.add_argument("--isolation", choices=("fork", "spawn"), default="fork" if sys.platform == "linux" else "spawn",
                   help="fork children from this preloaded process (fast, Linux) or start fresh interpreters")
    args = p.parse_args(argv)
    unknown = [lab for lab in args.lab if lab not in (*LAB_NAMES, *GROUPS)]
    if unknown:
        p.error(f"unknown lab {unknown[0]!r}: choose from {', '.join(LAB_NAMES)}, all or bonus")
    args.labs = [lab for lab in LAB_NAMES if lab in args.lab or any(lab in GROUPS[g] for g in GROUPS if g in args.lab)]
    sources = [bool(args.solutions), bool(args.submission), bool(args.batch), bool(args.gradescope)]
    if sum(sources) > 1:
        p.error("choose one of --solutions, --submission, --batch, --gradescope")
    for flag, folder in (("--submission", args.submission), ("--batch", args.batch)):
        if folder and not Path(folder).is_dir():
            p.error(f"{flag} {folder}: no such folder")
    if args.solutions and not (ROOT / "solutions").is_dir() and not args.docker:
        p.error("--solutions: this copy of the pack has no solutions/ folder")
    if args.watch and (args.batch or args.gradescope or args.docker or args.json):
        p.error("--watch grades one folder on screen: not with --batch, --gradescope, --docker or --json")
    if args.dry_run and not args.docker:
        p.error("--dry-run goes with --docker")
    if args.docker and (args.batch or args.gradescope):
        p.error("--docker grades one submission; run --batch or --gradescope inside the image instead")
    if args.timeout <= 0 or args.memory < 0 or args.jobs < 1:
        p.error("--timeout and --jobs must be positive, --memory not negative")
    return args


def resolve_device(requested: str) -> str:
    """auto -> cuda when a GPU is visible, else cpu, asked without initialising CUDA in this process (we fork)."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise SystemExit("grader.py: error: --device cuda, but no CUDA device is available")
    return "cuda" if requested == "cuda" or (requested == "auto" and available) else "cpu"


def read_submission(source: Path) -> tuple:
    """({file: bytes}, {file: why it was refused}) for the lab files: nothing else of a submission is read.

    Only regular files of at most 1 MB are taken (no symlinks, FIFOs or devices); they are read once, here, before
    any worker runs, and every judge and worker works from these bytes. A lab handed in as its notebook
    (`lab1_attention.ipynb`, up to 20 MB) or as the notebook downloaded as a script counts as the lab file its
    `%%lab` cells make.
    """
    from checkers.static import read_lab_file
    from grading.notebook import lab_source_from_export, lab_source_from_notebook
    sources, refused = {}, {}
    for name in LAB_FILES:
        try:
            data = read_lab_file(str(source / name))
            exported = lab_source_from_export(data.decode("utf-8", errors="replace")) if b"run_cell_magic" in data else None
            sources[name] = exported.encode() if exported is not None else data
        except FileNotFoundError:
            try:
                notebook = read_lab_file(str(source / name.replace(".py", ".ipynb")), limit=20 << 20)
                sources[name] = lab_source_from_notebook(notebook).encode()
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                refused[name] = f"{name.replace('.py', '.ipynb')}: {getattr(exc, 'strerror', None) or exc}"
        except OSError as exc:
            refused[name] = exc.strerror or str(exc)
    return sources, refused


def grade_submissions(submissions, labs, args, device: str, on_done=None, probe=True, hide=()) -> dict:
    """Grade `labs` of each (key, folder, display name); returns {key: [LabResult, ...]} in lab order.

    Every (submission, lab) pair is one child; all of them share one scheduler, `args.jobs` at a time. Workers
    see neither the submissions' folders nor `hide`. Each lab runs on the pack's stand-ins for the labs before it,
    or with args.own_labs on the submission's own.
    """
    own_labs = getattr(args, "own_labs", False)
    from grading.supervise import Task, run_tasks
    from grading.verdict import LabResult, clean, decide, expected_checks, note_dependencies
    results, tasks = {}, []
    hide = (*hide, *{str(Path(source).resolve()) for _, source, _ in submissions})
    for key, source, display in submissions:
        display = clean(display)
        sources, refused = read_submission(Path(source))
        results[key] = {}
        for lab in sorted(labs, reverse=True):  # the longest lab (lab 4) first: the others fit beside it
            file = LAB_FILES[LAB_NAMES.index(lab)]
            if file not in sources:
                why = refused.get(file, f"{display}/{file} not found")
                missing = LabResult(lab, "error", why, expected_checks(lab, args.check))
                for c in missing.checks:
                    c.message = "not run: the file is missing" if file not in refused else f"not run: {why}"
                results[key][lab] = missing
                if on_done:
                    on_done(key, missing)
                continue
            select = [c.name for c in expected_checks(lab, args.check)] if args.check else None
            tasks.append(Task(lab, sources, display, device, args.timeout, args.memory, select, key, hide, own_labs))

    def judged(outcome, quiet=False):
        task = outcome.task
        text = task.sources[LAB_FILES[LAB_NAMES.index(task.lab)]].decode(errors="replace")
        results[task.key][task.lab] = decide(outcome, expected_checks(task.lab, task.select), text)
        if on_done and not quiet:
            on_done(task.key, results[task.key][task.lab])

    zygote = ZYGOTE.get("socket")
    run_tasks(tasks, jobs=args.jobs, isolation=args.isolation, on_done=judged, zygote=zygote)
    if own_labs:  # a failing lab may only fail because of an earlier one it runs on: grade those too, for notes only
        probes = [Task(lab, t.sources, t.display_dir, device, args.timeout, args.memory, None, t.key, hide, True)
                  for t in tasks if results[t.key][t.lab].status != "passed"
                  for lab in LAB_NAMES[:LAB_NAMES.index(t.lab)] if lab not in labs and probe
                  and LAB_FILES[LAB_NAMES.index(lab)] in t.sources]
        probes = list({(t.key, t.lab): t for t in probes}.values())
        run_tasks(probes, jobs=args.jobs, isolation=args.isolation, on_done=lambda o: judged(o, quiet=True),
                  zygote=zygote)
        for labs_done in results.values():
            note_dependencies([labs_done[lab] for lab in LAB_NAMES if lab in labs_done])
    return {key: [labs_done[lab] for lab in labs] for key, labs_done in results.items()}


ZYGOTE = {}
# what lab code may import, loaded before the zygote forks: a worker under another uid may not be able to read
# the interpreter's own folders later
STDLIB = ("math", "random", "itertools", "functools", "collections", "collections.abc", "dataclasses", "typing",
          "string", "re", "json", "copy", "time", "operator", "statistics", "heapq", "bisect", "numbers", "enum",
          "contextlib", "warnings", "textwrap", "numpy", "numpy.ctypeslib", "torch.nn", "torch.nn.functional", "torch.optim",
          "torch.utils.data", "torch._dynamo", "safetensors.torch")


def preload(isolation: str):
    """Start the zygote, then import what every forked judge needs, so each starts in a fraction of a second.

    Order matters: the zygote is forked after torch (and the worker's own code) but before any checker module is
    imported, so no worker forked from it holds a check, an oracle or an expected value.
    """
    if sys.platform == "linux":  # this process's memory is closed to a worker of the same user
        import ctypes
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    if isolation != "fork" or ZYGOTE:
        return
    import importlib
    for name in STDLIB:
        importlib.import_module(name)
    import gc
    import worker.serve  # noqa: F401
    from worker import zygote
    gc.freeze()  # workers' garbage collections skip torch's heap (and do not copy its pages)
    ZYGOTE["socket"] = zygote.start()
    import checkers.judge  # noqa: F401
    gc.freeze()  # the preloaded heap: children's garbage collections skip it (and do not copy its pages)


UNCONFINED = "grader.py: warning: workers cannot be confined {why}: one submission's code can read and disturb " \
             "another's grading. {fix} (README: Confinement)."
ROOT_OR_USERNS = "Grade classes as root, in the grading image or on Gradescope, or allow unprivileged user namespaces"


def warn_if_unconfined(isolation: str):
    """For grading many students: say once, plainly, when their code cannot be kept apart."""
    from worker.zygote import confinement
    if isolation != "fork":
        print(UNCONFINED.format(why="with --isolation spawn (fresh interpreters)",
                                fix="Use --isolation fork (Linux), " + ROOT_OR_USERNS[0].lower() + ROOT_OR_USERNS[1:]),
              file=sys.stderr)
    elif not confinement():
        print(UNCONFINED.format(why="on this machine (not root, and no user namespaces)", fix=ROOT_OR_USERNS),
              file=sys.stderr)


def find_lab_files(folder: Path) -> Path:
    """The folder holding the lab files: `folder` itself, or the one sub-folder an upload unpacked them into."""
    names = [*LAB_FILES, *(name.replace(".py", ".ipynb") for name in LAB_FILES)]  # a notebook stands for its file
    if any((folder / name).is_file() for name in names):
        return folder
    found = sorted(p.parent for name in names for p in folder.rglob(name))
    return found[0] if found else folder


SETUP = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && source .venv/bin/activate"


def missing_package():
    """The first package the grader needs that this Python lacks, or None."""
    import importlib.util
    return next((name for name in ("torch", "safetensors", "rich") if importlib.util.find_spec(name) is None), None)


def watch(source: Path, labs, args, device: str, display: str, hide) -> int:
    """Grade, then grade again whenever a lab file changes, with everything preloaded: until Ctrl-C."""
    from rich.text import Text
    from grading import report
    out = report.console()

    def stamp():
        seen = []
        for name in LAB_FILES:
            try:
                info = (source / name).stat()
                seen.append((info.st_mtime_ns, info.st_size))
            except OSError:
                seen.append(None)
        return seen
    last = None
    try:
        while True:
            now = stamp()
            if now == last:
                time.sleep(0.1)
                continue
            time.sleep(0.05)  # an editor may still be writing: wait until the files are still
            if stamp() != now:
                continue
            last, started = now, time.monotonic()
            results = grade_submissions([(None, source, display)], labs, args, device, hide=hide)[None]
            if out.is_terminal:
                out.clear()
            report.print_scorecard(results, out, args.hints, args.verbose, display, time.monotonic() - started)
            out.print(Text(f"watching {display} for changes (Ctrl-C to stop)", style="dim"))
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    missing = missing_package()
    if missing:
        print(f"grader.py: error: the package {missing!r} is not installed for {sys.executable}.\n"
              f"Set up once (README, For students):\n    {SETUP}\nthen run the grader again with that environment's "
              "python (`python grader.py ...` once it is activated).", file=sys.stderr)
        return 2
    labs = args.labs
    hide = ()
    if args.gradescope:
        autograder = Path(os.environ.get("GRADESCOPE_ROOT", "/autograder"))
        hide = (str(autograder.resolve()),)  # its results folder included
        args.submission = str(find_lab_files(autograder / "submission"))
        args.json = str(autograder / "results" / "results.json")
    # the folders results go to: a worker's process must not even see them
    hide += tuple(str(Path(f).resolve().parent) for f in (args.json, args.csv if args.batch else None) if f)
    source = ROOT / "solutions" if args.solutions else Path(args.submission) if args.submission else ROOT / "labs"
    if args.docker:
        from grading.container import run_in_docker
        return run_in_docker(args, labs, source, resolve_device(args.device))
    display = os.path.relpath(source) if not os.path.relpath(source).startswith("..") else str(source)
    started, results, error = time.monotonic(), [], None
    try:
        device = resolve_device(args.device)
        if args.batch or args.gradescope:
            warn_if_unconfined(args.isolation)
        preload(args.isolation)  # first: the zygote must fork before any checker is imported
        from grading import report
        from grading.verdict import expected_checks
        if args.check:
            labs = [lab for lab in labs if expected_checks(lab, args.check)]
            if not labs:
                print(f"grader.py: error: no check matches {args.check}", file=sys.stderr)
                return 2
        if args.batch:
            from grading.batch import run_batch
            return run_batch(args.batch, labs, args, device, grade_submissions, hide)
        if args.watch:
            return watch(Path(source), labs, args, device, display, hide)
        results = grade_submissions([(None, source, display)], labs, args, device, hide=hide)[None]
        report.print_scorecard(results, report.console(), args.hints, args.verbose, display, time.monotonic() - started)
    except KeyboardInterrupt:
        error = "interrupted"
        print("grader.py: interrupted", file=sys.stderr)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise
    except Exception as exc:  # the grader's own failure: say so, and still write the JSON below
        error = f"{type(exc).__name__}: {exc}"
        print(f"grader.py: internal error: {error}", file=sys.stderr)
    finally:
        if args.json and not args.batch:
            from grading.report import write_json
            write_json(args.json, results, time.monotonic() - started, error, args.visibility, args.hidden_visibility)
    return 0 if results and not error and all(r.status == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
