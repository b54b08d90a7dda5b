"""pytest plugin of the checkers: `pytest checkers/ --lab-dir solutions` runs the checks with a worker fixture.

The grader does not use pytest; this is for working on the checkers. Each test module gets one worker (a fresh
interpreter that runs the lab's file of --lab-dir on the pack's stand-ins for the labs before it, as the grader
does), and each check runs through the judge's own runner (judge/runner.py): the same seed, the same verdict.
"""
import os
from pathlib import Path

import pytest
import torch

from judge.client import Worker
from judge.runner import files_for, run_check
from pack.labs import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    group = parser.getgroup("lab pack")
    group.addoption("--lab-dir", default=os.environ.get("LAB_DIR", str(ROOT / "labs")),
                    help="folder holding the lab files to check (default labs/, or $LAB_DIR)")
    group.addoption("--lab-device", default=os.environ.get("LAB_DEVICE", "cpu"),
                    help="device the checks run on: cpu, cuda or auto (default cpu, or $LAB_DEVICE)")


@pytest.fixture(scope="module")
def w(request):
    folder = Path(request.config.getoption("--lab-dir"))
    device = request.config.getoption("--lab-device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    submission = {lab.file: (folder / lab.file).read_bytes() for lab in REGISTRY if (folder / lab.file).is_file()}
    lab = request.module.__name__.rsplit("check_", 1)[-1]
    files, standins = files_for(lab, submission, ())
    worker = Worker(files, device=device, timeout=120, standins=standins)
    worker.lab, worker.submission, worker.own_labs = lab, submission, False
    yield worker
    worker.close()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run the check through the judge's runner: a failure fails the test with the check's message and hint, a
    check that does not apply (the own-chain check on a lab submitted alone, say) is a skip."""
    worker = pyfuncitem.funcargs["w"]
    lab = pyfuncitem.module.__name__.rsplit("check_", 1)[-1]
    done = run_check(pyfuncitem.name, pyfuncitem.obj, worker, lab)
    if done.outcome == "skipped":
        pytest.skip(done.message)
    if done.outcome == "failed":
        hint = f"\nhint: {done.failure.hint}" if done.failure.hint else ""
        pytest.fail(f"[{done.failure.fault.value}] {done.message}{hint}\n{done.failure.traceback}", pytrace=False)
    return True
