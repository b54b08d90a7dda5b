"""The copy rule (judge/copied.py): a lab that reproduces a stand-in's or an oracle's code is refused as copied from
the pack, renamed and reformatted or not; no correct lab written on its own comes near the threshold."""
import ast
import builtins

import pytest

import tests.test_static as static_tests
from judge import copied
from judge.static import scan_source
from tests.helpers import LAB_FILES, ROOT, grade_many, submission
from tests.mutants import MUTANTS, VARIANTS
from tests.test_answer_key import HAND_WRITTEN_ATTENTION

MARGIN = 0.4  # the closest any correct lab comes to a fingerprinted pack unit stays this far below the threshold
STANDINS = ROOT / "worker" / "standins"


def segment(source, name):
    """The source of the top-level definition `name`."""
    node = next(n for n in ast.parse(source).body if getattr(n, "name", None) == name)
    start = node.decorator_list[0].lineno if getattr(node, "decorator_list", None) else node.lineno
    return "\n".join(source.splitlines()[start - 1:node.end_lineno])


def paste(lab, names, standin):
    """The solution of `lab` with the definitions `names` replaced by the stand-in's."""
    text = (ROOT / "solutions" / LAB_FILES[lab]).read_text()
    theirs = (STANDINS / standin).read_text()
    for name in names:
        text = text.replace(segment(text, name), segment(theirs, name))
    for line in ("import functools\n", "import torch.nn.functional as F\n"):  # the stand-in's imports, as a paste adds
        if line in theirs and line not in text:
            text = text.replace("import torch\n", line + "import torch\n", 1)
    return text


def renamed(source, keep_contract=False):
    """Every identifier the file binds renamed (imports' aliases too), docstrings dropped, reformatted by
    ast.unparse; keep_contract keeps the top-level names and the attributes other labs and the checks use."""
    tree = ast.parse(source)
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = f"m_{a.asname}"
                    a.asname = aliases[a.asname]
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.arg):
            own.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
    kept = {"self", "__init__", "forward"}
    if keep_contract:
        kept |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        kept |= {n.id for s in tree.body if isinstance(s, ast.Assign) for n in s.targets if isinstance(n, ast.Name)}
        kept |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
        kept |= {n.name for c in tree.body if isinstance(c, ast.ClassDef) for n in c.body
                 if isinstance(n, ast.FunctionDef)}
        kept |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) for a in n.args.args + n.args.kwonlyargs
                 if a.arg not in ("x", "idx", "data")}  # keyword names callers use
    new = {name: f"n{i}_{name[::-1].strip('_')}" for i, name in enumerate(sorted(own - kept - set(dir(builtins))))}
    new.update(aliases)

    class Rename(ast.NodeTransformer):
        def visit_Name(self, node):
            node.id = new.get(node.id, node.id)
            return node

        def visit_arg(self, node):
            node.arg, node.annotation = new.get(node.arg, node.arg), None
            return node

        def visit_Attribute(self, node):
            self.generic_visit(node)
            node.attr = new.get(node.attr, node.attr)
            return node

        def visit_alias(self, node):
            node.asname = new.get(node.asname, node.asname) if node.asname else None
            return node

        def visit_keyword(self, node):
            self.generic_visit(node)
            node.arg = new.get(node.arg, node.arg) if node.arg in own else node.arg
            return node

        def visit_FunctionDef(self, node):
            self.generic_visit(node)
            node.name, node.returns = new.get(node.name, node.name), None
            if ast.get_docstring(node) is not None:
                node.body = node.body[1:] or [ast.Pass()]
            return node

        def visit_ClassDef(self, node):
            self.generic_visit(node)
            node.name = new.get(node.name, node.name)
            return node

    tree = ast.fix_missing_locations(Rename().visit(tree))
    tree.body = list(reversed([n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))])) if not \
        keep_contract else tree.body  # the order of the definitions does not count (where it may change)
    imports = [n for n in ast.parse(source).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    head = "\n".join(ast.unparse(Rename().visit(i)) for i in imports) if not keep_contract else ""
    return (head + "\n\n" + ast.unparse(tree)).replace("    ", "  ")


LAB5_PASTE = ("SwiGLU", "rope", "LlamaBlock", "LlamaGPT")  # RMSNorm and GQAttention written by the student


def pasted():
    return {
        "lab3": paste("lab3", ["MLP"], "lab3_block.py"),
        "lab4": paste("lab4", ["CharTokenizer", "TinyGPT", "get_batch", "train", "sample"], "lab4_gpt.py"),
        "lab5": paste("lab5", LAB5_PASTE, "lab5_llama.py"),
    }


def copy_hits(source, filename="<lab>"):
    return [h for h in scan_source(source, filename) if "copied from the pack" in h]


@pytest.mark.parametrize("lab", ["lab3", "lab4", "lab5"])
@pytest.mark.parametrize("how", ["as shipped", "renamed", "renamed, contract kept"])
def test_a_paste_of_the_pack_is_refused(lab, how):
    source = pasted()[lab]
    source = source if how == "as shipped" else renamed(source, keep_contract=how != "renamed")
    hits = copy_hits(source, LAB_FILES[lab])
    assert hits, source
    assert all("worker/standins/" in h for h in hits), hits


def test_the_oracles_pasted_are_refused():
    oracles = (ROOT / "judge" / "oracles.py").read_text()
    for name in ("rope", "gqa", "llama_block", "mlp"):
        source = "import functools\nimport torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n" + \
            segment(oracles, "_double") + "\n\n" + segment(oracles, name) + "\n"
        for text in (source, renamed(source)):
            assert any("judge/oracles.py" in h for h in copy_hits(text)), (name, text)


def test_the_pasted_labs_are_forbidden_and_the_others_keep_their_verdict(tmp_path):
    specs = {}
    for lab, source in pasted().items():
        for how, text in (("plain", source), ("renamed", renamed(source, keep_contract=True))):
            folder = submission(tmp_path / f"{lab}-{how}", lab, source=text)
            specs[f"{lab}-{how}"] = (folder, [lab, "lab4" if lab == "lab3" else "lab2"])
    results = grade_many(specs)
    for key, labs in results.items():
        lab = key.split("-")[0]
        assert labs[lab]["status"] == "forbidden" and labs[lab]["score"] == 0, (key, labs[lab]["detail"])
        assert "copied from the pack" in labs[lab]["detail"], labs[lab]["detail"]
        other = next(name for name in labs if name != lab)
        assert labs[other]["status"] == "passed" and labs[other]["score"] == labs[other]["max"], (key, other)


# ---- no false positives: correct work written on its own ------------------------------------------------------
def corpus():
    found = {}
    for path in sorted((ROOT / "solutions").glob("lab*.py")) + sorted((ROOT / "labs").glob("lab*.py")):
        found[f"{path.parent.name}/{path.name}"] = path.read_text()
    for m in VARIANTS + MUTANTS:  # the correct variants, and the mistakes (each a solution with one edit)
        text = (ROOT / "solutions" / LAB_FILES[m.lab]).read_text()
        for old, new in m.edits:
            text = text.replace(old, new)
        found[m.id] = text
    found["legal styles"] = static_tests.LEGAL
    found["answer key"] = (ROOT / "tests" / "answer_key.py").read_text()
    found["hand-written attention"] = HAND_WRITTEN_ATTENTION
    return found


def closest():
    """(coverage, pack unit, corpus unit) of the nearest pair over the corpus and every fingerprinted pack unit."""
    best = (0.0, None, None)
    for key, text in corpus().items():
        for label, _, prints in copied.units(text, key):
            for f, pack_label, pack_prints in copied.fingerprinted():
                cov = copied.coverage(pack_prints, prints)
                if cov > best[0]:
                    best = (cov, f"{f}:{pack_label}", f"{key}:{label}")
    return best


def test_no_correct_lab_comes_near_the_threshold():
    cov, pack_unit, theirs = closest()
    assert cov <= copied.THRESHOLD - MARGIN, (cov, pack_unit, theirs)


def test_nothing_written_on_its_own_is_refused_as_copied():
    found = {key: copy_hits(text) for key, text in corpus().items()}
    assert not {key: hits for key, hits in found.items() if hits}


def test_what_is_fingerprinted():
    names = {(f.split("/")[-1], label) for f, label, _ in copied.fingerprinted()}
    assert {("lab3_block.py", "MLP.forward"), ("lab5_llama.py", "rope"), ("lab5_llama.py", "SwiGLU.forward"),
            ("lab4_gpt.py", "train"), ("lab4_gpt.py", "get_batch"), ("lab4_gpt.py", "sample"),
            ("oracles.py", "rope"), ("oracles.py", "gqa")} <= names
    assert all(len(p) >= copied.MIN_FINGERPRINTS for _, _, p in copied.fingerprinted())
    assert not any(label.endswith("__init__") for _, label in names)


def test_the_solutions_exclude_only_held_back_code():
    """Where solutions/ is absent (the student release), the same units are compared, less the held-back file's."""
    kept = {(f, label) for f, label, _ in copied.fingerprinted()}
    large = {(f, label) for f, label, p in copied.pack_units() if len(p) >= copied.MIN_FINGERPRINTS}
    assert {f for f, _ in large - kept} <= {"worker/standins/lab4_gpt.py"}


# ---- every definition the pack ships beside student code is accounted for -------------------------------------
# A top-level definition of a stand-in or of the oracles, pasted into a lab, is refused (copied, or a forbidden
# built-in), unless it is one of these: code that is no answer, each with its reason. A new pack definition that
# a paste would get through with fails test_every_pack_definition_pasted_is_refused until it is refused or listed.
NOT_AN_ANSWER = {
    ("lab1_attention.py", "causal_mask"): "torch.tril of a ones matrix: the contract's one line, stated in the stub",
    ("lab4_gpt.py", "CharTokenizer"): "the contract's two dictionaries (and the file is held back from the release)",
    ("lab5_llama.py", "LlamaBlock"): "the contract's two residual lines, which the stub states",
    ("lab5_llama.py", "LlamaGPT"): "the contract's embedding, blocks, norm and head in order; generate is lab 4's",
    ("oracles.py", "causal"): "torch.tril of a ones matrix: lab 1's causal_mask as the stub states it",
    ("oracles.py", "_double"): "a cast of weights to float64",
    ("oracles.py", "layer_norm"): "torch's F.layer_norm: lab 3's nn.LayerNorm, which the lab uses anyway",
    ("oracles.py", "_activation"): "chooses torch's gelu or relu",
    ("oracles.py", "gpt"): "calls gpt_of, refused on its own",
    ("oracles.py", "next_token_loss"): "calls gpt_of and loss_of, each refused on its own",
    ("oracles.py", "greedy"): "calls gpt_of and greedy_of, each refused on its own",
    ("oracles.py", "_grouped"): "one repeat_interleave of wk's rows: the contract's 'query head h reads head h // group'",
}
PASTE_HEAD = ("import functools\nimport math\nimport torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n"
              "Tensor = torch.Tensor\n\n")


def pack_definitions():
    """(file name, definition name, a lab 5 file that pastes it with what it needs from its file)."""
    found = []
    for name in copied.PACK_FILES:
        source = (ROOT / name).read_text()
        helpers = segment(source, "_double") + "\n\n" if name.endswith("oracles.py") else ""
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                own = helpers if node.name != "_double" else ""
                found.append((name.split("/")[-1], node.name, PASTE_HEAD + own + segment(source, node.name) + "\n"))
    return found


def unaccounted(definitions):
    """(definitions a paste gets through with that are not listed, listed ones that a paste is refused for)."""
    let_through, refused_listed = [], []
    for file, name, text in definitions:
        hits = scan_source(text, "lab5_llama.py")
        refused = any("copied from the pack" in h or "which the labs ask you to write yourself" in h for h in hits)
        if not refused and (file, name) not in NOT_AN_ANSWER:
            let_through.append((file, name, hits))
        if refused and (file, name) in NOT_AN_ANSWER:
            refused_listed.append((file, name))
    return let_through, refused_listed


def test_every_pack_definition_pasted_is_refused():
    let_through, refused_listed = unaccounted(pack_definitions())
    assert not let_through, "pasted, these pass the scan: refuse them, or list them with a reason"
    assert not refused_listed, "listed as no answer but refused: take them off the list"
    assert set(NOT_AN_ANSWER) <= {(f, n) for f, n, _ in pack_definitions()}, "a listed definition no longer exists"


OLD_SWIGLU = """def swiglu(wts: dict, x: Tensor, act=F.silu) -> Tensor:
    wts, x = _double(wts), x.to(torch.float64)
    return F.linear(act(F.linear(x, wts["w1.weight"])) * F.linear(x, wts["w3.weight"]), wts["w2.weight"])
"""


def test_an_oracle_that_is_the_formula_is_reported():
    """Control: the oracle's SwiGLU as it was (the formula in F.linear, below the size bar) gets through a paste."""
    text = PASTE_HEAD + segment((ROOT / "judge" / "oracles.py").read_text(), "_double") + "\n\n" + OLD_SWIGLU
    assert unaccounted([("oracles.py", "swiglu", text)])[0]
    listed = next(d for d in pack_definitions() if d[1] == "gpt_of")  # refused: listing it is reported too
    assert unaccounted([(listed[0], "causal", listed[2])])[1]


def test_a_paste_of_a_small_oracle_renamed_is_refused():
    """The oracles below the size bar as written before (SwiGLU's formula in F.linear) are now large enough."""
    for file, name, text in pack_definitions():
        if (file, name) in {("oracles.py", "swiglu"), ("lab4_gpt.py", "sample")}:
            assert copy_hits(renamed(text)), (name, renamed(text))
