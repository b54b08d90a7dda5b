"""The labs, in one place: every lab-specific fact the grader, the judge, the worker, the tools and the tests use.

Standard library only. Lab N builds on the labs before it, in this order. Adding a lab is one `Lab(...)` entry here,
its solution (`solutions/<module>.py`) and its checker (`checkers/check_<name>.py`); README's "Adding a lab".
"""
from dataclasses import dataclass, field

ATTENTION = ("scaled_dot_product_attention", "multi_head_attention_forward", "MultiheadAttention", "Transformer",
             "TransformerEncoder", "TransformerEncoderLayer", "TransformerDecoder", "TransformerDecoderLayer",
             "_native_multi_head_attention", "_transformer_encoder_layer_fwd")


@dataclass(frozen=True)
class Lab:
    name: str  # "lab2": what the command line takes
    number: int
    module: str  # the lab file's module, "lab2_multihead"
    title: str
    group: str = "core"  # "core" (what `grader.py all` grades) or "bonus"
    # the notebook's "try it" cell: code run on the names the lab's own cells define ("" for none)
    try_cell: str = ""
    # torch built-ins (functions or nn modules, by name) a lab must not use: forbidden in every lab, statically by
    # name and at run time by the worker's guard; `fragments` also catch a torch function whose name contains one
    forbidden: tuple = ()
    fragments: tuple = ()
    # numeric attributes of a student's nn.Module the worker reports to the judge (its `describe`)
    attrs: tuple = ()
    # hints of this lab's own mistakes, {key: (first hint, a deeper one)}, beside pack/hints.py's shared ones
    hints: dict = field(default_factory=dict)

    @property
    def file(self) -> str:
        return f"{self.module}.py"

    @property
    def notebook(self) -> str:
        return f"{self.module}.ipynb"


REGISTRY = (
    Lab("lab1", 1, "lab1_attention", "Scaled dot-product attention",
        try_cell="try_attention(scaled_dot_product_attention, causal_mask)",
        forbidden=ATTENTION, fragments=("scaled_dot_product", "multi_head_attention", "transformer_encoder",
                                        "flash_attention")),
    Lab("lab2", 2, "lab2_multihead", "Multi-head attention", try_cell="try_module(MultiHeadAttention, (2, 6, 16), 16, 4)",
        attrs=("n_heads", "d_head")),
    Lab("lab3", 3, "lab3_block", "Pre-norm transformer block",
        try_cell="try_module(TransformerBlock, (2, 6, 16), 16, 4)", attrs=("in_features", "out_features", "eps")),
    Lab("lab4", 4, "lab4_gpt", "Tiny GPT", try_cell="try_gpt(TinyGPT, CharTokenizer, train, sample, PATTERN)",
        attrs=("max_seq_len",)),
    Lab("lab5", 5, "lab5_llama", "Llama-style block (bonus)", group="bonus",
        try_cell="from lab4_gpt import PATTERN, CharTokenizer, sample, train\n\ntry_rope(rope)\n"
                 "try_module(GQAttention, (2, 6, 32), 32, 4, 2)\ntry_gpt(LlamaGPT, CharTokenizer, train, sample, PATTERN)",
        forbidden=("rms_norm", "RMSNorm", "_fused_rms_norm"), fragments=("rms_norm",), attrs=("n_kv_heads", "eps")),
    Lab("lab6", 6, "lab6_kvcache", "KV-cache generation (bonus)", group="bonus",
        try_cell="try_cache(LlamaGPT, generate_cached)"),
)

LABS = {lab.name: lab for lab in REGISTRY}  # "lab1" -> Lab, in order
BY_MODULE = {lab.module: lab for lab in REGISTRY}
FILES = {lab.name: lab.file for lab in REGISTRY}  # "lab1" -> "lab1_attention.py"
CORE = tuple(lab.name for lab in REGISTRY if lab.group == "core")  # what `grader.py all` grades
BONUS = tuple(lab.name for lab in REGISTRY if lab.group == "bonus")  # what `grader.py bonus` grades
GROUPS = {"all": CORE, "bonus": BONUS}
FORBIDDEN = tuple(dict.fromkeys(name for lab in REGISTRY for name in lab.forbidden))
FRAGMENTS = tuple(dict.fromkeys(f for lab in REGISTRY for f in lab.fragments))
ATTRS = tuple(dict.fromkeys(a for lab in REGISTRY for a in lab.attrs))


def lab_of_module(name: str):
    """The Lab whose module (or file) this is, or None."""
    return BY_MODULE.get(str(name).rsplit("/", 1)[-1].removesuffix(".py"))


def earlier(name: str) -> list:
    """The names of the labs before `name`, in order (what it builds on)."""
    names = list(LABS)
    return names[:names.index(name)]


def order(name: str) -> int:
    """The lab's place in the registry (labs are ordered by this, never by their names as strings)."""
    return list(LABS).index(name)
