"""Starting the grader's processes, for the parent (judges) and the judge (workers in fresh-interpreter mode); and
keeping a process's output, bounded. Standard library only.
"""
import os
import subprocess
import sys
from pathlib import Path

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


def fork_child(run, out_fd: int, close=(), setup=None) -> int:
    """Fork; the child closes `close`, reads nothing (stdin is /dev/null), writes to `out_fd`, runs `setup()` then
    `run()`, and never returns into the caller's code. Returns the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            for fd in close:
                os.close(fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
            os.close(out_fd)
            if setup:
                setup()
            run()
        finally:
            os._exit(70)
    return pid


def fresh_interpreter(module: str, argv: list, out_fd: int, pass_fds=(), env=None, cwd=None, setup=None,
                      new_session: bool = False) -> subprocess.Popen:
    """`python -I -B -m module argv...` with the pack's root importable and no PYTHON* variables inherited."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    clean.update(env or {})
    code = f"import sys, runpy; sys.path.insert(0, {str(ROOT)!r}); runpy.run_module({module!r}, run_name='__main__')"
    return subprocess.Popen([sys.executable, "-I", "-B", "-c", code, *map(str, argv)], stdin=subprocess.DEVNULL,
                            stdout=out_fd, stderr=out_fd, pass_fds=tuple(pass_fds), env=clean, cwd=cwd or str(ROOT),
                            preexec_fn=setup, start_new_session=new_session)
