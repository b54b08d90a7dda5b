"""What is held back stays back: a lab 5 that goes looking for the pack's lab 4 stand-in (a working lab 4, kept out of
the student release) finds no line of it, and the held-back checks' outcomes stay out of what students see before
the due date."""
import json
from pathlib import Path

from parent.verdict import expected_checks
from tests.helpers import LAB_FILES, ROOT, WITHOUT_SCAN, run_grader, submission

STANDIN = ROOT / "worker" / "standins" / LAB_FILES["lab4"]
HALF = "test_rmsnorm_keeps_half_precision"  # the one check that runs RMSNorm on float16: the probe fires there only
FORWARD = "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        # BEGIN SOLUTION: in float32"

# Everything code beside the stand-in can try, from the student's side: its folder and every sys.path entry (listed,
# every file opened), the module's __file__, loader and spec, inspect.getsource of its members, linecache on its code's
# file name, and every string the process holds. What it finds comes back in an exception message.
PROBE = '''

def _probe():
    import gc, inspect, linecache, os, sys
    import lab4_gpt
    marker = "get_" + "batch("
    mine = open(os.path.abspath(__file__)).read() if os.path.exists(os.path.abspath(__file__)) else ""
    found, seen = [], set()

    def keep(where, text):
        for line in str(text).splitlines():
            line = line.strip()
            if len(line) > 12 and line not in mine and line not in seen:
                seen.add(line)
                found.append(line)

    folder = os.getcwd()
    found.append("folder=" + ",".join(sorted(os.listdir(folder))))
    for root in [folder] + [p for p in sys.path if p]:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            path = os.path.join(root, name)
            if not os.path.isfile(path) or os.path.abspath(path) == os.path.abspath(__file__):
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read(1 << 20).decode("utf-8", "replace")
            except OSError:
                continue
            if marker in data or "lab4" in name:
                keep(path, data)
    space = vars(lab4_gpt)
    where = space.get("__file__")
    found.append("file=" + str(where))
    if where and os.path.exists(where):
        keep(where, open(where).read())
    for holder in (space.get("__loader__"), getattr(space.get("__spec__"), "loader", None)):
        try:
            keep("loader", holder.get_source("lab4_gpt"))
        except Exception as exc:
            found.append("loader:" + type(exc).__name__)
    for name in ("CharTokenizer", "TinyGPT", "get_batch", "train", "sample"):
        try:
            keep(name, inspect.getsource(space[name]))
        except Exception as exc:
            found.append(name + ":" + type(exc).__name__)
    try:
        keep("module", inspect.getsource(lab4_gpt))
    except Exception as exc:
        found.append("module:" + type(exc).__name__)
    code = space["train"].__code__
    keep("linecache", "".join(linecache.getlines(code.co_filename, space)))
    keep("linecache", "".join(linecache.getline(code.co_filename, n, space) for n in range(1, 200)))
    for obj in gc.get_objects():
        try:
            values = list(obj.values()) if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
        except Exception:
            continue
        for value in values:
            if isinstance(value, (str, bytes)) and len(value) > 200:
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                if marker in text:
                    keep("memory", text)
    return "PROBE " + " | ".join(found)
'''


def probing_lab5(folder: Path, plant: bool = False) -> Path:
    """The reference solutions, with a lab 5 whose RMSNorm raises what the probe found on float16 inputs (one
    check's worth); `plant`: lab 4 is a copy of the stand-in (the control: graded with --own-labs, the copy sits in
    the worker's folder, as every stand-in once did)."""
    text = (ROOT / "solutions" / LAB_FILES["lab5"]).read_text()
    assert FORWARD in text
    text = text.replace(FORWARD, FORWARD.replace("        # BEGIN", "        if x.dtype in (torch.float16, "
                                                 "torch.bfloat16):\n            raise RuntimeError(_probe())\n"
                                                 "        # BEGIN")) + PROBE
    submission(folder, "lab5", source=text)
    if plant:
        (folder / LAB_FILES["lab4"]).write_text(STANDIN.read_text())
    return folder


def distinctive_lines() -> list:
    """The stand-in's lines that appear in no file a student has (the stub, the solution, the probe): what a leak
    would show."""
    known = "\n".join((ROOT / d / LAB_FILES[lab]).read_text() for d in ("labs", "solutions") for lab in LAB_FILES) + PROBE
    lines = {line.strip() for line in STANDIN.read_text().splitlines()}
    return sorted(line for line in lines if len(line) >= 20 and line not in known)


def leaked(results: dict) -> list:
    text = json.dumps(results, ensure_ascii=False)
    return [line for line in distinctive_lines() if line in text or json.dumps(line)[1:-1] in text]


def probe_message(results: dict) -> str:
    test = next(t for t in results["tests"] if t["name"] == "lab5 · " + HALF.removeprefix("test_").replace("_", " "))
    assert test["status"] == "failed" and "PROBE" in test["output"], test
    return test["output"]


def test_lab5_reads_nothing_of_the_held_back_stand_in(tmp_path):
    assert len(distinctive_lines()) >= 10  # enough of the file to recognise
    folder = probing_lab5(tmp_path / "sub")
    labs = list(LAB_FILES)
    proc = run_grader(*labs, "--submission", folder, "--json", tmp_path / "r.json", "--verbose", patch=WITHOUT_SCAN)
    results = json.loads((tmp_path / "r.json").read_text())
    found = probe_message(results)
    assert "folder=" + LAB_FILES["lab5"] in found, found  # the worker's folder holds the submission's file alone
    assert "file=None" in found and "TinyGPT:TypeError" in found and "train:OSError" in found, found
    assert not leaked(results), leaked(results)
    assert not [line for line in distinctive_lines() if line in proc.stdout], "the scorecard shows the stand-in"
    # one check failed, the probe's; every other check of every lab keeps its verdict
    failed = [t["name"] for t in results["tests"] if t["status"] != "passed"]
    assert failed == ["lab5 · " + HALF.removeprefix("test_").replace("_", " ")], failed
    lab5 = results["extra_data"]["labs"]["lab5"]
    half = next(c.points for c in expected_checks("lab5") if c.name == HALF)
    assert (lab5["status"], lab5["score"]) == ("failed", lab5["max_score"] - half)
    assert all(r["status"] == "passed" for lab, r in results["extra_data"]["labs"].items() if lab != "lab5")


def test_the_probe_finds_a_copy_planted_where_the_worker_can_see_it(tmp_path):
    """The control: the same probe, with a copy of the stand-in in the worker's folder (the submission's own lab 4,
    graded on the submission's own labs), brings its lines back in the feedback."""
    folder = probing_lab5(tmp_path / "sub", plant=True)
    run_grader("lab5", "--submission", folder, "--own-labs", "--json", tmp_path / "r.json", patch=WITHOUT_SCAN)
    results = json.loads((tmp_path / "r.json").read_text())
    found = probe_message(results)
    assert LAB_FILES["lab4"] in found.split(" | ")[0], found
    assert len(leaked(results)) >= 3, found


def test_the_static_rules_refuse_the_probe_first(tmp_path):
    """With the scan on (as in real grading), the probe never runs: the test above switches it off to show the
    worker's view holds on its own."""
    from judge.static import scan_source
    folder = probing_lab5(tmp_path / "sub")
    hits = scan_source((folder / LAB_FILES["lab5"]).read_bytes(), LAB_FILES["lab5"])
    assert hits and any("inspect" in h or "linecache" in h or "import" in h for h in hits), hits
