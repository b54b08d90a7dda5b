"""The one check runner, for the judge process (judge/main.py) and for plain pytest (judge/plugin.py).

`checks_of(lab)` lists a lab's checks in file order; `run_check` runs one against a worker and turns whatever
happened into a CheckDone record: passed (with the figures the check returned), skipped, or failed with a Failure
that names its Fault, message, hint and the student's frames; a check that timed out on a busy machine runs once
more on a fresh worker. `files_for` decides which files a lab's worker holds, and which stand-ins it installs.
"""
import ast
import base64
import dataclasses
import functools
import importlib
import marshal
import re
import time
import traceback
from pathlib import Path

from judge.checks import CheckFailure, Skipped, known_hint
from judge.client import ContractMissing, StudentError, WorkerGone, meta_message
from judge.static import Forbidden
from pack.labs import BY_MODULE, FILES, LABS, earlier, lab_of_module
from protocol import messages as m
from protocol.messages import Fault, machine_busy
from protocol.values import seed

MAX_MESSAGE = 4000
STANDINS = Path(__file__).resolve().parent.parent / "worker" / "standins"  # read here, compiled, run by the worker only
STANDIN_FILE = "<stand-in {}>"  # the file name a stand-in's code carries: no file of that name exists anywhere


def checks_of(lab: str) -> dict:
    """{name: check function} of the lab's checker module, in file order."""
    checker = importlib.import_module(f"checkers.check_{lab}")
    return {n: f for n, f in vars(checker).items() if n.startswith("test_") and callable(f)}


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """The module's tree with every docstring (module, class, function) taken out: text the code does not need."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.fix_missing_locations(tree)


@functools.lru_cache(maxsize=None)
def standin(name: str):
    """The pack's stand-in for lab `name`, compiled here (an m.StandIn), or None when this copy of the pack has none
    (the student release has no lab 4 stand-in). The worker gets the code object only: never the source, never a
    file, and the code names a file that does not exist, so nothing in the worker can read its lines back."""
    path = STANDINS / FILES[name]
    if not path.is_file():
        return None
    module = LABS[name].module
    tree = _without_docstrings(ast.parse(path.read_bytes(), filename=STANDIN_FILE.format(module)))
    code = compile(tree, STANDIN_FILE.format(module), "exec", dont_inherit=True)
    return m.StandIn(module, base64.b64encode(marshal.dumps(code)).decode("ascii"))


def files_for(lab: str, submission: dict, own=None) -> tuple:
    """(files, stand-ins) for a worker that runs `lab`: the submission's file for `lab` and for every lab in `own`
    (None: every lab the submission has, stand-ins for none), the pack's stand-in (an m.StandIn, compiled) for each
    other lab before it (the submission's own file where the pack has none). Later labs' files are left out. Only
    the submission's files are written into the worker's folder."""
    if own is None:
        return dict(submission), []
    files, standins = {}, []
    for name in earlier(lab):
        compiled = standin(name)
        if FILES[name] in submission and (name in own or compiled is None):
            files[FILES[name]] = submission[FILES[name]]
        elif compiled is not None:
            standins.append(compiled)
    if FILES[lab] in submission:
        files[FILES[lab]] = submission[FILES[lab]]
    return files, standins


@functools.lru_cache(maxsize=None)
def standin_names(name: str) -> frozenset:
    """The functions and classes the pack's stand-in for lab `name` defines at its top level."""
    path = STANDINS / FILES[name]
    if not path.is_file():
        return frozenset()
    return frozenset(node.name for node in ast.parse(path.read_bytes()).body
                     if isinstance(node, (ast.FunctionDef, ast.ClassDef)))


_MISSING_NAME = ("cannot import name '(?P<name>\\w+)' from '(?P<module>\\w+)'",
                 "module '(?P<module>\\w+)' has no attribute '(?P<name>\\w+)'")
_REFUSED_CALL = re.compile(r"(?P<owner>\w+)(\.__init__)?\(\) (got an unexpected keyword argument '(?P<kw>\w+)'|takes "
                           r"(from \d+ to )?\d+ positional arguments? but \d+ (were|was) given)")


def beyond_contract(exc, lab: str, submission: dict, own) -> tuple:
    """(earlier lab, why) when the submission's code, run beside the pack's stand-ins, asked an earlier lab's
    stand-in for more than its contract: a name the stand-in does not define, or a call the stand-in's signature
    refuses (a TypeError for an unexpected keyword or too many arguments). The lab is then graded on the
    submission's own file for that earlier lab (judge/main.py). None otherwise, or when the submission has no such
    file, or the lab already runs on it."""
    if not isinstance(exc, StudentError):
        return None
    open_labs = [name for name in earlier(lab) if name not in own and FILES[name] in submission
                 and standin(name) is not None]
    if exc.type in ("ImportError", "AttributeError"):
        for pattern in _MISSING_NAME:
            found = re.search(pattern, exc.message)
            if found:
                name = next((n for n in open_labs if LABS[n].module == found["module"]), None)
                if name and found["name"] not in standin_names(name):
                    return name, f"it uses `{found['name']}`, which the contract does not name"
    if exc.type == "TypeError":
        found = _REFUSED_CALL.search(exc.message)
        name = next((n for n in open_labs if found and found["owner"] in standin_names(n)), None)
        if name:
            what = f"with `{found['kw']}=`" if found["kw"] else "with more arguments"
            return name, f"it calls `{found['owner']}` {what}, which the contract does not name"
    return None


def describe(exc: BaseException, lab: str, display_dir: str) -> m.Failure:
    """What went wrong, in words, with the student frame it came from and its Fault."""
    hint, trace, full, origin_lab, blame, usage = None, [], "", None, None, None
    if isinstance(exc, CheckFailure):
        fault, text, hint, blame = Fault.ASSERT, str(exc), exc.hint, exc.blame
    elif isinstance(exc, Forbidden):
        fault, text = Fault.FORBIDDEN, f"forbidden: {exc}"
    elif isinstance(exc, ContractMissing):
        owner, _, name = str(exc).rpartition(".")
        where = f"{owner}.py" if owner in BY_MODULE else owner
        fault, text = Fault.ASSERT, f"{where} defines no `{name}`: the lab's contract (module docstring) asks for it."
    elif isinstance(exc, WorkerGone):
        fault, text, usage = exc.fault, f"{exc.status}: {exc.detail}", exc.usage
    elif isinstance(exc, StudentError):
        show = lambda f: f"{display_dir}/{f.file}:{f.line}"  # noqa: E731
        trace = [f"{show(f)} in {f.function}: {f.text}" for f in exc.frames[-6:]]
        origin = exc.frames[-1] if exc.frames else None
        found = lab_of_module(origin.file) if origin else None
        origin_lab = found.name if found else None
        text = f"{exc.type}: {exc.message}"
        if meta_message(exc):  # torch's words about the grader's meta device: what happened, in the student's terms
            text = ("this check could not be decided: it runs your code on the meta device (shapes, no values), and "
                    "an operation there asked for a tensor's values")
        if exc.type == "ImportError" and any(f"'{module}'" in exc.message for module in BY_MODULE):
            hint = "standalone"  # a name an earlier lab's contract does not define
        if exc.shortcut:
            fault, text = Fault.FORBIDDEN, f"forbidden shortcut: {exc.message}"
        elif exc.type == "NotImplementedError" and origin_lab:
            fault = Fault.NOT_STARTED if origin_lab == lab else Fault.BLOCKED
            text = f"not implemented yet: {exc.message}" if fault is Fault.NOT_STARTED else \
                f"{FILES[origin_lab]} is not finished ({exc.message}): lab {LABS[origin_lab].number} comes first"
        elif exc.memory:
            fault, text = Fault.OOM, f"out of memory: {exc.message[:300]}"
        elif exc.type == "SystemExit":
            fault, text = Fault.EXITED, f"the code called sys.exit({exc.message})"
        elif exc.type in ("SyntaxError", "IndentationError", "TabError"):
            fault = Fault.SYNTAX
        else:
            fault = Fault.BLOCKED if origin_lab not in (None, lab) else Fault.EXCEPTION
        if origin is not None and fault not in (Fault.NOT_STARTED, Fault.FORBIDDEN):
            text += f"\n  raised at {show(origin)}" + (f" in {origin.function}" if origin.function != "<module>" else "")
        full = exc.traceback
    else:  # the judge's own failure: never the student's fault
        fault, text = Fault.INTERNAL, f"the grader failed on this check ({type(exc).__name__}: {exc})"
        full = "".join(traceback.format_exception(exc))
    return m.Failure(fault=fault, message=text[:MAX_MESSAGE], hint=known_hint(hint or fault.hint), origin=origin_lab,
                     trace=trace, traceback=full[-MAX_MESSAGE:], blame=blame if blame in LABS else None, usage=usage)


def _figures(value) -> list:
    return [f for f in value if isinstance(f, m.Figure)][:4] if isinstance(value, (list, tuple)) else []


def run_check(name: str, check, worker, lab: str, display_dir: str = ".", rerun: bool = True) -> m.CheckDone:
    """Run one check (seeded) against the worker; never raises but for KeyboardInterrupt.

    A check that timed out while the machine was busy (protocol.messages.machine_busy: its worker stopped at the
    wall-clock bound with CPU time to spare, its processes kept waiting for a CPU) runs once more, on a fresh
    worker; the record keeps the first try's failure in `rerun`, and the second try's outcome counts."""
    done = _run_once(name, check, worker, lab, display_dir)
    first = done.failure
    if rerun and first is not None and first.fault is Fault.TIMEOUT and machine_busy(first.usage):
        worker.close()  # the timeout closed it already; a fresh one starts on the next request
        return dataclasses.replace(_run_once(name, check, worker, lab, display_dir), rerun=first)
    return done


def _run_once(name: str, check, worker, lab: str, display_dir: str) -> m.CheckDone:
    seed(0, str(getattr(worker, "device", "cpu")).startswith("cuda"))
    start = time.perf_counter()
    try:
        figures = _figures(check(worker))
    except Skipped as exc:  # the check does not apply to this submission: it neither passes nor fails
        return m.CheckDone(name, "skipped", time.perf_counter() - start, message=str(exc)[:MAX_MESSAGE])
    except KeyboardInterrupt:
        raise
    except StudentError as exc:
        if not exc.undecided:
            failure = describe(exc, lab, display_dir)
            return m.CheckDone(name, "failed", time.perf_counter() - start, message=failure.message, failure=failure)
        # the worker's device probe (meta device) had no values for an op: the grader's limit, so the check passes
        where = f" at {exc.frames[-1].file}:{exc.frames[-1].line}" if exc.frames else ""
        return m.CheckDone(name, "skipped", time.perf_counter() - start, message=(
            f"not decided on this machine: the device probe runs on the meta device, which holds no values, and "
            f"your code{where} reads one it could not provide; counted as passed")[:MAX_MESSAGE])
    except BaseException as exc:  # noqa: B036
        failure = describe(exc, lab, display_dir)
        return m.CheckDone(name, "failed", time.perf_counter() - start, message=failure.message, failure=failure,
                           figures=_figures(getattr(exc, "figures", [])))
    return m.CheckDone(name, "passed", time.perf_counter() - start, figures=figures)
