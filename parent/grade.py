"""The parent's grading: read each submission once, run a judge per (submission, lab) under the parent's limits,
and turn the judges' records into verdicts. The parent never runs student code and imports nothing of the judge
(its checks are listed from their source, parent/verdict.py); it only preloads the judge's module, by name, so
judges fork from a warm heap.
"""
import sys
from pathlib import Path

from pack.labs import FILES, LABS, earlier, order
from pack.paths import covering
from parent.submission import read_submission
from parent.supervise import JUDGE, Task, run_tasks
from parent.verdict import LabResult, clean, clean_name, decide, expected_checks, note_dependencies


def grade_submissions(submissions, labs, args, device: str, on_done=None, probe=True, hide=()) -> dict:
    """Grade `labs` of each (key, folder, display name); returns {key: [LabResult, ...]} in lab order.

    Every (submission, lab) pair is one child; all of them share one scheduler, `args.jobs` at a time. Workers
    see neither the submissions' folders nor `hide`. Each lab runs on the pack's stand-ins for the labs before it,
    or with args.own_labs on the submission's own.
    """
    own_labs = getattr(args, "own_labs", False)
    results, tasks, found = {}, [], {}

    def found_notes(key, lab):  # which upload was graded as the lab's file, when it was not simply that file
        note = found.get(key, {}).get(FILES[lab])
        return [note] if note else []

    hide = covering((*hide, *(str(Path(source).resolve()) for _, source, _ in submissions)))
    for key, source, display in submissions:
        display = clean_name(display)
        try:  # one submission's boundary: whatever its files do to the reader, it gets its own reason
            sources, refused, found[key] = read_submission(Path(source), args.memory)
        except Exception as exc:  # noqa: BLE001
            sources, found[key], refused = {}, {}, {FILES[lab]: f"the grader could not read this submission ({type(exc).__name__})"
                                    for lab in labs}
        results[key] = {}
        for lab in sorted(labs, key=order, reverse=True):  # the longest lab (lab 4) first: the others fit beside it
            file = FILES[lab]
            if file not in sources:
                why = refused.get(file) or found[key].get(file) or f"{display}/{file} not found"
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
        try:
            text = task.sources[FILES[task.lab]].decode(errors="replace")
            results[task.key][task.lab] = decide(outcome, expected_checks(task.lab, task.select), text)
            for view in {id(r): r for r in (results[task.key][task.lab], results[task.key][task.lab].shown) if r}.values():
                view.notes[:0] = found_notes(task.key, task.lab)
        except Exception as exc:  # noqa: BLE001  (the grader's own bug, met on this lab: its row says so)
            results[task.key][task.lab] = LabResult(task.lab, "error", f"the grader failed on this lab "
                                                    f"({type(exc).__name__}: {clean(exc)})",
                                                    expected_checks(task.lab, task.select))
        if on_done and not quiet:
            on_done(task.key, results[task.key][task.lab])

    zygote = ZYGOTE.get("socket")
    run_tasks(tasks, jobs=args.jobs, isolation=args.isolation, on_done=judged, zygote=zygote)
    if own_labs:  # a failing lab may only fail because of an earlier one it runs on: grade those too, for notes only
        probes = [Task(lab, t.sources, t.display_dir, device, args.timeout, args.memory, None, t.key, hide, True)
                  for t in tasks if results[t.key][t.lab].status != "passed"
                  for lab in earlier(t.lab) if lab not in labs and probe and FILES[lab] in t.sources]
        probes = list({(t.key, t.lab): t for t in probes}.values())
        run_tasks(probes, jobs=args.jobs, isolation=args.isolation, on_done=lambda o: judged(o, quiet=True),
                  zygote=zygote)
        for labs_done in results.values():
            note_dependencies([labs_done[lab] for lab in LABS if lab in labs_done])
    return {key: [labs_done[lab] for lab in labs] for key, labs_done in results.items()}


ZYGOTE = {}
# what lab code may import, loaded before the zygote forks: a worker under another uid may not be able to read
# the interpreter's own folders later
STDLIB = ("math", "random", "itertools", "functools", "collections", "collections.abc", "dataclasses", "typing",
          "string", "re", "json", "copy", "time", "operator", "statistics", "heapq", "bisect", "numbers", "enum",
          "contextlib", "warnings", "textwrap", "numpy", "numpy.ctypeslib", "torch.nn", "torch.nn.functional", "torch.optim",
          "torch.utils.data", "torch._dynamo", "safetensors.torch")


def preload(isolation: str, labs=()):
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
    importlib.import_module("worker.serve")  # the workers' code, loaded before the zygote forks
    from worker import zygote
    gc.freeze()  # workers' garbage collections skip torch's heap (and do not copy its pages)
    ZYGOTE["socket"] = zygote.start()
    importlib.import_module(JUDGE)  # only to fork judges from a warm heap: nothing of it is read here
    for lab in labs:  # the checkers of the labs to grade, compiled once here rather than in each of their judges
        try:
            importlib.import_module(f"checkers.check_{lab}")
        except ImportError:  # a lab whose checker is not in this copy of the pack: its judges say so
            pass
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


