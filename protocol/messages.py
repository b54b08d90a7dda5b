"""Every message between the parent, the judges, the zygote and the workers, declared once; standard library only.

    parent -> judge      JudgeSpec (fresh-interpreter mode; a forked judge gets the same fields as arguments)
    judge -> parent      Start, Imported, CheckDone, RuleBroken, End: one JSON line each on the judge's channel
    judge -> zygote      WorkerSpec, with the worker's pipes
    judge -> worker      Import, Get, Call, Load, State, To, Audit
    worker -> judge      Answer (value / result / stored, or the student's error as ErrorInfo)

protocol/codec.py encodes and decodes all of them, with every bound; `Fault` names what went wrong, with the lab
status and the hint it leads to, for every side.
"""
import enum
import os
import signal
from dataclasses import field
from typing import Optional

from protocol.codec import Value, message


class Fault(enum.Enum):
    """What went wrong in a check or an import: (name on the wire, the lab status it gives, its hint key).

    A check that ran into a fault with a status (a worker that hung, crashed, exited or ran out of memory) gives the
    lab that status; the others fail the check only."""
    ASSERT = ("assert", None, None)  # the check's own verdict
    FORBIDDEN = ("forbidden", "forbidden", "shortcut")
    NOT_STARTED = ("not_started", "not started", "todo")
    BLOCKED = ("blocked", None, "earlier")  # an earlier lab's code raised
    EXCEPTION = ("exception", None, "crash")
    SYNTAX = ("syntax", None, "syntax")
    INTERNAL = ("internal", None, None)  # the grader's own failure
    TIMEOUT = ("timeout", "timeout", "slow")
    CRASHED = ("crashed", "crashed", "crash")
    EXITED = ("exit", "exited", "exit")
    OOM = ("oom", "out of memory", "memory")

    def __new__(cls, wire, status, hint):
        member = object.__new__(cls)
        member._value_ = wire
        member.status, member.hint = status, hint
        return member

    @property
    def of_worker(self) -> bool:
        """The worker process itself went wrong (the lab shows this status, the check scores 0)."""
        return self in (Fault.TIMEOUT, Fault.CRASHED, Fault.EXITED, Fault.OOM)


def wait_fault(status: int) -> tuple:
    """(Fault, words) for a worker's wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGKILL:
            return Fault.OOM, "killed by the system (SIGKILL), most likely for using too much memory"
        if sig == signal.SIGXCPU:
            return Fault.TIMEOUT, "ran out of CPU time"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return Fault.CRASHED, f"the process crashed ({name})"
    return Fault.EXITED, f"the process exited with code {os.WEXITSTATUS(status)} before answering"


# A request's limit is in CPU seconds of the worker's own processes; its wall-clock bound is this many times longer
# (a lab's too: `--timeout` CPU seconds, WALL_FACTOR times that in wall time), so a busy machine does not count
# against the student.
WALL_FACTOR = 3
BUSY_WAIT = 0.25  # a worker whose processes waited for a CPU this share of a request's wall time: the machine was busy


@message("usage")
class Usage:
    """What a worker's processes used during one request, and its limits: CPU seconds (`measured` says where they
    were read: "cgroup" or "processes"), wall seconds, and seconds its processes were ready to run but waited for a
    CPU (the kernel's run delay)."""
    cpu: float
    wall: float
    waited: float = 0.0
    cpu_limit: float = 0.0
    wall_limit: float = 0.0
    measured: str = ""


def machine_busy(usage) -> bool:
    """A request stopped at its wall-clock bound while its CPU time was still under its limit, and its processes
    spent a fair part of that time waiting for a CPU: the machine was busy, not the student's code slow (code that
    sleeps or waits on itself waits for no CPU)."""
    return (usage is not None and usage.wall_limit > 0 and usage.wall >= usage.wall_limit
            and usage.cpu < usage.cpu_limit and usage.waited >= BUSY_WAIT * usage.wall)


# ---- judge -> worker ---------------------------------------------------------------------------------
@message("target")
class Target:
    """A lab module's attribute (kind "module", owner a module name) or a held object's (kind "handle", owner its
    id); `name` may be a dotted path under a held module ("blocks.0.mlp.forward")."""
    kind: str
    owner: str
    name: str


@message("backward")
class Backward:
    grad_out: Value  # a tensor (tagged form)
    index: Optional[int] = None  # backpropagate from this element of a tuple output


@message("watch")
class Watch:
    handle: str
    name: str  # a sub-module (watch: its forward inputs) or a parameter (resets: its .grad each step)


@message("capture")
class Capture:
    """Spy on `function` of lab module `module` wherever the lab modules call it: its first result comes back."""
    module: str
    function: str


@message("swap")
class Swap:
    """Weights that change call by call: before each forward of held module `handle` (the outermost one, however it
    is reached: `m(x)`, `m.forward(x)`), the worker copies the next of `states` ({parameter name: tensor}, tagged
    values) into its parameters; calls past the last state keep it. The module's own values come back afterwards."""
    handle: str
    states: Value = ()


@message("options")
class Options:
    """The grader's own options for one call; the student function's arguments travel apart from these."""
    seed: Optional[int] = 0
    store: bool = False  # keep the result under a handle (an nn.Module goes to the device, in eval mode)
    no_grad: bool = False
    backward: Optional[Backward] = None
    watch: Optional[Watch] = None
    resets: Optional[Watch] = None
    capture: Optional[Capture] = None
    swap: Optional[Swap] = None
    guard: bool = False  # the runtime shortcut guard
    device_guard: bool = False  # one device per op
    timeout: Optional[float] = None  # the judge's limit for this call (never sent on)


@message("import")
class Import:
    module: str


@message("get")
class Get:
    target: Target


@message("call")
class Call:
    target: Target
    args: Value = ()  # tagged values (protocol/values.py)
    kwargs: Value = field(default_factory=dict)
    options: Options = Options()


@message("load")
class Load:
    handle: str  # the frame's tensors are copied into the module's parameters and buffers of those names


@message("state")
class State:
    handle: str


@message("to")
class To:
    handle: str
    device: str


@message("audit")
class Audit:
    pass


REQUESTS = (Import, Get, Call, Load, State, To, Audit)


# ---- worker -> judge ---------------------------------------------------------------------------------
@message("frame")
class Frame:
    file: str
    line: int
    function: str
    text: str


@message("error")
class ErrorInfo:
    """An exception the student's code raised, as data: its type, message and the lines of the lab files."""
    type: str
    message: str
    frames: list[Frame] = field(default_factory=list)
    traceback: str = ""
    memory: bool = False
    shortcut: bool = False
    undecided: bool = False  # the grader's own probe could not run it (the meta device has no values): not the code's


@message("param")
class Param:
    name: str
    shape: list[int]
    dtype: str
    requires_grad: bool


@message("submodule")
class Submodule:
    name: str  # "" for the module itself
    cls: str
    module: str
    kinds: list[str]  # the torch classes it is an instance of (Linear, LayerNorm, ...), "forbidden"


@message("module_info")
class ModuleInfo:
    """What the judge may know of an object the worker holds (parameters, sub-modules, numeric attributes)."""
    type: str
    module: str
    params: list[Param] = field(default_factory=list)
    ties: list[list[str]] = field(default_factory=list)
    modules: list[Submodule] = field(default_factory=list)
    attrs: dict[str, Value] = field(default_factory=dict)  # int or float, as the module has it


@message("stored")
class Stored:
    handle: str
    info: ModuleInfo


@message("grads")
class Grads:
    connected: bool
    inputs: Value = ()  # the gradients of the tensor arguments that asked for one
    params: Value = None  # {name: gradient} of the module's parameters


@message("result")
class Result:
    """What a call gave: its output and whatever its options asked to observe."""
    out: Value = None
    grads: Optional[Grads] = None
    watched: Optional[list[list[Value]]] = None  # [input shape, grad enabled] per forward
    resets: Optional[list[bool]] = None
    captured: Value = None


@message("answer")
class Answer:
    ok: bool
    value: Value = None  # a plain value (Get, State)
    result: Optional[Result] = None  # Call
    stored: Optional[Stored] = None  # Get or Call of something held under a handle
    error: Optional[ErrorInfo] = None
    hits: list[str] = field(default_factory=list)  # built-ins the runtime guard refused so far


# ---- judge -> zygote ---------------------------------------------------------------------------------
# A judge asks the zygote for a worker with the datagram SPEC and five descriptors: a file holding the WorkerSpec as
# one frame (so its size is bounded by the frame's bound, not the socket's), then the worker's request, response,
# output and control pipes.
SPEC = b"spec"


@message("stand_in")
class StandIn:
    """One of the pack's stand-ins for an earlier lab, compiled by the judge: `code` is the module's code object
    (marshal, then base64), compiled under a name that is no file (`<stand-in lab4_gpt>`) with its docstrings
    dropped. The worker installs it as the module `module` before any student code runs; its source never leaves
    the judge, and no file of it is ever written where a worker can see it."""
    module: str
    code: str


@message("worker_spec")
class WorkerSpec:
    lab_dir: str
    device: str
    memory: float  # GiB
    judge: int  # the judge's pid: the worker dies with it
    cpu_seconds: int
    hide: list[str] = field(default_factory=list)
    standins: list[StandIn] = field(default_factory=list)  # the pack's stand-ins, installed in this order


# ---- parent -> judge ---------------------------------------------------------------------------------
@message("judge_spec")
class JudgeSpec:
    """What the parent tells a judge; the submission's files travel apart (the frame's blob, see codec.files_blob)."""
    lab: str
    display_dir: str
    device: str
    check_timeout: float
    deadline: float
    memory: float
    own_labs: bool = False
    select: Optional[list[str]] = None
    hide: list[str] = field(default_factory=list)
    fd: int = -1
    cpu_budget: Optional[float] = None  # CPU seconds the lab's workers may use in all (None: no budget)


# ---- judge -> parent ---------------------------------------------------------------------------------
@message("figure")
class Figure:
    """A picture a check attaches to its result: attention weights (heatmap), a loss curve (losses) or text."""
    kind: str
    title: str = ""
    got: list[list[float]] = field(default_factory=list)
    want: list[list[float]] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    label: str = ""
    text: str = ""


@message("failure")
class Failure:
    fault: Fault
    message: str
    hint: Optional[str] = None
    origin: Optional[str] = None  # the lab whose file raised
    trace: list[str] = field(default_factory=list)
    traceback: str = ""
    blame: Optional[str] = None  # the earlier lab at fault (the own-chain check)
    usage: Optional[Usage] = None  # a worker that timed out: what its processes used (machine_busy decides a re-run)


@message("start")
class Start:
    device: str
    pid: int


@message("imported")
class Imported:
    ok: bool
    failure: Optional[Failure] = None


@message("check")
class CheckDone:
    name: str
    outcome: str  # passed, failed or skipped
    seconds: float = 0.0
    message: str = ""
    failure: Optional[Failure] = None
    figures: list[Figure] = field(default_factory=list)
    rerun: Optional[Failure] = None  # the first try's timeout, when the check ran again on a fresh worker (busy machine)


@message("rule_broken")
class RuleBroken:
    message: str


@message("regraded")
class Regraded:
    """The lab starts over on the submission's own files for the earlier labs in `own` (its code asked their
    stand-ins for more than the contract): the Imported and CheckDone records before this one no longer count."""
    own: list[str]
    note: str


@message("end")
class End:
    output: str = ""


RECORDS = (Start, Imported, CheckDone, RuleBroken, Regraded, End)
