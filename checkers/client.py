"""The judge's side of the protocol: start a worker, ask it things, and turn its answers into plain values.

A check talks to a `Worker` (typed helpers: `call`, `new`, `get`) and to the `Handle`s it returns for the
student's objects. Everything that comes back is decoded by worker/wire.py: built-in values and plain tensors.
A request that runs past its time, or a worker that dies, raises `WorkerGone` with the status to record; the
next request starts a fresh worker. An exception in the student's code raises `StudentError` (data only).
"""
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from worker.wire import Packer, ProtocolError, Unpacker, read_frame, write_frame

ROOT = Path(__file__).resolve().parent.parent


class Kept:
    """A process's output, bounded: the first and the last 8 KB, and how much was skipped between them."""
    HEAD = TAIL = 8 * 1024

    def __init__(self):
        self.head, self.tail, self.size = bytearray(), bytearray(), 0

    def add(self, data: bytes):
        self.size += len(data)
        room = self.HEAD - len(self.head)
        self.head += data[:room]
        if room < len(data):
            self.tail = (self.tail + data[room:])[-self.TAIL:]

    def text(self) -> str:
        skipped = self.size - len(self.head) - len(self.tail)
        middle = f"\n[... {skipped} bytes of output skipped ...]\n" if skipped > 0 else ""
        return self.head.decode(errors="replace") + middle + self.tail.decode(errors="replace")


class WorkerGone(Exception):
    """The worker did not answer: status is "timeout", "crashed", "exited", "out of memory" or "error"."""

    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class StudentError(Exception):
    """An exception raised by the student's code, as the worker described it."""

    def __init__(self, info: dict):
        info = info if type(info) is dict else {}
        self.type = str(info.get("type", "Exception"))[:100]
        self.message = str(info.get("message", ""))[:2000]
        frames = info.get("frames") if type(info.get("frames")) is list else []
        self.frames = [f for f in frames if type(f) is list and len(f) == 4][-8:]
        self.traceback = str(info.get("traceback", ""))[-4000:]
        self.memory, self.shortcut = info.get("memory") is True, info.get("shortcut") is True
        super().__init__(f"{self.type}: {self.message}")


class ContractMissing(Exception):
    """The lab module (or object) lacks a name the contract asks for; the message is `owner.name`."""


@dataclass
class On:
    """A tensor argument the worker should place on `device` (default: the worker's device)."""
    tensor: torch.Tensor
    device: str = None
    grad: bool = False


def _encode(value, packer: Packer):
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
    """A module the worker holds, and what it reported of it when it was built."""
    worker: "Worker"
    id: str
    info: dict = field(default_factory=dict)

    @property
    def params(self) -> dict:
        """{name: (shape, dtype)} for every parameter name (tied names included)."""
        return {p[0]: (tuple(p[1]), p[2]) for p in self.info.get("params", []) if type(p) is list and len(p) == 4}

    @property
    def ties(self) -> list:
        return [set(map(str, group)) for group in self.info.get("ties", []) if type(group) is list]

    @property
    def modules(self) -> dict:
        """{name: (class name, class module, [kinds])}; '' is the module itself."""
        return {m[0]: (m[1], m[2], m[3]) for m in self.info.get("modules", []) if type(m) is list and len(m) == 4}

    def attr(self, name: str):
        return self.info.get("attrs", {}).get(name)

    @property
    def dtype(self) -> torch.dtype:
        from worker.wire import DTYPES
        floats = [DTYPES.get(d) for _, d in self.params.values() if DTYPES.get(d, torch.int64).is_floating_point]
        return floats[0] if floats else torch.float32

    def __call__(self, *args, **options):
        """forward(*args); options as for Worker.call (backward, watch, no_grad, ...).

        Floating-point inputs go in the module's own dtype (a lab may set torch's default dtype to float64)."""
        dtype = self.dtype
        cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
        args = [On(cast(a.tensor), a.device, a.grad) if isinstance(a, On) else cast(a) for a in args]
        if options.get("backward"):
            options["backward"] = {**options["backward"], "grad_out": cast(options["backward"]["grad_out"])}
        return self.worker.call(("handle", self.id, "forward"), *args, **options)

    def method(self, name: str, *args, **options):
        return self.worker.call(("handle", self.id, name), *args, **options)

    def get(self, name: str):
        """An attribute's value (a Handle when it is an nn.Module)."""
        return self.worker.get(("handle", self.id, name))

    def load(self, tensors: dict):
        self.worker.request({"op": "load", "handle": self.id}, {k: v.detach().clone() for k, v in tensors.items()})

    def state(self) -> dict:
        return self.worker.request({"op": "state", "handle": self.id})

    def to(self, device: str):
        self.worker.request({"op": "to", "handle": self.id, "device": device})


class Worker:
    """One lab's worker: started on first use, restarted after it dies; requests time out after `timeout`."""

    def __init__(self, sources: dict, device: str = "cpu", memory: float = 4.0, timeout: float = 30.0,
                 zygote: socket.socket = None, hide=(), deadline: float = None, trusted=()):
        self.sources, self.device, self.memory, self.timeout = sources, device, memory, timeout
        self.zygote, self.hide, self.deadline = zygote, list(hide), deadline
        self.trusted = list(trusted)  # modules among `sources` that are the pack's stand-ins (imported first)
        self.proc = self.pid = None
        self.kept = Kept()
        self.starts, self.hits = 0, []
        self.folder = None
        self.siblings = []
        # what the judge tells its checks: the lab, the submission's own files, and whether it is graded on them
        self.lab, self.submission, self.own_labs = None, dict(sources), True

    def sibling(self, sources: dict, trusted=()) -> "Worker":
        """Another worker like this one on other files (closed with this one)."""
        other = Worker(sources, self.device, self.memory, self.timeout, self.zygote, self.hide, self.deadline, trusted)
        other.lab, other.submission, other.own_labs = self.lab, self.submission, self.own_labs
        self.siblings.append(other)
        return other

    # ---- lifecycle ----
    def _copy(self) -> str:
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
        spec = {"lab_dir": self.folder, "device": self.device, "memory": self.memory, "hide": self.hide,
                "judge": os.getpid(), "cpu_seconds": int(self.timeout * 4) + 10, "trusted": self.trusted}
        if self.zygote is not None:
            ctl_r, ctl_w = os.pipe()
            socket.send_fds(self.zygote, [json.dumps(spec).encode()], [req_r, resp_w, out_w, ctl_w])
            os.close(ctl_w)
            self.ctl = ctl_r
            line = self._ctl_line(10.0)
            if not line.startswith("pid "):
                raise WorkerGone("error", "the grader could not start a worker process")
            self.pid = int(line.split()[1])
        else:  # a fresh interpreter (isolation "spawn", or plain pytest)
            code = ("import sys; sys.path.insert(0, sys.argv[1]); from worker.serve import serve; "
                    "serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6:])")
            env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", code, str(ROOT), str(req_r), str(resp_w), self.folder, self.device,
                 *self.trusted],
                stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w, pass_fds=(req_r, resp_w), env=env,
                cwd=self.folder, start_new_session=True)
            self.pid, self.ctl = self.proc.pid, None
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
    def _status(self) -> WorkerGone:
        """Why the worker stopped answering, from its wait status."""
        status = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2)
                code = self.proc.returncode
                status = (-code if code < 0 else 0) | ((code if code >= 0 else 0) << 8)
            except subprocess.TimeoutExpired:
                pass
        else:
            line = ""
            for _ in range(2):
                line = self._ctl_line(2.0)
                if line.startswith("exit "):
                    status = int(line.split()[1])
                    break
        self.close()
        if status is None:
            return WorkerGone("crashed", "the worker stopped answering")
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGKILL:
                return WorkerGone("out of memory", "killed by the system (SIGKILL), most likely for using too much memory")
            if sig == signal.SIGXCPU:
                return WorkerGone("timeout", "ran out of CPU time")
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return WorkerGone("crashed", f"the process crashed ({name})")
        return WorkerGone("exited", f"the process exited with code {os.WEXITSTATUS(status)} before answering")

    def _reader(self, deadline: float):
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
        return read

    def request(self, header: dict, tensors: dict = None, timeout: float = None):
        """Send one request; returns the decoded value. Raises StudentError or WorkerGone."""
        if self.pid is None:
            self.start()
        limit = timeout or self.timeout
        if self.deadline is not None:
            limit = min(limit, self.deadline - time.monotonic() - 0.5)
        if limit <= 0:
            raise WorkerGone("timeout", "the lab's time ran out before this check")
        try:
            write_frame(self.req_w, header, tensors)
            answer, got = read_frame(self.resp_r, self._reader(time.monotonic() + limit))
        except TimeoutError:
            self.close()
            raise WorkerGone("timeout", f"no answer within {limit:.0f} s (an endless loop, or far too slow)") from None
        except MemoryError:
            self.close()
            raise WorkerGone("out of memory", f"went past the memory cap of {self.memory:g} GiB") from None
        except (ProtocolError, OSError) as exc:
            gone = self._status()
            if gone.status == "crashed" and "stopped answering" in gone.detail:
                gone.detail = f"the worker sent something unreadable ({exc})"
            raise gone from None
        hits = answer.get("hits")
        if type(hits) is list:
            self.hits += [str(h)[:100] for h in hits if str(h)[:100] not in self.hits]
        if answer.get("ok") is not True:
            error = StudentError(answer.get("error"))
            raise ContractMissing(error.message) if error.type == "Missing" else error
        return Unpacker(got, handle=lambda key: Handle(self, str(key)))(answer.get("value"))

    # ---- typed helpers ----
    def call(self, target, *args, seed=0, store=False, no_grad=False, backward=None, watch=None, capture=False,
             guard=False, device_guard=False, timeout=None, resets=None, **kwargs):
        """Call target(*args, **kwargs) in the worker: target is (module, name) or ("handle", id, method)."""
        packer = Packer()
        if backward is not None:
            grad_out = backward["grad_out"]
            backward = {**backward, "grad_out": packer.tensor(grad_out)["$t"]}
        spec = ["module", *target] if len(target) == 2 else list(target)
        header = {"op": "call", "target": spec, "args": _encode(list(args), packer),
                  "kwargs": _encode(kwargs, packer), "seed": seed, "store": store, "eval": True, "no_grad": no_grad,
                  "backward": backward, "watch": [watch[0].id, watch[1]] if watch else None, "capture": capture, "guard": guard,
                  "device_guard": device_guard, "resets": [resets[0].id, resets[1]] if resets else None}
        value = self.request(header, packer.tensors, timeout)
        if store:
            return self._handle(value)
        if type(value) is not dict or "out" not in value:
            raise WorkerGone("error", "the worker's answer has no output")
        return value if (backward or watch or capture or resets) else value["out"]

    def _handle(self, value) -> Handle:
        if type(value) is not dict or type(value.get("handle")) is not str or type(value.get("describe")) is not dict:
            raise WorkerGone("error", "the worker's answer does not describe a module")
        return Handle(self, value["handle"], value["describe"])

    def new(self, module: str, name: str, *args, **kwargs) -> Handle:
        """Build module.name(*args, **kwargs) and keep it (an nn.Module goes to the worker's device, in eval mode)."""
        return self.call((module, name), *args, store=True, **kwargs)

    def get(self, *target):
        """module.name (target: module, name) or an attribute of a held object (target: ("handle", id, name)):
        a Handle for an nn.Module, else the value."""
        spec = list(target[0]) if len(target) == 1 else ["module", *target]
        value = self.request({"op": "get", "target": spec})
        return self._handle(value) if type(value) is dict and "handle" in value else value

    def audit(self) -> dict:
        value = self.request({"op": "audit"}, timeout=10)
        return value if type(value) is dict else {}


def _tree_rss(pid: int) -> int:
    """Resident bytes of pid and every process under it."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError, IndexError):
            pass
    return total
