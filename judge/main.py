"""The judge process: run one lab's checks against a worker and report every outcome to the parent.

The parent forks this process from itself (or starts it with `python -m judge.main JUDGE_SPEC`). It never imports
or runs student code: it reads the lab source the parent copied before any worker ran, applies the static rules,
and runs each check (judge/runner.py) with a `Worker` (judge/client.py) that runs the student's code in another
process. Every verdict is computed here, from plain data. Records (protocol/messages.py RECORDS) go to the parent
as lines `NONCE JSON` on a pipe only the judge holds. The process always ends with `os._exit`.
"""
import ctypes
import os
import sys
import traceback

import torch

from judge.client import StudentError, Worker, WorkerGone
from judge.runner import beyond_contract, checks_of, describe, files_for, run_check
from judge.static import BEYOND_CONTRACT, own_names, scan_source, warm
from pack.labs import LABS, earlier
from pack.memory import capped
from protocol import messages as m
from protocol.codec import blob_files, encode, read_frame

warm()  # at import: the parent preloads this module, and every judge forks with the caches filled


class Channel:
    def __init__(self, fd: int, nonce: str):
        self.fd, self.nonce = fd, nonce

    def __call__(self, record):
        data = self.nonce.encode() + b" " + encode(record) + b"\n"
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass  # the parent treats a missing record as a failure


def run(spec: m.JudgeSpec, fd: int, nonce: str, zygote=None, sources: dict = None):
    """Run the checks of one lab, report them, and end the process. Never returns.

    The worker runs the submission's file for this lab with the pack's stand-ins for the labs before it, or, with
    `own_labs`, the submission's own earlier labs. `sources`: the submission's files, {name: bytes}."""
    emit = Channel(fd, nonce)
    worker = None
    try:
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: /proc/<pid>/mem is closed to a same-user worker
        torch.set_num_threads(1)
        lab = spec.lab
        sources = sources or {}
        checks = checks_of(lab)
        if spec.select:
            checks = {n: f for n, f in checks.items() if n in spec.select}
        emit(m.Start(spec.device, os.getpid()))
        with capped(spec.memory):  # the judge's own work on the text, under --memory too (a MemoryError: refused)
            hits = scan_source(sources.get(LABS[lab].file, b""), LABS[lab].file)
            if any(BEYOND_CONTRACT in h for h in hits):  # names of its own earlier labs beyond their contract
                own_defs = {LABS[e].module: own_names(sources[LABS[e].file]) for e in earlier(lab)
                            if LABS[e].file in sources}
                hits = scan_source(sources.get(LABS[lab].file, b""), LABS[lab].file, own_defs)
        if hits:
            emit(m.RuleBroken("forbidden: " + "; ".join(hits[:5])))
        own, budget = [], None  # the earlier labs graded on the submission's own files: none, unless asked for
        while True:
            files, standins = files_for(lab, sources, None if spec.own_labs else own)
            worker = Worker(files, device=spec.device, memory=spec.memory, timeout=spec.check_timeout, zygote=zygote,
                            hide=spec.hide, deadline=spec.deadline, standins=standins, budget=spec.cpu_budget)
            if budget is not None:
                worker.budget = budget  # a lab that starts over keeps what is left of its CPU seconds
            budget = worker.budget
            worker.lab, worker.submission, worker.own_labs = lab, dict(sources), spec.own_labs
            need = None
            try:
                worker.request(m.Import(LABS[lab].module))
            except (StudentError, WorkerGone) as exc:
                need = None if spec.own_labs else beyond_contract(exc, lab, sources, own)
                if need is None:
                    emit(m.Imported(False, describe(exc, lab, spec.display_dir)))
                    emit(m.End(worker.output()))
                    return
            if need is None:
                emit(m.Imported(True))
                for name, check in checks.items():
                    seen = len(worker.errors)
                    done = run_check(name, check, worker, lab, spec.display_dir)
                    if done.outcome == "failed" and not spec.own_labs:
                        need = next(filter(None, (beyond_contract(e, lab, sources, own)
                                                  for e in worker.errors[seen:])), None)
                        if need is not None:
                            break
                    emit(done)
            if need is None:
                break
            earlier_lab, why = need  # the code asked a stand-in for more than the contract: start over on its own lab
            own.append(earlier_lab)
            number = LABS[earlier_lab].number
            emit(m.Regraded(list(own), f"Graded on your own lab {number} ({LABS[earlier_lab].file}) instead of the "
                                       f"pack's: {why}."))
            worker.close()
        try:
            audit = worker.audit()
        except (StudentError, WorkerGone):
            audit = {}
        changed = [str(c)[:80] for c in audit.get("changed", [])] if type(audit.get("changed")) is list else []
        found = [f"the code called torch's built-in `{h}`" for h in worker.hits[:1]]
        if changed:
            found.append("the submission modified torch: " + ", ".join(changed[:8]))
        if found:
            emit(m.RuleBroken("forbidden: " + "; ".join(found)))
        emit(m.End(worker.output()))
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


if __name__ == "__main__":  # fresh-interpreter mode: python -m judge.main SPEC_FD (the nonce in $GRADER_NONCE)
    spec_fd = int(sys.argv[1])  # a file holding the JudgeSpec as one frame
    judge_spec, blob = read_frame(spec_fd, (m.JudgeSpec,))
    os.close(spec_fd)
    run(judge_spec, judge_spec.fd, os.environ.pop("GRADER_NONCE"), sources=blob_files(blob))
