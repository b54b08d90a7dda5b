"""The judge's side of the protocol: start a worker, ask it things, and turn its answers into plain values.

A check talks to a `Worker` and to the `Handle`s it returns for the student's objects. The student's arguments and
the grader's own options never mix: `w.call(target, *args, **kwargs)` and `handle(*args, **kwargs)` pass the
student's arguments through untouched and return the output; `w.run(opts, target, *args, **kwargs)` and
`handle.run(opts, *args, **kwargs)` take an `Options` first and return the worker's `Result` (the output and what
the options asked to observe). Requests and answers are protocol/messages.py messages. A request that runs past
its time, or a worker that dies, raises `WorkerGone` with its Fault; the next request starts a fresh worker. An
exception in the student's code raises `StudentError` (data only).
"""
import dataclasses
import os
import select
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass

import torch

from pack.spawn import Kept, fresh_interpreter
from protocol import messages as m
from protocol.codec import ProtocolError, frame_file, read_frame, write_frame
from protocol.messages import SPEC
from protocol.messages import WALL_FACTOR, Backward, Fault, Options, Swap, Usage, wait_fault
from protocol.values import DTYPES, Packer, Unpacker, load_tensors, save_tensors

NO_GRAD = Options(no_grad=True)


class WorkerGone(Exception):
    """The worker did not answer; `fault` says how (timeout, crashed, exited, out of memory, or exception when the
    grader could not start it or read it)."""

    def __init__(self, fault: Fault, detail: str, usage: Usage = None):
        super().__init__(detail)
        self.fault, self.detail, self.usage = fault, detail, usage

    @property
    def status(self) -> str:
        return self.fault.status or "error"


class StudentError(Exception):
    """An exception raised by the student's code, as the worker described it (an ErrorInfo)."""

    def __init__(self, info: m.ErrorInfo):
        self.type, self.message = info.type[:100], info.message[:2000]
        self.frames = list(info.frames)[-8:]  # protocol Frames: file, line, function, text
        self.traceback = info.traceback[-4000:]
        self.memory, self.shortcut = info.memory, info.shortcut
        self.undecided = info.undecided is True  # the worker's meta-device probe had no values for an op
        super().__init__(f"{self.type}: {self.message}")


def meta_message(exc: StudentError) -> bool:
    """The error is the grader's meta device speaking (a value asked of a tensor that has none: the worker's probe
    said so, or torch's words say it), not a mistake of the code's."""
    text = exc.message.lower()
    return exc.undecided or exc.type in ("RuntimeError", "NotImplementedError") and any(
        words in text for words in ("meta tensor", "cannot be called on meta", "register_meta", "meta_nonzero",
                                    "data-dependent", "data dependent"))


class ContractMissing(Exception):
    """The lab module (or object) lacks a name the contract asks for; the message is `owner.name`."""


@dataclass
class On:
    """A tensor argument the worker should place on `device` (default: the worker's device)."""
    tensor: torch.Tensor
    device: str = None
    grad: bool = False


def _encode(value, packer: Packer):
    """A student argument in its tagged form (tensors into the frame's blob, held objects by id)."""
    if isinstance(value, On):
        return {**_encode(value.tensor, packer), "to": value.device, "grad": value.grad}
    if isinstance(value, torch.Tensor):
        return {"$t": packer.tensor(value)["$t"]}
    if isinstance(value, Handle):
        return {"$h": value.id}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, packer) for v in value]}
    if isinstance(value, list):
        return [_encode(v, packer) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v, packer) for k, v in value.items()}
    return value


@dataclass
class Handle:
    """An object the worker holds, and what it reported of it (a ModuleInfo) when it was built."""
    worker: "Worker"
    id: str
    info: m.ModuleInfo

    @property
    def type(self) -> str:
        return self.info.type

    @property
    def module(self) -> str:
        return self.info.module

    @property
    def params(self) -> dict:
        """{name: (shape, dtype)} for every parameter name (tied names included)."""
        return {p.name: (tuple(p.shape), p.dtype) for p in self.info.params}

    @property
    def ties(self) -> list:
        return [set(group) for group in self.info.ties]

    @property
    def modules(self) -> dict:
        """{name: (class name, class module, [kinds])}; '' is the module itself."""
        return {s.name: (s.cls, s.module, list(s.kinds)) for s in self.info.modules}

    def attr(self, name: str):
        return self.info.attrs.get(name)

    @property
    def dtype(self) -> torch.dtype:
        floats = [DTYPES.get(d) for _, d in self.params.values() if DTYPES.get(d, torch.int64).is_floating_point]
        return floats[0] if floats else torch.float32

    def _cast(self, args: tuple, opts: Options) -> tuple:
        """Floating-point inputs go in the module's own dtype (a lab may set torch's default dtype to float64)."""
        dtype = self.dtype
        cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
        args = tuple(On(cast(a.tensor), a.device, a.grad) if isinstance(a, On) else cast(a) for a in args)
        if opts.backward is not None and isinstance(opts.backward.grad_out, torch.Tensor):
            opts = dataclasses.replace(opts, backward=Backward(cast(opts.backward.grad_out), opts.backward.index))
        return args, opts

    def __call__(self, *args, **kwargs):
        """forward(*args, **kwargs) with the default options: the output."""
        return self.run(Options(), *args, **kwargs).out

    def run(self, opts: Options, *args, **kwargs) -> m.Result:
        """forward(*args, **kwargs) under the grader's options: the Result."""
        args, opts = self._cast(args, opts)
        return self.worker.run(opts, self.target("forward"), *args, **kwargs)

    def target(self, name: str) -> m.Target:
        return m.Target("handle", self.id, name)

    def method(self, name: str, *args, **kwargs):
        return self.worker.call(self.target(name), *args, **kwargs)

    def run_method(self, opts: Options, name: str, *args, **kwargs) -> m.Result:
        return self.worker.run(opts, self.target(name), *args, **kwargs)

    def get(self, name: str):
        """An attribute's value (a Handle when it is an nn.Module)."""
        return self.worker.get(self.target(name))

    def load(self, tensors: dict):
        self.worker.request(m.Load(self.id), {k: v.detach().clone() for k, v in tensors.items()})

    def state(self) -> dict:
        return self.worker.request(m.State(self.id)).value

    def to(self, device: str):
        self.worker.request(m.To(self.id, device))


class Worker:
    """One lab's worker: started on first use, restarted after it dies.

    A request may use `timeout` CPU seconds of the worker's processes (all of them: read from the worker's cgroup,
    else from /proc of its process tree), within a wall-clock bound WALL_FACTOR times longer and the lab's
    `deadline`; `budget` (CPU seconds) bounds what the lab's workers use in all (siblings share it)."""

    def __init__(self, sources: dict, device: str = "cpu", memory: float = 4.0, timeout: float = 30.0,
                 zygote: socket.socket = None, hide=(), deadline: float = None, standins=(), budget: float = None):
        self.sources, self.device, self.memory, self.timeout = sources, device, memory, timeout
        self.zygote, self.hide, self.deadline = zygote, list(hide), deadline
        self.budget = [budget]  # CPU seconds left to the lab (None: no budget), one list shared with siblings
        self.cpu_file = None  # the worker's cgroup's CPU counter, when the zygote made one
        self.standins = list(standins)  # the pack's stand-ins (m.StandIn, compiled): sent, never written as files
        self.proc = self.pid = None
        self.kept = Kept()
        self.starts, self.hits = 0, []
        self.errors = []  # the StudentErrors its answers carried, caught by a check or not (the last 50)
        self.folder = None
        self.siblings = []
        # what the judge tells its checks: the lab, the submission's own files, and whether it is graded on them
        self.lab, self.submission, self.own_labs = None, dict(sources), True

    def sibling(self, sources: dict, standins=()) -> "Worker":
        """Another worker like this one on other files (closed with this one)."""
        other = Worker(sources, self.device, self.memory, self.timeout, self.zygote, self.hide, self.deadline, standins)
        other.budget = self.budget
        other.lab, other.submission, other.own_labs = self.lab, self.submission, self.own_labs
        self.siblings.append(other)
        return other

    # ---- lifecycle ----
    def _copy(self) -> str:
        """The worker's private folder, holding the submission's files only (the stand-ins travel in the spec)."""
        folder = tempfile.mkdtemp(prefix="labgrade-")
        for name, data in self.sources.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        return folder

    def start(self):
        self.close()
        self.starts += 1
        self.folder = self._copy()
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()
        self.out_r, out_w = os.pipe()
        spec = m.WorkerSpec(lab_dir=self.folder, device=self.device, memory=self.memory, judge=os.getpid(),
                            cpu_seconds=int(self.timeout * 4) + 10, hide=self.hide, standins=self.standins)
        spec_fd = frame_file(spec)  # a spec of any size: one frame in a file no folder holds
        if self.zygote is not None:
            ctl_r, ctl_w = os.pipe()
            try:
                socket.send_fds(self.zygote, [SPEC], [spec_fd, req_r, resp_w, out_w, ctl_w])
            finally:
                os.close(spec_fd)
            os.close(ctl_w)
            self.ctl = ctl_r
            line = self._ctl_line(10.0)
            if not line.startswith("pid "):
                raise WorkerGone(Fault.EXCEPTION, "the grader could not start a worker process")
            words = line.split(maxsplit=3)
            self.pid = int(words[1])
            self.cpu_file = words[3] if len(words) > 3 and words[3] != "-" else None
        else:  # a fresh interpreter (isolation "spawn", or plain pytest)
            os.set_inheritable(spec_fd, True)
            try:
                self.proc = fresh_interpreter("worker.serve", [req_r, resp_w, spec_fd], out_w, (req_r, resp_w, spec_fd),
                                              cwd=self.folder, new_session=True)
            finally:
                os.close(spec_fd)
            self.pid, self.ctl, self.cpu_file = self.proc.pid, None, None
        for fd in (req_r, resp_w, out_w):
            os.close(fd)
        os.set_blocking(self.out_r, False)

    def _ctl_line(self, wait: float) -> str:
        ready, _, _ = select.select([self.ctl], [], [], wait)
        if not ready:
            return ""
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(self.ctl, 64)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace").strip()

    def close(self):
        for other in self.siblings:
            other.close()
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL) if self.proc else os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc:
            self.proc.wait()
        self._drain()
        for fd in (self.req_w, self.resp_r, self.out_r, self.ctl):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pid = self.proc = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def output(self) -> str:
        self._drain()
        return self.kept.text()

    def _drain(self):
        while self.pid is not None:
            try:
                data = os.read(self.out_r, 65536)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self.kept.add(data)

    # ---- requests ----
    def _gone(self) -> WorkerGone:
        """Why the worker stopped answering, from its wait status."""
        status = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2)
                code = self.proc.returncode
                status = (-code if code < 0 else 0) | ((code if code >= 0 else 0) << 8)
            except Exception:  # subprocess.TimeoutExpired
                pass
        else:
            for _ in range(2):
                line = self._ctl_line(2.0)
                if line.startswith("exit "):
                    status = int(line.split()[1])
                    break
        self.close()
        if status is None:
            return WorkerGone(Fault.CRASHED, "the worker stopped answering")
        return WorkerGone(*wait_fault(status))

    def cpu_seconds(self) -> tuple:
        """(CPU seconds the worker's processes have used, where that was read): the cgroup's counter, which holds
        every process the worker started (those that ended too), else the worker's process tree in /proc."""
        if self.cpu_file:
            got = cgroup_cpu(self.cpu_file)
            if got is not None:
                return got, "cgroup"
        return tree_cpu(self.pid), "processes"

    def _reader(self, deadline: float, cpu_start: float, cpu_limit: float):
        def read(fd, n):
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                ready, _, _ = select.select([fd, self.out_r], [], [], min(left, 0.2))
                if self.out_r in ready:
                    self._drain()
                if self.device == "cuda" and self.memory and _tree_rss(self.pid) > self.memory * (1 << 30):
                    raise MemoryError
                if fd in ready:
                    return os.read(fd, n)
                if self.cpu_seconds()[0] - cpu_start > cpu_limit:
                    raise TimeoutError
        return read

    def limits(self, timeout: float = None) -> tuple:
        """(CPU seconds, wall seconds) the next request may take: `timeout` (else the worker's) in CPU time, at most
        what is left of the lab's CPU budget; WALL_FACTOR times that in wall time, at most what is left of the lab."""
        cpu = timeout or self.timeout
        if self.budget[0] is not None:
            cpu = min(cpu, self.budget[0])
        wall = cpu * WALL_FACTOR
        if self.deadline is not None:
            wall = min(wall, self.deadline - time.monotonic() - 0.5)
        return cpu, wall

    def request(self, request, tensors: dict = None, timeout: float = None):
        """Send one request message; returns the Answer with its values decoded (tensors, Handles).
        Raises StudentError, ContractMissing or WorkerGone."""
        if self.pid is None:
            self.start()
        cpu_limit, wall_limit = self.limits(timeout)
        if cpu_limit <= 0 or wall_limit <= 0:
            raise WorkerGone(Fault.TIMEOUT, "the lab's time ran out before this check")
        cpu_start, begun, waited_start = self.cpu_seconds()[0], time.monotonic(), tree_waited(self.pid)
        try:
            try:
                write_frame(self.req_w, request, save_tensors(tensors))
                answer, blob = read_frame(self.resp_r, (m.Answer,), self._reader(begun + wall_limit, cpu_start, cpu_limit))
                got = load_tensors(blob)
            finally:
                cpu, measured = self.cpu_seconds()
                used = max(0.0, cpu - cpu_start)
                if self.budget[0] is not None:
                    self.budget[0] -= used
        except TimeoutError:
            usage = Usage(cpu=used, wall=time.monotonic() - begun, waited=max(0.0, tree_waited(self.pid) - waited_start),
                          cpu_limit=cpu_limit, wall_limit=wall_limit, measured=measured)
            self.close()
            if usage.cpu >= cpu_limit:
                detail = f"used {cpu_limit:.1f} s of CPU without answering (an endless loop, or far too slow)"
            else:
                detail = (f"no answer within {usage.wall:.0f} s (an endless loop, or far too slow; it used "
                          f"{usage.cpu:.1f} s of CPU and waited {usage.waited:.1f} s for one)")
            raise WorkerGone(Fault.TIMEOUT, detail, usage) from None
        except MemoryError:
            self.close()
            raise WorkerGone(Fault.OOM, f"went past the memory cap of {self.memory:g} GiB") from None
        except (ProtocolError, OSError) as exc:
            gone = self._gone()
            if gone.fault is Fault.CRASHED and "stopped answering" in gone.detail:
                gone.detail = f"the worker sent something unreadable ({exc})"
            raise gone from None
        self.hits += [h[:100] for h in answer.hits if h[:100] not in self.hits]
        if not answer.ok:
            error = StudentError(answer.error or m.ErrorInfo("Exception", "the worker gave no reason"))
            self.errors = [*self.errors[-49:], error]
            raise ContractMissing(error.message) if error.type == "Missing" else error
        unpack = Unpacker(got, handle=lambda key: Handle(self, str(key), m.ModuleInfo("?", "?")))
        try:
            if answer.result is not None:
                r = answer.result
                grads = r.grads and dataclasses.replace(r.grads, inputs=unpack(r.grads.inputs),
                                                        params=unpack(r.grads.params))
                answer = dataclasses.replace(answer, result=dataclasses.replace(
                    r, out=unpack(r.out), grads=grads, watched=unpack(r.watched), captured=unpack(r.captured)))
            return dataclasses.replace(answer, value=unpack(answer.value))
        except ProtocolError as exc:
            self.close()
            raise WorkerGone(Fault.CRASHED, f"the worker sent something unreadable ({exc})") from None

    # ---- typed helpers ----
    @staticmethod
    def _target(target) -> m.Target:
        return target if isinstance(target, m.Target) else m.Target("module", *target)

    def run(self, opts: Options, target, *args, **kwargs) -> m.Result:
        """Call target(*args, **kwargs) in the worker under the grader's options `opts`; target is a Target or
        (module, name). The student's arguments are passed through untouched."""
        packer = Packer()
        if opts.backward is not None and isinstance(opts.backward.grad_out, torch.Tensor):
            opts = dataclasses.replace(opts, backward=Backward(packer.tensor(opts.backward.grad_out), opts.backward.index))
        if opts.swap is not None:  # the states' tensors travel in the frame's blob
            opts = dataclasses.replace(opts, swap=Swap(opts.swap.handle, _encode(list(opts.swap.states), packer)))
        call = m.Call(self._target(target), _encode(list(args), packer), _encode(kwargs, packer),
                      dataclasses.replace(opts, timeout=None))
        answer = self.request(call, packer.tensors, opts.timeout)
        if opts.store:
            if answer.stored is None:
                raise WorkerGone(Fault.EXCEPTION, "the worker's answer does not describe what it stored")
            return m.Result(out=Handle(self, answer.stored.handle, answer.stored.info))
        if answer.result is None:
            raise WorkerGone(Fault.EXCEPTION, "the worker's answer has no output")
        return answer.result

    def call(self, target, *args, **kwargs):
        """target(*args, **kwargs) in the worker with the default options: the output."""
        return self.run(Options(), target, *args, **kwargs).out

    def new(self, module: str, name: str, *args, **kwargs) -> Handle:
        """Build module.name(*args, **kwargs) and keep it (an nn.Module goes to the worker's device, in eval mode)."""
        return self.run(Options(store=True), (module, name), *args, **kwargs).out

    def get(self, *target):
        """module.name (target: module, name) or an attribute of a held object (a Target): a Handle for an
        nn.Module, else the value."""
        answer = self.request(m.Get(self._target(target[0] if len(target) == 1 else target)))
        return Handle(self, answer.stored.handle, answer.stored.info) if answer.stored is not None else answer.value

    def audit(self) -> dict:
        value = self.request(m.Audit(), timeout=10).value
        return value if type(value) is dict else {}


def _tree(pid: int) -> list:
    """pid and every process under it (a process that left the tree, reparented elsewhere, is not found)."""
    found, todo = [], [pid] if pid else []
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return found


def _tree_rss(pid: int) -> int:
    """Resident bytes of pid and every process under it."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
    return total


def cgroup_cpu(path: str):
    """CPU seconds in a cgroup's counter: v1 cpuacct.usage (nanoseconds) or v2 cpu.stat (usage_usec); None when it
    cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
        if path.endswith("cpuacct.usage"):
            return int(text.strip()) / 1e9
        usec = next(line.split()[1] for line in text.splitlines() if line.startswith("usage_usec "))
        return int(usec) / 1e6
    except (OSError, ValueError, StopIteration, IndexError):
        return None


def tree_cpu(pid: int) -> float:
    """CPU seconds (user and system) of pid and every process under it, with the children each has reaped."""
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        except (OSError, ValueError, IndexError):
            pass
    return total / tick


def tree_waited(pid: int) -> float:
    """Seconds the threads of pid and every process under it have spent ready to run, waiting for a CPU (the
    kernel's run delay, /proc/.../schedstat); 0 where the kernel does not keep it."""
    total = 0
    for p in _tree(pid):
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9
