"""The static rule (judge/static.py): names resolved to their origin. Legal styles pass; each bypass class is
refused with its rule named, and graded it earns the targeted lab nothing while the other labs keep their verdict."""
import textwrap

import pytest

from judge.static import ALLOWED, scan_source
from tests.helpers import ROOT, grade_many, submission

# ---- legal styles: none of these may be refused --------------------------------------------------------------
LEGAL = '''
"""A docstring naming F.scaled_dot_product_attention and nn.MultiheadAttention: strings are not code."""
from __future__ import annotations

import functools
import itertools
import math
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import nn as tnn
from torch.nn import init
from torch.utils.data import DataLoader, TensorDataset

from lab1_attention import causal_mask, scaled_dot_product_attention
import lab1_attention
import lab1_attention as L1


@dataclass
class Config:
    d_model: int = 16
    n_heads: int = 4
    dropout: float = 0.0
    names: List[str] = field(default_factory=list)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    d_k = q.size(-1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
        scores = torch.where(mask, scores, torch.full_like(scores, float("-inf")))
    weights = F.softmax(scores, dim=-1)
    assert weights.shape[-1] == k.shape[-2], f"bad shape {weights.shape}"
    return weights @ v, weights


softmax_last = functools.partial(F.softmax, dim=-1)
upper = torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1)
lower = torch.tril(torch.ones(4, 4))


class Head(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = tnn.Linear(cfg.d_model, cfg.d_model)
        self.heads = nn.ModuleList([nn.Linear(cfg.d_model, cfg.d_model) for _ in range(cfg.n_heads)])
        self.register_buffer("mask", torch.tril(torch.ones(8, 8, dtype=torch.bool)))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.act = nn.GELU()
        init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        torch.nn.init.normal_(self.qkv.weight, std=0.02)
        self.attention = scaled_dot_product_attention

    @property
    def d_head(self) -> int:
        return self.cfg.d_model // self.cfg.n_heads

    @staticmethod
    def merge(x):
        return x.transpose(1, 2).contiguous()

    @classmethod
    def make(cls, **kw):
        return cls(Config(**kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)
        outs = [attend(q, k, v, self.mask[:T, :T])[0] for _ in self.heads]
        out, _ = L1.scaled_dot_product_attention(q, k, v, causal_mask(T, device=x.device))
        out2, _ = lab1_attention.scaled_dot_product_attention(q, k, v)
        y = F.linear(out, self.proj.weight, self.proj.bias) + F.gelu(out2) + sum(outs)
        if getattr(self, "dropout", None) is not None and hasattr(self, "proj"):
            setattr(self, "last", y.detach())
        return self.ln(y + self.act(y))

    def __repr__(self):
        return f"{self.__class__.__name__}({self.cfg.d_model})"


@torch.no_grad()
def sample(model, idx, steps: int, temperature: float = 1.0, top_k: Optional[int] = None):
    for _ in range(steps):
        logits = model(idx)[:, -1, :] / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, top_k)
            logits[logits < v[:, [-1]]] = float("-inf")
        nxt = torch.multinomial(F.softmax(logits, dim=-1), 1)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


def train(model, data, steps=10, lr=1e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, 5)
    loader = DataLoader(TensorDataset(data[:-1], data[1:]), batch_size=2)
    losses = defaultdict(list)
    for step, (x, y) in zip(range(steps), itertools.cycle(loader)):
        loss = F.cross_entropy(model(x).view(-1, 3), y.view(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses["train"].append(loss.item())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return OrderedDict(losses), device, torch.__version__


def not_done(x: Callable[[int], int]):
    raise NotImplementedError("TODO")


squares = {i: i * i for i in range(3)}
evens = {i for i in range(6) if i % 2 == 0}
total = sum(i for i in range(3))
torch.manual_seed(0)
torch.backends.cudnn.deterministic = True

if __name__ == "__main__":  # the main guard: never read, so a check of one's own against torch is fine here
    import torch.nn.functional as F2
    print(F2.scaled_dot_product_attention)
'''


def test_the_legal_styles_pass():
    assert scan_source(LEGAL) == []


@pytest.mark.parametrize("folder", ["solutions", "labs"])
def test_every_solution_and_stub_passes(folder):
    for path in sorted((ROOT / folder).glob("lab*.py")):
        assert scan_source(path.read_text(), path.name) == [], path


@pytest.mark.parametrize("line", [
    "from typing import Optional", "import torch.nn as nn", "from torch import nn", "import math, time, random",
    "from torch.optim import AdamW", "from lab5_llama import RMSNorm, rope", "import lab5_llama\nx = lab5_llama.RMSNorm",
    "x = [i for i in range(3)]", "import torch\nx = torch.nn.functional.layer_norm",
])
def test_small_legal_lines_pass(line):
    assert scan_source(line + "\n") == []


# ---- each rule can fail: the bypass class, and the words of the rule its hit must name ----------------------
BYPASSES = {
    "not-main-is-not-a-main-guard": (
        'import torch.nn.functional as F\nif __name__ != "__main__":\n    f = F.scaled_dot_product_attention\n',
        "line 3", "torch's built-in `scaled_dot_product_attention`"),
    "else-of-the-main-guard-is-read": (
        'import torch.nn.functional as F\nif __name__ == "__main__":\n    pass\nelse:\n    f = F.rms_norm\n',
        "line 5", "torch's built-in `rms_norm`"),
    "star-import": ("from torch.nn.functional import *\nf = scaled_dot_product_attention\n", "line 1",
                    "star imports are not allowed"),
    "lab-module-rebound-to-F": ("import torch\nimport lab1_attention\nlab1_attention = torch.nn.functional\n"
                                "f = lab1_attention.scaled_dot_product_attention\n", "line 3",
                                "`lab1_attention` names a module and is bound again"),
    "lab-name-aliasing-F": ("import torch\nlab1_attention = torch.nn.functional\n"
                            "f = lab1_attention.scaled_dot_product_attention\n", "line 3", "torch's built-in"),
    "dict-by-string": ('import torch.nn.functional as F\nf = F.__dict__["rms_norm"]\n', "line 2",
                       "`__dict__` reads a namespace"),
    "through-an-earlier-lab": ("import lab1_attention\nf = lab1_attention.F.scaled_dot_product_attention\n", "line 2",
                               "an earlier lab's module gives only what that lab defines"),
    "getattr-with-a-literal": ('import torch.nn as nn\nm = getattr(nn, "RMSNorm")\n', "line 2",
                               "torch's built-in `RMSNorm`"),
    "getattr-computed": ('import torch.nn.functional as F\nf = getattr(F, "rms_" + "norm")\n', "line 2",
                         "needs the name written as a literal string"),
    "disable-torch-function": ("import torch\nwith torch._C.DisableTorchFunction():\n    pass\n", "line 2",
                               "torch's private parts"),
    "pop-mode": ("from torch.overrides import _pop_mode_temporarily\n", "line 1", "import torch.overrides"),
    "sys-modules": ('import sys\nF = sys.modules["torch.nn.functional"]\n', "line 2", "of sys, a lab may use only"),
    "vars": ('import torch.nn.functional as F\nf = vars(F)["rms_norm"]\n', "line 2", "`vars` runs code or reads"),
    "eval": ('f = eval("__import__(\'torch\').nn.functional.rms_norm")\n', "line 1", "`eval` runs code"),
    "module-as-value": ("import functools\nimport torch.nn.functional as F\nget = functools.partial(getattr, F)\n",
                        "line 3", "is a module used as a value"),
    "ctypes": ("import ctypes\n", "line 1", "import ctypes: a lab may import only"),
    "string-annotation": ('import torch.nn as nn\ndef f(m: "nn.MultiheadAttention"):\n    pass\n', "line 2",
                          "torch's built-in `MultiheadAttention`"),
    "through-torch-modules": ("import torch\nf = torch.nn.modules.activation.F.multi_head_attention_forward\n",
                              "line 2", "torch's built-in"),
    "os-system": ('import os\nos.system("python -c 1")\n', "line 2", "runs other code"),
}


@pytest.mark.parametrize("case", list(BYPASSES))
def test_each_bypass_is_refused_with_its_rule_named(case):
    source, line, words = BYPASSES[case]
    hits = scan_source(source)
    assert any(h.startswith(line + ":") and words in h for h in hits), hits


def test_the_main_guard_is_exactly_that():
    body = "    import torch.nn.functional as F\n    f = F.scaled_dot_product_attention\n"
    assert scan_source('if __name__ == "__main__":\n' + body) == []
    for test in ('__name__ != "__main__"', '"__main__" == __name__', '__name__ == "__main__" or True',
                 '__name__ in ("__main__", "lab2_multihead")'):
        assert scan_source(f"if {test}:\n" + body), test
    nested = "def f():\n    if __name__ == '__main__':\n" + textwrap.indent(body, "    ")
    assert scan_source(nested)  # only at module level


def test_scopes_are_followed():
    # a parameter named like a module is not the module; a forbidden name on what the scan cannot follow is refused
    assert scan_source("import torch\ndef f(torch):\n    return torch.nn.functional.scaled_dot_product_attention\n")
    # a class attribute does not shadow the module inside a method
    assert scan_source("import torch.nn.functional as F\nclass A:\n    F = 3\n    def m(self):\n"
                       "        return F.scaled_dot_product_attention\n")
    # an alias inside a function is resolved
    assert scan_source("import torch\ndef f():\n    G = torch.nn.functional\n    return G.rms_norm\n")
    # a global rebinding of a module's name from inside a function
    assert scan_source("import torch.nn.functional as F\ndef f():\n    global F\n    F = None\n")


def test_allowed_modules_are_listed_once_in_readme():
    readme = (ROOT / "README.md").read_text()
    for name in ("torch.nn.functional", "math", "typing", "dataclasses", "functools", "itertools", "collections"):
        assert name in ALLOWED and f"`{name}`" in readme


# ---- graded: the targeted lab earns nothing; the others keep their verdict -----------------------------------
L2_ANCHOR = "from lab1_attention import causal_mask, scaled_dot_product_attention\n"
L2_CALL = "        out, _ = scaled_dot_product_attention(q, k, v, causal_mask(T, device=x.device))"
L2_BUILTIN = "        with _pop_mode_temporarily():\n            out = SDPA(q, k, v, is_causal=True)"
L5_ANCHOR = "import torch.nn as nn\n"
L5_FORWARD = "        x32 = x.float()\n"
L5_BUILTIN = ("        with _pop_mode_temporarily():\n            return RMS(x, (x.shape[-1],), self.weight, self.eps)\n"
              + L5_FORWARD)
POP = "from torch.overrides import _pop_mode_temporarily\n"

GRADED = {  # id: (lab, prelude placed after the anchor, the words the verdict must hold)
    "not-main": ("lab2", POP + 'if __name__ != "__main__":\n    import torch.nn.functional as _F\n'
                              "    SDPA = _F.scaled_dot_product_attention\n", "scaled_dot_product_attention"),
    "else-of-main": ("lab5", POP + 'if __name__ == "__main__":\n    pass\nelse:\n    RMS = F.rms_norm\n', "rms_norm"),
    "star-import": ("lab5", POP + "from torch.nn.functional import *\nRMS = rms_norm\n", "star imports"),
    "lab-module-rebound": ("lab2", POP + "import lab1_attention\nlab1_attention = torch.nn.functional\n"
                                         "SDPA = lab1_attention.scaled_dot_product_attention\n", "bound again"),
    "dict-by-string": ("lab5", POP + 'RMS = F.__dict__["rms_norm"]\n', "__dict__"),
    "disable-torch-function": ("lab2", "import torch.nn.functional as _F\n_pop_mode_temporarily = "
                                       "torch._C.DisableTorchFunction\nSDPA = getattr(_F, 'scaled_dot_product_attention')\n",
                               "torch._C"),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    specs = {}
    for case, (lab, prelude, _) in GRADED.items():
        folder = tmp_path_factory.mktemp(case)
        if lab == "lab2":
            submission(folder, lab, [(L2_ANCHOR, L2_ANCHOR + prelude), (L2_CALL, L2_BUILTIN)])
            specs[case] = (folder, ["lab1", "lab2", "lab3"])
        else:
            submission(folder, lab, [(L5_ANCHOR, L5_ANCHOR + prelude), (L5_FORWARD, L5_BUILTIN)])
            specs[case] = (folder, ["lab5", "lab6"])
    return grade_many(specs, timeout=20)


@pytest.mark.parametrize("case", list(GRADED))
def test_a_bypass_earns_its_lab_nothing(case, graded):
    lab, _, words = GRADED[case]
    results = graded[case]
    assert results[lab]["status"] == "forbidden" and results[lab]["score"] == 0, results[lab]
    assert words in results[lab]["detail"], results[lab]["detail"]
    for other, result in results.items():
        if other != lab:
            assert result["status"] == "passed", (other, result["detail"])
