"""Build a Gradescope autograder zip for the pack.

    python tools/gradescope.py OUT.zip
    python tools/gradescope.py OUT.zip --labs lab1                # one lab's autograder (a lab a week)
    python tools/gradescope.py OUT.zip --grader-args "--timeout 120 --visibility after_due_date"

Gradescope unpacks the zip into /autograder/source, runs setup.sh once (as root) when it builds the image, and
copies run_autograder to /autograder/run_autograder, which it runs for each submission (the student's files are
in /autograder/submission). run_autograder calls `grader.py LABS --gradescope`, which writes
/autograder/results/results.json, and exits 0 whatever the scores: a non-zero exit is an autograder failure to
Gradescope. The zip holds the grader, the checkers and the pins; no solutions, no stubs, no tests.

Both scripts take their root from GRADESCOPE_ROOT (default /autograder), so a built zip can be tried on any machine:
unzip it into ROOT/source, copy ROOT/source/run_autograder to ROOT/run_autograder, put an upload in ROOT/submission
and run `GRADESCOPE_ROOT=ROOT ROOT/run_autograder` (README, Gradescope). run_autograder uses ROOT/venv (setup.sh's)
when there is one, else the python3 on PATH.
"""
import argparse
import shlex
import stat
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, tools/ is on sys.path but the repository root is not
    sys.path.insert(0, str(ROOT))

from grader import parse_args  # noqa: E402  (standard library only at import time)
from pack.labs import FILES as LAB_FILES, GROUPS  # noqa: E402
from tools.release import PACKAGES, package_files  # noqa: E402

FILES = ("grader.py", "pytest.ini", "requirements.txt")
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# a fixed timestamp makes the zip depend on its contents only
DATE_TIME = (1980, 1, 1, 0, 0, 0)

SETUP_SH = """\
#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image (Ubuntu with python3).
set -euo pipefail
root="${GRADESCOPE_ROOT:-/autograder}"
cd "$root/source"
missing=()
for pkg in python3-pip python3-venv; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
# a virtual environment: recent Ubuntu refuses pip installs into the system python (PEP 668)
python3 -m venv "$root/venv"
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# torch from its CPU index: the default index would pull several GB of CUDA packages that Gradescope cannot use
"$root"/venv/bin/pip install @TORCH@ --index-url @INDEX@
grep -v '^torch==' requirements.txt > /tmp/requirements-extra.txt
"$root"/venv/bin/pip install -r /tmp/requirements-extra.txt
rm /tmp/requirements-extra.txt
"""

RUN_AUTOGRADER = """\
#!/usr/bin/env bash
# Gradescope runs this for each submission. grader.py reads $GRADESCOPE_ROOT/submission and always writes
# $GRADESCOPE_ROOT/results/results.json (the root is /autograder unless GRADESCOPE_ROOT says otherwise: a zip tried
# on another machine); its exit code says whether every check passed, which is not an autograder failure, so this
# script exits 0 and the scores speak through results.json.
root="${GRADESCOPE_ROOT:-/autograder}"
case "$root" in /*) ;; *) root="$PWD/$root" ;; esac
export GRADESCOPE_ROOT="$root"
cd "$GRADESCOPE_ROOT/source" || exit 0
# setup.sh's virtual environment where there is one, else the python3 already on PATH
if [ -d "$GRADESCOPE_ROOT/venv/bin" ]; then
    export PATH="$GRADESCOPE_ROOT/venv/bin:$PATH"
fi
export PYTHONDONTWRITEBYTECODE=1
# student code runs under uids of its own (numeric, no account needed): close what it must not reach
mkdir -p "$GRADESCOPE_ROOT/results" && chmod 0700 "$GRADESCOPE_ROOT/results" "$GRADESCOPE_ROOT/source"
python3 grader.py @LABS@ --gradescope@ARGS@
echo "grader.py exited with status $? (0: every check passed; the scores are in results.json)"
exit 0
"""


def torch_pin(requirements: str) -> str:
    """The `torch==X` line of requirements.txt (setup.sh installs exactly that version, from the CPU index)."""
    pins = [line.strip() for line in requirements.splitlines() if line.strip().startswith("torch==")]
    if len(pins) != 1:
        raise ValueError("requirements.txt must pin torch exactly once (torch==X.Y.Z)")
    return pins[0]


def grader_flags(grader_args: str, labs=("all",)) -> str:
    """The extra grader flags, checked against grader.py's own parser now rather than on Gradescope later."""
    flags = shlex.split(grader_args)
    try:
        parse_args([*labs, "--gradescope", *flags])
    except SystemExit as exc:  # argparse has printed why
        raise ValueError(f"--grader-args {grader_args!r} is not valid for grader.py") from exc
    return "".join(" " + shlex.quote(flag) for flag in flags)


def _fill(template: str, **values) -> str:
    """The script with each @NAME@ replaced (the scripts are full of shell braces, so no str.format)."""
    for name, value in values.items():
        template = template.replace(f"@{name.upper()}@", value)
    return template


def _entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=DATE_TIME)
    info.external_attr = (stat.S_IFREG | mode) << 16  # unix mode bits, kept by Gradescope's unzip
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def build_zip(out: Path, grader_args: str = "", labs=("all",)) -> list:
    """Write the autograder zip to `out`, grading `labs`; returns its entry names."""
    labs = list(labs) or ["all"]
    bad = [lab for lab in labs if lab not in (*LAB_FILES, *GROUPS)]
    if bad:
        raise ValueError(f"--labs: unknown lab {bad[0]!r} ({', '.join(LAB_FILES)}, all or bonus)")
    scripts = {
        "setup.sh": _fill(SETUP_SH, index=TORCH_INDEX,
                          torch=torch_pin((ROOT / "requirements.txt").read_text())),
        "run_autograder": _fill(RUN_AUTOGRADER, labs=" ".join(labs), args=grader_flags(grader_args, labs)),
    }
    files = [Path(name) for name in FILES] + [path for package in PACKAGES for path in package_files(package)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as zf:
        for name, text in scripts.items():
            zf.writestr(_entry(name, 0o755), text)
        for path in files:
            zf.writestr(_entry(path.as_posix(), 0o644), (ROOT / path).read_bytes())
        return zf.namelist()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, metavar="OUT.zip", help="the zip to write")
    parser.add_argument("--grader-args", default="", metavar='"FLAGS"',
                        help='extra grader.py flags for run_autograder, e.g. --grader-args="--timeout 120" '
                             '(with "=": argparse takes a lone "--flag" value for an option of its own)')
    parser.add_argument("--labs", default="all", metavar="LAB[,LAB]",
                        help="the labs this autograder grades, e.g. lab1, lab1,lab2 or bonus (default all: labs 1-4)")
    args = parser.parse_args(argv)
    try:
        names = build_zip(args.out, args.grader_args, args.labs.replace(",", " ").split())
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {args.out}: {len(names)} entries (upload it as the assignment's autograder)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
