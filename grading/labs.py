"""The labs, in one place: the grader, the checkers, the tools and the tests read this (standard library only).

Lab N builds on the labs before it in this order. Adding a lab starts here.
"""
LABS = {  # lab -> (module name, title)
    "lab1": ("lab1_attention", "Scaled dot-product attention"),
    "lab2": ("lab2_multihead", "Multi-head attention"),
    "lab3": ("lab3_block", "Pre-norm transformer block"),
    "lab4": ("lab4_gpt", "Tiny GPT"),
    "lab5": ("lab5_llama", "Llama-style block (bonus)"),
    "lab6": ("lab6_kvcache", "KV-cache generation (bonus)"),
}
FILES = {lab: f"{module}.py" for lab, (module, _) in LABS.items()}
CORE = ("lab1", "lab2", "lab3", "lab4")  # what `grader.py all` grades
BONUS = ("lab5", "lab6")  # what `grader.py bonus` grades
GROUPS = {"all": CORE, "bonus": BONUS}
