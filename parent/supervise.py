"""Parent side of grading: run each lab's judge in a child process under limits the parent owns.

One thread, one event loop: start up to `jobs` judges, read their channel and output pipes, kill a judge's
whole process group when it runs past its wall time (its workers die with it: the zygote watches each judge),
and reap it. Judges are forked from this process (which imported torch but never ran an op that starts OpenMP
or CUDA) or, with isolation="spawn", started as fresh interpreters. A judge never runs student code: it asks a
worker (forked from the zygote, see worker/zygote.py) and decides every verdict itself. Only nonce-tagged
records on the judge's channel count.
"""
import dataclasses
import os
import resource
import secrets
import selectors
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from pack.spawn import Kept, fork_child, fresh_interpreter
from protocol import messages as m
from protocol.codec import ProtocolError, decode, files_blob, frame_file

ROOT = Path(__file__).resolve().parent.parent
MAX_CHANNEL = 8 * 1024 * 1024


@dataclass
class Task:
    lab: str
    sources: dict  # lab file name -> bytes, read before any worker ran
    display_dir: str  # how the student knows the submission's folder
    device: str = "cpu"
    timeout: float = 60.0
    memory: float = 4.0  # GiB
    select: list = None
    key: object = None  # the caller's label (a submission, say)
    hide: tuple = ()  # folders the worker must not see, besides the grader's own tree and home
    own_labs: bool = False  # run on the submission's own earlier labs, not the pack's stand-ins


@dataclass
class Outcome:
    task: Task
    records: list = field(default_factory=list)  # protocol.messages.RECORDS, decoded
    output: str = ""
    exit_code: int = None
    signal: int = None
    timed_out: bool = False
    seconds: float = 0.0
    error: str = None  # the child could not be started


class _Child:
    def __init__(self, task: Task):
        self.task, self.nonce = task, secrets.token_hex(16)
        self.outcome = Outcome(task)
        self.channel, self.kept = bytearray(), Kept()
        self.open_fds, self.pid, self.popen = set(), None, None
        self.pidfd = None  # readable once the child has exited (Linux): the scheduler wakes then, not at its next poll
        self.start = time.monotonic()


GRACE = 3.0  # seconds past its lab's wall-clock bound a judge gets to report before the parent kills it


def wall_bound(task: Task) -> float:
    """A lab's wall-clock bound: `timeout` is in CPU seconds of its workers, and this outer bound WALL_FACTOR times
    longer only stops a lab on a machine far busier than the grader expects (or a worker that sleeps)."""
    return task.timeout * m.WALL_FACTOR


def _limits(task: Task):
    """Run in the judge first: own process group, no core files."""
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _spec(task: Task) -> m.JudgeSpec:
    return m.JudgeSpec(
        lab=task.lab, display_dir=task.display_dir,
        device=task.device, check_timeout=max(1.0, task.timeout / 3), cpu_budget=task.timeout,
        deadline=time.monotonic() + wall_bound(task), memory=task.memory, own_labs=task.own_labs, select=task.select,
        hide=[str(ROOT), os.path.expanduser("~"), *map(str, task.hide)])


JUDGE = "judge.main"  # the judge process's module (run by name: the parent imports nothing of the judge)


def _start(child: _Child, isolation: str, keep_closed: set, zygote):
    task = child.task
    chan_r, chan_w = os.pipe()
    out_r, out_w = os.pipe()
    spec = _spec(task)
    if isolation == "fork":
        def run():
            import importlib
            importlib.import_module(JUDGE).run(spec, chan_w, child.nonce, zygote, task.sources)
        child.pid = fork_child(run, out_w, keep_closed | {chan_r, out_r}, lambda: _limits(task))
    else:  # the spec goes as one frame in an unlinked file, never on the command line (a lab file can be 1 MB)
        spec = dataclasses.replace(spec, fd=chan_w)
        held = frame_file(spec, files_blob(task.sources))
        try:
            child.popen = fresh_interpreter(JUDGE, [held], out_w, (chan_w, held),
                                            env={"GRADER_NONCE": child.nonce, "PYTHONDONTWRITEBYTECODE": "1",
                                                 "OMP_NUM_THREADS": "1"}, setup=lambda: _limits(task))
        finally:
            os.close(held)
        child.pid = child.popen.pid
    os.close(chan_w)
    os.close(out_w)
    for fd in (chan_r, out_r):
        os.set_blocking(fd, False)
    child.open_fds = {chan_r, out_r}
    child.chan_fd, child.out_fd = chan_r, out_r


def _kill_group(pid: int):
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass


def _read(child: _Child, fd: int, sel) -> bool:
    """Read what is there; False at end of file."""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return True
    except OSError:
        data = b""
    if not data:
        sel.unregister(fd)
        os.close(fd)
        child.open_fds.discard(fd)
        return False
    if fd == child.chan_fd:
        if len(child.channel) < MAX_CHANNEL:
            child.channel += data
    else:
        child.kept.add(data)
    return True


def _finish(child: _Child) -> Outcome:
    out = child.outcome
    out.seconds = time.monotonic() - child.start
    out.output = child.kept.text()
    for line in bytes(child.channel).splitlines():
        nonce, _, record = line.partition(b" ")
        if not secrets.compare_digest(nonce, child.nonce.encode()):
            continue  # not the judge's: only the judge holds the channel and knows the nonce
        try:
            out.records.append(decode(record, m.RECORDS))
        except ProtocolError as exc:  # the judge's own bug: say so where staff look (the lab has no end record)
            out.output += f"\n[grader: a record from the judge was refused: {exc}]"
    return out


def run_tasks(tasks, jobs: int = 1, isolation: str = "fork", on_done=None, poll: float = 0.05, zygote=None) -> list:
    """Run every task in its own child, at most `jobs` at a time; outcomes come back in task order."""
    pending, running, done = list(tasks), [], {}
    sel = selectors.DefaultSelector()
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                child = _Child(pending.pop(0))
                try:
                    _start(child, isolation, {fd for c in running for fd in (*c.open_fds, c.pidfd) if fd is not None},
                           zygote)
                except OSError as exc:
                    child.outcome.error = f"could not start the grading process: {exc}"
                    done[id(child.task)] = child.outcome
                    continue
                for fd in child.open_fds:
                    sel.register(fd, selectors.EVENT_READ, child)
                try:
                    child.pidfd = os.pidfd_open(child.pid)
                    sel.register(child.pidfd, selectors.EVENT_READ, child)
                except (AttributeError, OSError):  # not Linux 5.3+: the poll below notices the exit
                    child.pidfd = None
                running.append(child)
            for key, _ in sel.select(timeout=poll):
                if key.fd != key.data.pidfd:
                    _read(key.data, key.fd, sel)
            now = time.monotonic()
            for child in list(running):
                task, out = child.task, child.outcome
                if out.exit_code is None and out.signal is None:
                    if now - child.start > wall_bound(task) + GRACE:
                        out.timed_out = True
                        _kill_group(child.pid)
                    pid, status = os.waitpid(child.pid, os.WNOHANG)
                    if pid == 0:
                        continue
                    if os.WIFSIGNALED(status):
                        out.signal = os.WTERMSIG(status)
                    else:
                        out.exit_code = os.WEXITSTATUS(status)
                    if child.popen:  # reaped here, so tell Popen (else it warns that the child still runs)
                        child.popen.returncode = -out.signal if out.signal is not None else out.exit_code
                    _kill_group(child.pid)  # anything it left behind in its group goes too
                    child.drain_deadline = now + 2.0
                    if child.pidfd is not None:  # reaped: it would stay readable, and the loop would spin
                        sel.unregister(child.pidfd)
                        os.close(child.pidfd)
                        child.pidfd = None
                if child.open_fds and now < child.drain_deadline:
                    continue  # read what is left in the pipes first
                for fd in [*child.open_fds, *([child.pidfd] if child.pidfd is not None else [])]:
                    sel.unregister(fd)
                    os.close(fd)
                child.open_fds.clear()
                child.pidfd = None
                running.remove(child)
                done[id(task)] = _finish(child)
                if on_done:
                    on_done(done[id(task)])
    finally:
        for child in running:
            _kill_group(child.pid)
            try:
                os.waitpid(child.pid, 0)
            except ChildProcessError:
                pass
            if child.pidfd is not None:
                os.close(child.pidfd)
        sel.close()
    return [done[id(t)] for t in tasks]
