"""Static rules, applied by the judge to the lab source it read before any worker ran.

`scan_source` is: an AST scan that ignores comments, strings and `if __name__ == "__main__":` blocks and reports
  built-in attention reached through torch or through another module (an earlier lab's stand-in imports torch
  too: `lab1_attention.F.scaled_dot_product_attention` is the built-in; `lab1_attention.scaled_dot_product_attention`
  is lab 1's function and allowed), assignments that patch torch or the test framework, imports of the
  grader's own packages, torch's internals (`torch._C`, `DisableTorchFunction`), and torch attributes or modules
  looked up by a name computed at run time. It sees only what is written directly: code built from strings at
  run time (exec, say) is beyond it.
"""
import ast
import re

from pack.labs import FORBIDDEN

FORBIDDEN_NAMES = set(FORBIDDEN)  # the registry's forbidden built-ins (pack/labs.py), as the worker's guard has them
GRADER_PACKAGES = {"checkers", "judge", "parent", "pack", "protocol", "worker", "grading", "solutions", "grader"}
PATCHED_ROOTS = {"_pytest", "pytest"}  # any attribute assignment under these is tampering
LAB_MODULE = re.compile(r"lab\d+_\w+$")  # the labs' own modules (lab1_attention, ...)


class Forbidden(Exception):
    """A rule the lab broke: the lab is marked forbidden and scores 0."""


def _is_main_guard(node) -> bool:
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and any(isinstance(c, ast.Constant) and c.value == "__main__"
                                                   for c in test.comparators))


def _root(node):
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def scan_source(source, filename: str = "<lab>") -> list:
    """Rule breaks in the code, each as 'line N: what'; [] when the source does not parse (the import will say)."""
    try:
        tree = ast.parse(source, filename)
    except (SyntaxError, ValueError):
        return []
    except (RecursionError, MemoryError):  # Python's own bound on nesting: never read past it, so never skipped
        return ["the file nests too deeply for the grader to read it (a very long chain of operators or brackets);"
                " write it as plain statements"]
    tree.body = [node for node in tree.body if not _is_main_guard(node)]
    torch_aliases, lab_aliases, from_labs, hits = set(), set(), set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if LAB_MODULE.match(a.name):
                    lab_aliases.add(a.asname or a.name)
                if top == "torch":
                    torch_aliases.add((a.asname or a.name).split(".")[0])
                elif top in GRADER_PACKAGES:
                    hits.append(f"line {node.lineno}: import {a.name} (the grader's own code)")
        elif isinstance(node, ast.ImportFrom):
            top = (node.module or "").split(".")[0]
            if top == "torch":
                for a in node.names:
                    if a.name in FORBIDDEN_NAMES:
                        hits.append(f"line {node.lineno}: from {node.module} import {a.name}")
                    torch_aliases.add(a.asname or a.name)
            elif top in GRADER_PACKAGES:
                hits.append(f"line {node.lineno}: from {node.module} import ... (the grader's own code)")
            elif LAB_MODULE.match(node.module or ""):
                from_labs |= {a.asname or a.name for a in node.names}
    for node in ast.walk(tree):
        # a forbidden name as an attribute of anything but a lab module itself: torch, or torch reached through
        # an earlier lab's module (lab1_attention.F.scaled_dot_product_attention)
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_NAMES and (
                _root(node) in torch_aliases or not (isinstance(node.value, ast.Name) and node.value.id in lab_aliases)):
            hits.append(f"line {node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Attribute) and node.attr == "_C" and _root(node) in torch_aliases or \
                isinstance(node, (ast.Name, ast.Attribute)) and "DisableTorchFunction" in getattr(node, "attr", getattr(node, "id", "")):
            hits.append(f"line {node.lineno}: {ast.unparse(node)} (torch's internals)")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "__import__") \
                and node.args and not all(isinstance(a, ast.Constant) for a in node.args[1 if node.func.id == "getattr" else 0:2]) \
                and (node.func.id == "__import__" or _root(node.args[0]) in torch_aliases | lab_aliases | from_labs):
            hits.append(f"line {node.lineno}: {ast.unparse(node)} (a name computed at run time)")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr") \
                and node.args and _root(node.args[0]) in torch_aliases | PATCHED_ROOTS:
            targets = [node.args[0]]
        for target in targets:
            root = _root(target)
            if isinstance(target, (ast.Attribute, ast.Name)) and root in PATCHED_ROOTS | torch_aliases and \
                    (root in PATCHED_ROOTS or _patches_torch(target)):
                hits.append(f"line {node.lineno}: {ast.unparse(target)} = ... (patches {root})")
    return sorted(set(hits), key=lambda h: int(h.split(":")[0].removeprefix("line ")))


def _patches_torch(target) -> bool:
    """torch.X = ..., torch.nn.functional.X = ..., torch.Tensor.X = ...: not torch.backends.* settings."""
    parts = []
    node = target
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return bool(parts) and "backends" not in parts
