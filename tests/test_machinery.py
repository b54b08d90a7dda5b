"""The grader's own machinery fails no correct code, and a verdict is the same on every run.

Each case is a correct style that the machinery used to fail (the device probe on the meta device, a parameter
reachable under two names, a stand-in asked for more than the contract) beside a buggy one that must still fail."""
import pytest
import torch
import torch.nn as nn

from tests.helpers import LAB_FILES, grade_many, submission
from tests.mutants import L2_MERGE, MUTANTS, VARIANTS

BY_ID = {m.id: m for m in MUTANTS + VARIANTS}

# lab 2 reading values inside forward (isfinite, nonzero, item)
L2_READS_VALUES = [("        B, T, D = x.shape\n",
                    "        B, T, D = x.shape\n        if not torch.isfinite(x).all():\n            raise ValueError('x')\n"
                    "        assert int(torch.nonzero(torch.ones(T, device=x.device)).shape[0]) + x.sum().item() * 0 == T\n")]

# a nanoGPT-style submission: its lab 2 takes `bias`, its lab 3 passes it and defines a LayerNorm, which lab 4 imports
NANO = {
    "lab2": [("def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):",
              "def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):"),
             ("self.qkv = nn.Linear(d_model, 3 * d_model)", "self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)"),
             ("self.proj = nn.Linear(d_model, d_model)", "self.proj = nn.Linear(d_model, d_model, bias=bias)")],
    "lab3": [("class MLP(nn.Module):", "class LayerNorm(nn.LayerNorm):\n    \"\"\"LayerNorm with an optional bias.\"\"\"\n\n"
              "    def __init__(self, d_model: int, bias: bool = True):\n        super().__init__(d_model, bias=bias)\n\n\n"
              "class MLP(nn.Module):"),
             ("self.ln1 = nn.LayerNorm(d_model)", "self.ln1 = LayerNorm(d_model, bias=True)"),
             ("self.ln2 = nn.LayerNorm(d_model)", "self.ln2 = LayerNorm(d_model, bias=True)"),
             ("self.attn = MultiHeadAttention(d_model, n_heads, dropout)",
              "self.attn = MultiHeadAttention(d_model, n_heads, dropout, bias=True)")],
    "lab4": [("from lab3_block import TransformerBlock", "from lab3_block import LayerNorm, TransformerBlock"),
             ("self.ln_f = nn.LayerNorm(d_model)", "self.ln_f = LayerNorm(d_model)")],
}


def nano(folder, extra=None):
    """The nanoGPT-style submission in `folder`; `extra`: {lab: more (old, new) edits}."""
    submission(folder)
    for lab, edits in NANO.items():
        path = folder / LAB_FILES[lab]
        text = path.read_text()
        for old, new in edits + list((extra or {}).get(lab, [])):
            assert old in text, old
            text = text.replace(old, new)
        path.write_text(text)
    return folder


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    mk = tmp_path_factory.mktemp
    specs = {m: (submission(mk(m), BY_ID[m].lab, BY_ID[m].edits), [BY_ID[m].lab]) for m in (
        "lab1-reads-values", "lab1-reads-values-mask-off-device", "lab3-mlp-sequential-alias",
        "lab3-mlp-sequential-first", "lab3-mlp-sequential-no-mlp-residual")}
    specs["lab2-reads-values"] = (submission(mk("l2v"), "lab2", L2_READS_VALUES), ["lab2"])
    specs["nano"] = (nano(mk("nano")), ["lab3", "lab4"])
    # its own lab 2 merges the heads without the transpose: graded on it, lab 3 pays for that (as with --own-labs)
    specs["nano-lab2-bug"] = (nano(mk("nano-bug"), {"lab2": [(L2_MERGE, "out = out.reshape(B, T, D)")]}), ["lab3"])
    # lab 4 imports a name its own lab 3 does not define either: still refused
    specs["nano-missing-name"] = (nano(mk("nano-missing"), {"lab4": [("import LayerNorm,", "import RMSNorm,"),
                                                                    ("= LayerNorm(d_model)", "= RMSNorm(d_model)")]}),
                                  ["lab4"])
    return grade_many(specs)


def test_code_that_reads_values_passes_the_device_probe(graded):
    for key, lab in (("lab1-reads-values", "lab1"), ("lab2-reads-values", "lab2")):
        r = graded[key][lab]
        assert r["status"] == "passed" and r["score"] == r["max"], {n: c["message"] for n, c in r["checks"].items()
                                                                    if not c["passed"]}
        assert r["checks"]["test_device_discipline"]["passed"]
    bad = graded["lab1-reads-values-mask-off-device"]["lab1"]["checks"]["test_device_discipline"]
    assert not bad["passed"] and bad["hint"] == "device" and "meta tensor" not in bad["message"]


def test_an_mlp_that_keeps_a_sequential_of_its_layers(graded):
    for key in ("lab3-mlp-sequential-alias", "lab3-mlp-sequential-first"):
        r = graded[key]["lab3"]
        assert r["status"] == "passed" and r["score"] == r["max"], key
    bad = graded["lab3-mlp-sequential-no-mlp-residual"]["lab3"]["checks"]["test_residual_gradient"]
    assert not bad["passed"] and bad["hint"] == "residual"


def test_a_lab_that_uses_its_own_earlier_lab_beyond_the_contract(graded):
    lab3, lab4 = graded["nano"]["lab3"], graded["nano"]["lab4"]
    assert (lab3["status"], lab3["score"]) == ("passed", lab3["max"]), lab3["detail"]
    assert (lab4["status"], lab4["score"]) == ("passed", lab4["max"]), lab4["detail"]
    assert any("Graded on your own lab 2" in n and "`bias=`" in n for n in lab3["notes"]), lab3["notes"]
    assert any("Graded on your own lab 3" in n and "`LayerNorm`" in n for n in lab4["notes"]), lab4["notes"]
    # graded on its own lab 2, lab 2's bug costs points in lab 3, as with --own-labs
    buggy = graded["nano-lab2-bug"]["lab3"]
    assert buggy["score"] < buggy["max"] and any("Graded on your own lab 2" in n for n in buggy["notes"])
    missing = graded["nano-missing-name"]["lab4"]
    assert missing["status"] == "forbidden" and missing["score"] == 0, missing["detail"]


# ---- the pieces, without grading ----------------------------------------------------------------
def test_meta_probe_values_and_devices():
    from torch.utils.weak import WeakIdKeyDictionary

    from worker.guards import DeviceMixError, MetaShadow, MetaValueError
    shadows = WeakIdKeyDictionary()
    host = torch.tensor([[True, False], [True, True]])
    mask = host.to("meta")
    shadows[mask] = host
    orphan = torch.empty(3, device="meta")  # made outside the probe: no values anywhere
    with MetaShadow(shadows):
        assert bool(mask.all()) is False and bool(mask.any()) is True
        assert torch.nonzero(mask).shape == (3, 2) and mask.sum().item() == 3
        made = torch.ones(2, 2, device=mask.device, dtype=torch.bool)
        assert bool((made & mask).any())
        with pytest.raises(DeviceMixError):
            mask & torch.ones(2, 2, dtype=torch.bool)  # made without the input's device
        with pytest.raises(MetaValueError):
            orphan.sum().item()
        # made from Python data on the input's device (which bypasses the dispatcher): it has values too
        made = torch.tensor([[1, 2, 3]], dtype=torch.long, device=mask.device)
        assert made.device.type == "meta" and made.sum().item() == 6 and made[0].tolist() == [1, 2, 3]
        assert torch.as_tensor([2.0], device="meta").item() == 2.0
        assert torch.asarray([1.0], device="meta", requires_grad=True).requires_grad
        assert torch.tensor([1, 2]).device.type == "cpu"  # without a device: the CPU, where it mixes as before
        with pytest.raises(DeviceMixError):
            made + torch.tensor([[1, 2, 3]])
        # a functional op's outputs come from its shadow's (shape, strides, dtype); views and in-place ops still alias
        t = torch.zeros(2, 3, device=mask.device)
        assert (t @ t.T).shape == (2, 2) and (t.T * 1).stride() == (torch.zeros(2, 3).T * 1).stride() == t.T.stride()
        t[0] += 1
        row = t.view(-1)[:3]
        row.mul_(4)
        assert t.sum().item() == 12 and t.tolist() == [[4.0, 4.0, 4.0], [0.0, 0.0, 0.0]]
    assert torch.tensor is torch._C._VariableFunctions.tensor  # the constructors are torch's own again after the probe


def test_an_undecided_check_passes_and_torch_meta_words_never_reach_the_student():
    from judge.client import StudentError
    from judge.runner import describe, run_check
    from protocol import messages as m

    def check(w):
        raise StudentError(m.ErrorInfo("MetaValueError", "`_local_scalar_dense` needs the values", undecided=True,
                                       frames=[m.Frame("lab1_attention.py", 12, "f", "if mask.all():")]))
    done = run_check("test_device_discipline", check, None, "lab1")
    assert done.outcome == "skipped" and "lab1_attention.py:12" in done.message
    plain = StudentError(m.ErrorInfo("NotImplementedError", "Cannot copy out of meta tensor; no data!"))
    failure = describe(plain, "lab1", ".")
    assert "meta tensor" not in failure.message.lower() and "could not be decided" in failure.message
    forged = StudentError(m.ErrorInfo("MetaValueError", "made up by the code"))  # only the worker's flag counts
    assert run_check("test_x", lambda w: (_ for _ in ()).throw(forged), None, "lab1").outcome == "failed"


def test_a_parameter_under_two_names_loads_once_in_the_modules_order():
    from judge.shared import zeroed
    from worker.serve import load_values

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.proj = nn.Linear(2, 2), nn.Linear(2, 2)
            self.net = nn.Sequential(self.fc, nn.GELU(), self.proj)
    mlp = MLP()
    one, two = torch.ones(2, 2), torch.full((2, 2), 2.0)
    for values in ({"proj.weight": one, "net.2.weight": two}, {"net.2.weight": two, "proj.weight": one}):
        load_values(mlp, values)
        assert torch.equal(mlp.proj.weight, one)  # the first name in the module's own order, whatever the order given
    shared = torch.randn(2, 2)
    assert all(torch.equal(v, torch.zeros(2, 2)) for v in zeroed({"proj.weight": shared, "net.2.weight": shared},
                                                                  "proj.").values())
    with pytest.raises(KeyError):
        load_values(mlp, {"nope": one})


def test_an_oracle_made_once_per_shape_computes_with_each_calls_weights(monkeypatch):
    """The oracles build torch's modules once per shape and load each call's weights: forwards of several sets of
    weights, called in turns, each agree with the solution's own module holding those weights."""
    import sys

    from judge import oracles
    from tests.helpers import ROOT
    monkeypatch.syspath_prepend(str(ROOT / "solutions"))
    labs = ("lab1_attention", "lab2_multihead", "lab3_block", "lab4_gpt")
    for name in labs:
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        import lab3_block
        import lab4_gpt
    finally:  # the solutions stay out of this process's modules (another test may import a lab by its name)
        for name in labs:
            sys.modules.pop(name, None)
    torch.manual_seed(0)
    gpts = [lab4_gpt.TinyGPT(11, d_model=16, n_heads=2, n_layers=2, max_seq_len=12).eval() for _ in range(3)]
    blocks = [lab3_block.TransformerBlock(16, 2).eval() for _ in range(3)]
    with torch.no_grad():
        for models in (gpts, blocks):
            for model in models:  # no two alike (LayerNorms start at ones): every parameter drawn afresh
                for p in model.parameters():
                    p.normal_(0, 0.3)
    idx, x = torch.randint(11, (2, 9)), torch.randn(2, 9, 16)
    forwards = [oracles.gpt_of(dict(m.named_parameters()), 2, 2) for m in gpts]
    for _ in range(2):
        for model, forward in zip(gpts, forwards):
            with torch.no_grad():
                assert torch.allclose(forward(idx).float(), model(idx), atol=1e-5)
        for model in blocks:
            with torch.no_grad():
                want = model(x)
            assert torch.allclose(oracles.block(dict(model.named_parameters()), x, 2).float(), want, atol=1e-5)


# ---- the same verdict on every run ----------------------------------------------------------------
def test_grading_is_the_same_whatever_the_hash_seed_and_jobs(tmp_path):
    mutants = [next(m for m in MUTANTS if m.lab == lab and not m.seen_from) for lab in ("lab2", "lab3")]
    specs = {"solution": (submission(tmp_path / "solution"), ["lab1", "lab2", "lab3", "lab4"]),
             "alias": (submission(tmp_path / "alias", "lab3", BY_ID["lab3-mlp-sequential-alias"].edits), ["lab3"]),
             **{m.id: (submission(tmp_path / m.id, m.lab, m.edits), [m.lab]) for m in mutants}}

    def card(graded):
        return {key: {lab: (r["status"], r["score"], [n for n in r["notes"] if "was re-run once" not in n],
                            {name: (c["passed"], c["hint"]) for name, c in r["checks"].items()})
                      for lab, r in labs.items()} for key, labs in graded.items()}
    first = card(grade_many(specs, jobs=2, env={"PYTHONHASHSEED": "1"}))
    second = card(grade_many(specs, jobs=1, env={"PYTHONHASHSEED": "4242"}))
    assert first == second
    assert first["alias"]["lab3"][:2] == ("passed", 16)
