"""Child side of grading: run one lab's checks and report every outcome to the parent.

The grader forks this process (or starts it fresh with `python -m checkers.runner`); it is the only process
that imports student code. Each outcome goes to the parent as one JSON line, tagged with a per-run nonce, on
a pipe the parent created. A "passed" record is written only by `Recorder.pytest_pyfunc_call`, which calls
the check function captured *before* the student module was imported, so a patched pytest report, a forged
summary on stdout or a rewritten checker attribute cannot produce one. The process always ends with
`os._exit`, so `atexit` hooks never run.
"""
import importlib
import json
import os
import sys
import time
import traceback

import pytest
import torch
import torch._dynamo  # noqa: F401  (imported lazily by dispatch modes and AdamW; it rewraps torch functions)

from checkers.common import FIGURES, LABS, ROOT, CheckFailure, configure
from checkers.guards import HIT_LISTENERS, ForbiddenShortcut, Snapshot

_write, _exit, _dumps, _perf = os.write, os._exit, json.dumps, time.perf_counter
MAX_MESSAGE = 4000


class Channel:
    def __init__(self, fd: int, nonce: str):
        self.fd, self.nonce = fd, nonce

    def __call__(self, **record):
        data = (_dumps({"nonce": self.nonce, **record}) + "\n").encode()
        try:
            while data:
                data = data[_write(self.fd, data):]
        except OSError:
            pass  # the parent treats a missing record as a failure


def lab_of(path: str):
    name = os.path.basename(path).removesuffix(".py")
    return next((lab for lab, (module, _) in LABS.items() if module == name), None)


def describe(exc: BaseException, lab: str, lab_dir: str, display_dir: str) -> dict:
    """What went wrong, in words, with the student frame it came from and a kind the parent turns into a status."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(lab_dir)]
    if isinstance(exc, SyntaxError) and (exc.filename or "").startswith(lab_dir):
        frames.append(traceback.FrameSummary(exc.filename, exc.lineno or 0, "<module>", line=(exc.text or "").strip()))
    show = lambda f: f"{display_dir}/{os.path.basename(f.filename)}:{f.lineno}"
    trace = [f"{show(f)} in {f.name}: {f.line}" for f in frames[-6:]]
    origin = frames[-1] if frames else None
    origin_lab = lab_of(origin.filename) if origin else None
    text = f"{type(exc).__name__}: {exc}"
    hint = None
    if isinstance(exc, CheckFailure):
        kind, text, hint = "assert", str(exc), exc.hint
    elif isinstance(exc, ForbiddenShortcut):
        kind, text, hint = "forbidden", f"forbidden shortcut: {exc}", "shortcut"
    elif isinstance(exc, NotImplementedError) and origin_lab:
        kind = "not_started" if origin_lab == lab else "blocked"
        text = f"not implemented yet: {exc}" if kind == "not_started" else \
            f"{LABS[origin_lab][0]}.py is not finished ({exc}): lab {origin_lab[3]} comes first"
    elif type(exc).__name__ == "Failed" and str(exc).startswith("Timeout"):
        kind, text = "timeout", f"timed out ({str(exc).split(chr(10))[0]})"
    elif isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(exc):
        kind, text = "oom", f"out of memory: {str(exc)[:300]}"
    elif isinstance(exc, SystemExit):
        kind, text = "exit", f"the code called sys.exit({exc.code!r})"
    elif isinstance(exc, SyntaxError):
        kind = "syntax"
    else:
        kind = "blocked" if origin_lab not in (None, lab) else "exception"
    hint = hint or {"not_started": "todo", "blocked": "earlier", "exception": "crash", "timeout": "slow", "oom": "memory",
                    "exit": "exit", "syntax": "syntax"}.get(kind)
    if origin is not None and kind not in ("assert", "not_started"):
        text += f"\n  raised at {show(origin)}" + (f" in {origin.name}" if origin.name != "<module>" else "")
    full = "".join(traceback.format_exception(exc))[-MAX_MESSAGE:] if kind not in ("assert", "not_started") else ""
    return {"kind": kind, "message": text[:MAX_MESSAGE], "hint": hint, "origin": origin_lab, "trace": trace,
            "traceback": full}


class Recorder:
    """pytest plugin that runs each captured check itself and records its outcome on the channel."""

    def __init__(self, emit, checks, snapshot, lab, lab_dir, display_dir):
        self.emit, self.checks, self.snapshot = emit, checks, snapshot
        self.args = (lab, lab_dir, display_dir)

    def tampered(self):
        changed = self.snapshot.changed()
        if changed:
            self.emit(type="forbidden", message="the submission modified the grading environment: " + ", ".join(changed[:8]))

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem):
        name = pyfuncitem.originalname
        check = self.checks.get(name)
        if check is None:
            return None
        FIGURES.clear()
        start = _perf()
        try:
            check()
        except BaseException as exc:
            self.emit(type="check", name=name, outcome="failed", seconds=_perf() - start, figures=FIGURES[:4],
                      **describe(exc, *self.args))
            raise
        finally:
            self.tampered()
        self.emit(type="check", name=name, outcome="passed", seconds=_perf() - start, figures=FIGURES[:4])
        return True


def run(lab, lab_dir, display_dir, device, fd, nonce, check_timeout, select=None):
    """Run the checks of one lab, report them, and end the process. Never returns."""
    emit = Channel(fd, nonce)
    try:
        os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        sys.dont_write_bytecode = True
        torch.set_num_threads(1)  # tiny tensors: threads only cost here
        configure(lab_dir, device)
        checker = importlib.import_module(f"checkers.check_{lab}")
        checks = {n: f for n, f in vars(checker).items() if n.startswith("test_") and callable(f)}
        HIT_LISTENERS.append(lambda name: emit(type="forbidden", message=f"forbidden shortcut: the code called `{name}`"))
        snapshot = Snapshot()  # everything above is bound before the student's code runs
        emit(type="start", device=device, pid=os.getpid())
        try:
            importlib.import_module(LABS[lab][0])
        except BaseException as exc:
            emit(type="import", ok=False, **describe(exc, lab, lab_dir, display_dir))
            emit(type="end")
            _exit(0)
        emit(type="import", ok=True)
        recorder = Recorder(emit, checks, snapshot, lab, lab_dir, display_dir)
        recorder.tampered()
        path = str(ROOT / "checkers" / f"check_{lab}.py")
        targets = [f"{path}::{name}" for name in select] if select else [path]
        pytest.main([*targets, "-q", "--tb=short", "--no-header", "-p", "no:cacheprovider", "--noconftest",
                     "-c", str(ROOT / "pytest.ini"), "--rootdir", str(ROOT), "-p", "pytest_timeout",
                     "-p", "checkers.plugin", "-p", "no:unraisableexception", "-p", "no:threadexception", "--lab-dir", lab_dir, "--lab-device", device,
                     "-o", f"timeout={check_timeout}", "-o", "timeout_method=signal"], plugins=[recorder])
        emit(type="end")
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            _exit(0)


if __name__ == "__main__":  # fresh-interpreter mode: python -m checkers.runner '<json args>' (nonce in $GRADER_NONCE)
    spec = json.loads(sys.argv[1])
    run(nonce=os.environ.pop("GRADER_NONCE"), **spec)
