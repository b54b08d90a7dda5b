"""Verdicts the graded code cannot reach: one submission per attack class that earned full marks when the checks
shared a process with the student's code. Each must earn the targeted lab nothing it did not implement, and the
other labs keep their verdict."""
import json
import os
import sys

import pytest

from tests.helpers import ROOT, grade_many, run_grader, submission

STUB1 = (ROOT / "labs" / "lab1_attention.py").read_text()
L1_SCORES = "scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., Tq, Tk)"
L1_RETURN = "    return out, weights\n"

# every check function the process can find gets a passing body; then the checks' own modules are looked for too
REWRITE_CHECKS = '''
import gc, sys, types
def _pass(*a, **k):
    return None
for _m in list(sys.modules.values()):
    for _n, _f in list(vars(_m).items()) if isinstance(_m, types.ModuleType) else []:
        if _n.startswith("test_") and isinstance(_f, types.FunctionType):
            _f.__code__ = _pass.__code__
for _o in gc.get_objects():
    if isinstance(_o, types.FunctionType) and _o.__name__.startswith("test_"):
        _o.__code__ = _pass.__code__
'''
# a "passed" record for every check of lab 1, written to every open descriptor, with any nonce found on the stack
FORGE_RECORDS = '''
import json, os, sys
_nonce = ""
_f = sys._getframe()
while _f is not None:
    for _v in list(_f.f_locals.values()):
        _nonce = getattr(_v, "nonce", _nonce) or _nonce
    _f = _f.f_back
for _fd in range(3, 64):
    for _name in ("test_causal_mask", "test_output_shape", "test_weight_rows_sum_to_one", "test_upper_triangle_is_zero",
                  "test_matches_oracle", "test_gradients_flow", "test_no_shortcuts", "test_device_discipline"):
        try:
            os.write(_fd, (json.dumps({"nonce": _nonce, "type": "check", "name": _name, "outcome": "passed"}) + "\\n").encode())
        except OSError:
            pass
'''
# turn the worker's tamper snapshot off and put a decoy in place of the checkers, then patch torch unseen
DISABLE_SNAPSHOT = '''
import sys, types
for _m in list(sys.modules.values()):
    _s = getattr(_m, "Snapshot", None)
    if isinstance(_s, type):
        _s.changed = lambda self: []
sys.modules["judge.checks"] = types.ModuleType("judge.checks")
_t = sys.modules["to" + "rch"]
setattr(_t, "all" + "close", lambda *a, **k: True)
setattr(_t, "sub", lambda a, b, **k: a * 0)
'''
# zeros that claim to equal anything: subtraction, comparison and abs all answer zero / True
ZERO_TENSOR = '''
class _Liar(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("sub", "__sub__", "__rsub__", "abs", "isclose", "allclose", "ne", "__ne__", "gt", "__gt__"):
            return torch.zeros(())
        if name in ("eq", "__eq__", "equal"):
            return True
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


class _ZeroGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        return torch.zeros(q.shape[:-1] + v.shape[-1:], dtype=q.dtype)

    @staticmethod
    def backward(ctx, g):
        return (torch.zeros(1).as_subclass(_Liar),) * 3
'''
ZERO_ATTENTION = ('''    out = _ZeroGrad.apply(q, k, v).as_subclass(_Liar)
    weights = torch.zeros(q.shape[:-1] + k.shape[-2:-1]).as_subclass(_Liar)
    return out, weights
''')
# read the checker's expected values (its losses, its greedy text) from any frame on the stack
READ_FRAMES = '''    import sys
    f, found = sys._getframe(), None
    while f is not None and found is None:
        found = f.f_locals.get("loss_before")
        f = f.f_back
    return [float(found or 2.4) * 0.97 ** i for i in range(steps)]
'''
# the checkers' own oracles as the implementation, imported directly or by a computed name
IMPORT_ORACLE = '''
from judge.oracles import attention
def scaled_dot_product_attention(q, k, v, mask=None):
    return attention(q, k, v, mask)
'''
IMPORT_ORACLE_HIDDEN = '''
import importlib
_oracles = importlib.import_module("check" + "ers.oracles")
def scaled_dot_product_attention(q, k, v, mask=None):
    return _oracles.attention(q, k, v, mask)
'''
RUN_SOLUTIONS = f'''
import os, sys
for _d in sys.path + [{str(ROOT)!r}, os.getcwd() + "/..", os.getcwd()]:
    _p = os.path.join(_d, "solutions", "lab1_attention.py")
    if os.path.exists(_p):
        exec(open(_p).read(), globals())
        break
'''
BYPASS_GUARD = '''    import torch.nn.functional as F
    with torch._C.DisableTorchFunction():
        out = getattr(F, "scaled_dot_" + "product_attention")(q, k, v, attn_mask=mask)
    return out, torch.softmax((q @ k.transpose(-2, -1)).masked_fill(~mask, float("-inf")) / math.sqrt(d_k), -1)
'''

# id: (lab, edits or whole source, checks that must not pass)
ATTACKS = {
    "rewrite-check-code": ("lab1", STUB1 + REWRITE_CHECKS, {"test_causal_mask", "test_matches_oracle"}),
    "forge-records-with-nonce": ("lab1", STUB1 + FORGE_RECORDS, {"test_causal_mask", "test_matches_oracle"}),
    "disable-snapshot-and-decoy": ("lab1", [("import torch\n", "import torch\n" + DISABLE_SNAPSHOT),
                                            (L1_SCORES, "scores = q @ k.transpose(-2, -1)")], {"test_matches_oracle"}),
    "zero-tensor-subclass": ("lab1", [("import torch\n", "import torch\n" + ZERO_TENSOR),
                                      ("    d_k = q.size(-1)\n", ZERO_ATTENTION + "    d_k = q.size(-1)\n")],
                             {"test_matches_oracle", "test_gradients_flow", "test_weight_rows_sum_to_one"}),
    "losses-from-the-stack": ("lab4", [("    seq_len = seq_len or model.max_seq_len\n", READ_FRAMES)],
                              {"test_losses_are_honest", "test_greedy_continues_pattern"}),
    "import-the-oracles": ("lab1", STUB1 + IMPORT_ORACLE, {"test_matches_oracle"}),
    "import-the-oracles-by-computed-name": ("lab1", STUB1 + IMPORT_ORACLE_HIDDEN, {"test_matches_oracle"}),
    "run-the-solutions": ("lab1", STUB1 + RUN_SOLUTIONS, {"test_causal_mask", "test_matches_oracle"}),
    "guard-bypass-with-getattr": ("lab1", [("    d_k = q.size(-1)\n", "    d_k = q.size(-1)\n" + BYPASS_GUARD)],
                                  {"test_no_shortcuts"}),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    specs = {}
    for case, (lab, change, _) in ATTACKS.items():
        folder = tmp_path_factory.mktemp(case)
        if isinstance(change, str):
            submission(folder, lab, source=change)
        else:
            submission(folder, lab, change)
        specs[case] = (folder, ["lab1", "lab2", "lab3", "lab4"])
    return grade_many(specs, timeout=20)


@pytest.mark.parametrize("case", list(ATTACKS))
def test_attack_earns_nothing(case, graded):
    lab, _, must_fail = ATTACKS[case]
    result = graded[case][lab]
    awarded = {name for name in must_fail if result["checks"][name]["passed"] and result["score"] > 0}
    assert not awarded, (case, result["status"], result["detail"], awarded)
    assert result["score"] < result["max"], (case, result["status"])
    if isinstance(ATTACKS[case][1], str):  # built on an untouched stub: nothing in it deserves a point
        assert result["score"] == 0, (case, result["status"], result["detail"])
    for earlier in ("lab1", "lab2", "lab3", "lab4")[:int(lab[3]) - 1]:
        assert graded[case][earlier]["status"] == "passed", (earlier, graded[case][earlier]["detail"])


def test_code_the_scan_can_see_is_forbidden(graded):
    for case in ("import-the-oracles", "guard-bypass-with-getattr"):
        assert graded[case]["lab1"]["status"] == "forbidden" and graded[case]["lab1"]["score"] == 0, case


def test_a_symlink_to_the_solutions_is_refused(tmp_path):
    folder = submission(tmp_path / "links")
    for name in ("lab1_attention.py", "lab2_multihead.py"):
        (folder / name).unlink()
        os.symlink(ROOT / "solutions" / name, folder / name)
    (folder / "lab3_block.py").unlink()
    os.mkfifo(folder / "lab3_block.py")
    proc = run_grader("all", "--submission", folder, "--json", tmp_path / "r.json", timeout=120)
    labs = json.loads((tmp_path / "r.json").read_text())["extra_data"]["labs"]
    assert labs["lab1"]["status"] == labs["lab2"]["status"] == "error" and labs["lab1"]["score"] == 0
    assert "symbolic link" in labs["lab1"]["detail"] and "not a regular file" in labs["lab3"]["detail"]
    assert labs["lab3"]["status"] == "error" and proc.returncode == 1  # the FIFO was refused, never read


def test_a_hang_in_one_check_leaves_the_others_graded(tmp_path):
    hang = "        if x.size(1) == 6:\n            while True:\n                pass\n"
    folder = submission(tmp_path / "hang", "lab3", [
        ("        # BEGIN SOLUTION: pre-norm", hang + "        # BEGIN SOLUTION: pre-norm")])
    result = grade_many({"hang": (folder, ["lab3"])}, timeout=20)["hang"]["lab3"]
    checks = result["checks"]
    assert result["status"] == "timeout" and checks["test_matches_oracle"]["kind"] == "timeout", result["detail"]
    others = {name for name, c in checks.items() if name != "test_matches_oracle"}
    assert all(checks[name]["passed"] for name in others), {n: checks[n]["message"] for n in others}
    assert result["score"] == result["max"] - 3


def test_the_worker_holds_nothing_of_the_grader(tmp_path):
    """What a submission can see of the grader from inside its worker: no checker module, no grader on sys.path."""
    probe = '''
import os, sys
def causal_mask(T, device=None):
    raise RuntimeError("SEEN " + repr(sorted(m for m in sys.modules if m.split(".")[0] in ("checkers", "judge", "parent", "grader", "solutions", "tests"))) + " " + repr([p for p in sys.path if os.path.exists(os.path.join(p, "checkers"))]) + " " + repr(os.path.exists(os.path.join(%r, "solutions", "lab1_attention.py"))))
''' % str(ROOT)
    folder = submission(tmp_path / "probe", "lab1", source=STUB1.split("\ndef causal_mask")[0] + probe)
    result = grade_many({"probe": (folder, ["lab1"])})["probe"]["lab1"]
    message = result["checks"]["test_causal_mask"]["message"]
    assert "SEEN [] []" in message, message
    if os.geteuid() == 0:  # confinement is available: the grader's tree is hidden from the worker
        assert "SEEN [] [] False" in message, message


# who may import whom: the trust boundary is the folder boundary (README, How grading works)
MAY_IMPORT = {
    "pack": {"pack"},  # the registry, hints and process start-up: standard library only
    "protocol": {"protocol"},  # messages and codec: standard library (values.py: torch and safetensors too)
    "worker": {"worker", "protocol", "pack"},  # runs beside student code: nothing of the judge or the parent
    "judge": {"judge", "checkers", "protocol", "pack"},  # nothing of the worker but the protocol
    "checkers": {"checkers", "judge", "protocol", "pack"},
    "parent": {"parent", "protocol", "pack", "worker"},  # starts the zygote; no judge module
}
STDLIB_ONLY = ("pack/labs.py", "pack/hints.py", "pack/spawn.py", "protocol/codec.py", "protocol/messages.py")


def imports_of(path):
    import ast
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module or ""


def test_each_process_imports_only_what_it_may():
    pack_roots = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} | {"grader"}
    assert set(MAY_IMPORT) <= pack_roots
    for package, allowed in MAY_IMPORT.items():
        for path in (ROOT / package).rglob("*.py"):
            if package == "worker" and path.parent.name == "standins":
                continue  # lab modules: they import each other (lab3_block imports lab2_multihead)
            ours = {n.split(".")[0] for n in imports_of(path)} & pack_roots
            assert ours <= allowed, (str(path.relative_to(ROOT)), sorted(ours - allowed))
    for name in STDLIB_ONLY:
        third = {n.split(".")[0] for n in imports_of(ROOT / name)} - set(sys.stdlib_module_names) - pack_roots
        assert not third, (name, third)
        assert {n.split(".")[0] for n in imports_of(ROOT / name)} & pack_roots <= {"pack", "protocol"}, name


def test_an_import_rule_can_fail(tmp_path):
    """The walk sees a forbidden import: a worker module that imports the judge."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom judge.client import Worker\n")
    assert "judge.client" in set(imports_of(bad))


@pytest.mark.parametrize("head, blob", [
    (b"[" * 100_000, b""),  # nesting deep enough to break a recursive parser
    (b'{"$m": "answer", "ok": true, "value": {"$t": "t0", "dtype": "float32", "shape": [2]}}',
     b"\x08" + b"\x00" * 7 + b"{}garbage"),
    (b'{"$m": "answer", "ok": true, "value": {"$t": "t0", "dtype": "float32", "shape": [2]}}', b""),  # no such tensor
    (b'{"$m": "answer", "ok": "yes"}', b""),  # a field of the wrong type
    (b'{"$m": "answer", "ok": true, "extra": 1}', b""),  # a field the message does not have
    (b'{"$m": "call", "target": {"$m": "target", "kind": "module", "owner": "x", "name": "y"}}', b""),  # not an answer
    (b"\xff\xfe not utf-8", b""),
    (b'{"$m": "answer", "ok": true, "value": ' + b"[1," * 300_000 + b"1" + b"]" * 300_000 + b"}", b""),
    (b'"just a string"', b""),
])
def test_the_judge_survives_any_answer(head, blob):
    from protocol import messages as m
    from protocol.codec import ProtocolError, check_blob, decode
    from protocol.values import Unpacker, load_tensors
    try:
        check_blob(blob)
        answer = decode(head, (m.Answer,))
        Unpacker(load_tensors(blob))(answer.value)
    except ProtocolError:
        return
    raise AssertionError("a malformed answer was accepted")


def test_a_frame_past_its_bounds_is_refused():
    import struct
    from protocol.codec import MAX_FRAME, ProtocolError, read_frame
    r, w = os.pipe()
    os.write(w, struct.pack(">QI", MAX_FRAME + 1, 10))
    with pytest.raises(ProtocolError):
        read_frame(r)
    os.close(r)
    os.close(w)
