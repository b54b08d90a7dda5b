"""The judge: run one lab's checks against a worker and report every outcome to the parent.

The parent forks this process from itself (or starts it with `python -m checkers.judge`). It never imports
or runs student code: it reads the lab source the parent copied before any worker ran, applies the static
rules, and calls each check with a `Worker` (checkers/client.py) that runs the student's code in another
process. Every verdict is computed here, from plain data. Records go to the parent as JSON lines on a pipe only
the judge holds, tagged with the run's nonce. The process always ends with `os._exit`.
"""
import ctypes
import json
import os
import sys
import time
import traceback

import torch

from checkers.client import ContractMissing, StudentError, Worker, WorkerGone
from checkers.common import FIGURES, LABS, CheckFailure, Skipped
from checkers.standins import files_for
from checkers.static import Forbidden, scan_source

MAX_MESSAGE = 4000
KIND_OF_STATUS = {"timeout": "timeout", "crashed": "crashed", "exited": "exit", "out of memory": "oom",
                  "error": "exception"}


class Channel:
    def __init__(self, fd: int, nonce: str):
        self.fd, self.nonce = fd, nonce

    def __call__(self, **record):
        data = (json.dumps({"nonce": self.nonce, **record}) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass  # the parent treats a missing record as a failure


def lab_of(filename: str):
    name = os.path.basename(str(filename)).removesuffix(".py")
    return next((lab for lab, (module, _) in LABS.items() if module == name), None)


def describe(exc: BaseException, lab: str, display_dir: str) -> dict:
    """What went wrong, in words, with the student frame it came from and a kind the parent turns into a status."""
    hint, trace, full, origin_lab, blame = None, [], "", None, None
    if isinstance(exc, CheckFailure):
        kind, text, hint, blame = "assert", str(exc), exc.hint, exc.blame
    elif isinstance(exc, Forbidden):
        kind, text, hint = "forbidden", f"forbidden: {exc}", "shortcut"
    elif isinstance(exc, ContractMissing):
        owner, _, name = str(exc).rpartition(".")
        where = f"{owner}.py" if owner in {m for m, _ in LABS.values()} else owner
        kind, text = "assert", f"{where} defines no `{name}`: the lab's contract (module docstring) asks for it."
    elif isinstance(exc, WorkerGone):
        kind, text = KIND_OF_STATUS.get(exc.status, "exception"), f"{exc.status}: {exc.detail}"
    elif isinstance(exc, StudentError):
        show = lambda f: f"{display_dir}/{f[0]}:{f[1]}"  # noqa: E731
        trace = [f"{show(f)} in {f[2]}: {f[3]}" for f in exc.frames[-6:]]
        origin = exc.frames[-1] if exc.frames else None
        origin_lab = lab_of(origin[0]) if origin else None
        text = f"{exc.type}: {exc.message}"
        if exc.type == "ImportError" and any(f"'{module}'" in exc.message for module, _ in LABS.values()):
            hint = "standalone"  # a name an earlier lab's contract does not define
        if exc.shortcut:
            kind, text, hint = "forbidden", f"forbidden shortcut: {exc.message}", "shortcut"
        elif exc.type == "NotImplementedError" and origin_lab:
            kind = "not_started" if origin_lab == lab else "blocked"
            text = f"not implemented yet: {exc.message}" if kind == "not_started" else \
                f"{LABS[origin_lab][0]}.py is not finished ({exc.message}): lab {origin_lab[3]} comes first"
        elif exc.memory:
            kind, text = "oom", f"out of memory: {exc.message[:300]}"
        elif exc.type == "SystemExit":
            kind, text = "exit", f"the code called sys.exit({exc.message})"
        elif exc.type in ("SyntaxError", "IndentationError", "TabError"):
            kind = "syntax"
        else:
            kind = "blocked" if origin_lab not in (None, lab) else "exception"
        if origin is not None and kind not in ("not_started", "forbidden"):
            text += f"\n  raised at {show(origin)}" + (f" in {origin[2]}" if origin[2] != "<module>" else "")
        full = exc.traceback
    else:  # the judge's own failure: never the student's fault
        kind, text = "internal", f"the grader failed on this check ({type(exc).__name__}: {exc})"
        full = "".join(traceback.format_exception(exc))
    hint = hint or {"not_started": "todo", "blocked": "earlier", "exception": "crash", "timeout": "slow",
                    "oom": "memory", "exit": "exit", "syntax": "syntax", "crashed": "crash"}.get(kind)
    return {"kind": kind, "message": text[:MAX_MESSAGE], "hint": hint, "origin": origin_lab, "trace": trace,
            "traceback": full[-MAX_MESSAGE:], "blame": blame if blame in LABS else None}


def run(lab, sources, display_dir, device, fd, nonce, check_timeout, deadline, zygote=None, hide=(), select=None,
        memory=4.0, own_labs=False):
    """Run the checks of one lab, report them, and end the process. Never returns.

    The worker runs the submission's file for this lab with the pack's stand-ins for the labs before it, or, with
    `own_labs`, the submission's own earlier labs."""
    emit = Channel(fd, nonce)
    worker = None
    try:
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: /proc/<pid>/mem is closed to a same-user worker
        torch.set_num_threads(1)
        import importlib
        checker = importlib.import_module(f"checkers.check_{lab}")
        checks = {n: f for n, f in vars(checker).items() if n.startswith("test_") and callable(f)}
        if select:
            checks = {n: f for n, f in checks.items() if n in select}
        module, _ = LABS[lab]
        emit(type="start", device=device, pid=os.getpid())
        hits = scan_source(sources.get(f"{module}.py", b""), f"{module}.py")
        if hits:
            emit(type="forbidden", message="forbidden: " + "; ".join(hits[:5]))
        files, trusted = files_for(lab, sources, None if own_labs else ())
        worker = Worker(files, device=device, memory=memory, timeout=check_timeout, zygote=zygote, hide=hide,
                        deadline=deadline, trusted=trusted)
        worker.lab, worker.submission, worker.own_labs = lab, dict(sources), own_labs
        try:
            worker.request({"op": "import", "module": module})
        except (StudentError, WorkerGone) as exc:
            emit(type="import", ok=False, **describe(exc, lab, display_dir))
            emit(type="end", output=worker.output())
            return
        emit(type="import", ok=True)
        for name, check in checks.items():
            FIGURES.clear()
            torch.manual_seed(0)
            start = time.perf_counter()
            try:
                check(worker)
            except Skipped as exc:  # the check does not apply to this submission: it neither passes nor fails
                emit(type="check", name=name, outcome="skipped", seconds=time.perf_counter() - start,
                     message=str(exc)[:MAX_MESSAGE], figures=[])
                continue
            except BaseException as exc:  # noqa: B036
                record = describe(exc, lab, display_dir)
                emit(type="check", name=name, outcome="failed", seconds=time.perf_counter() - start,
                     figures=FIGURES[:4], **record)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                continue
            emit(type="check", name=name, outcome="passed", seconds=time.perf_counter() - start, figures=FIGURES[:4])
        try:
            audit = worker.audit()
        except (StudentError, WorkerGone):
            audit = {}
        changed = [str(c)[:80] for c in audit.get("changed", [])] if type(audit.get("changed")) is list else []
        found = [f"the code called torch's built-in `{h}`" for h in worker.hits[:1]]
        if changed:
            found.append("the submission modified torch: " + ", ".join(changed[:8]))
        if found:
            emit(type="forbidden", message="forbidden: " + "; ".join(found))
        emit(type="end", output=worker.output())
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            if worker is not None:
                worker.close()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)


if __name__ == "__main__":  # fresh-interpreter mode: python -m checkers.judge '<json args>' (nonce in $GRADER_NONCE)
    spec = json.loads(sys.argv[1])
    spec["sources"] = {k: v.encode("latin-1") for k, v in spec["sources"].items()}
    run(nonce=os.environ.pop("GRADER_NONCE"), **spec)
