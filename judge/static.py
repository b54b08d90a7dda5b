"""Static rules, applied by the judge to the lab source it read before any worker ran.

`scan_source` resolves every name and attribute chain in the file to where it comes from (imports, aliases,
`from x import y as z`, assignments of modules, with Python's scopes: module, function, class, comprehension) and
rules on that origin, not on how it is spelled:

- a lab imports only the allowed modules (ALLOWED below: torch's public parts a lab needs, a few standard
  modules, the labs' own modules); no star imports, no relative imports;
- a name bound to a module is bound once: never rebound, and a module is used only through its attributes
  (not passed, stored or returned, where the scan could no longer follow it);
- no namespace read by a string: `__dict__` and other dunder attributes outside a short list, `vars`, `globals`,
  `locals`, `eval`, `exec`, `compile`, `__import__`, `getattr`/`setattr`/`delattr`/`hasattr` without a literal
  name, frame introspection (`f_globals`, `tb_frame`, ...);
- nothing of torch's private or override machinery (`torch._C`, any `torch._*`, `torch.overrides`, `torch.ops`,
  `torch.library`, `torch.jit`, ...), and none of torch's modules outside the allowed ones;
- none of the registry's forbidden built-ins (pack/labs.py), reached by any resolved path: an alias, an earlier
  lab's module (which gives only what that lab defines), `getattr` with a literal name, a string annotation;
- no assignment that patches a module or one of torch's classes (torch.backends settings excepted).

A lab that reproduces code the pack ships beside it (a stand-in's or an oracle's function) is refused as copied
from the pack (judge/copied.py): its hits join these.

The main guard is exactly `if __name__ == "__main__":` at module level: its body is not read, its `else` is.
Code built from strings at run time is refused at its door (exec, eval, ...), not followed.
"""
import ast
import builtins
import importlib
import inspect
import sys
from functools import lru_cache
from pathlib import Path

from judge.copied import copied
from pack.labs import BY_MODULE, FORBIDDEN, FRAGMENTS

FORBIDDEN_NAMES = set(FORBIDDEN)  # the registry's forbidden built-ins (pack/labs.py), as the worker's guard has them

# the modules a lab may import: the exact names, and the packages whose every public submodule is allowed
TORCH_MODULES = {"torch", "torch.nn", "torch.nn.functional", "torch.nn.init", "torch.nn.utils", "torch.nn.parameter", "torch.nn.modules",
                 "torch.optim", "torch.utils", "torch.utils.data", "torch.testing", "torch.cuda", "torch.backends",
                 "torch.autograd", "torch.amp", "torch.random", "torch.linalg", "torch.fft", "torch.special",
                 "torch.distributions", "torch.types", "torch.mps"}
TORCH_PACKAGES = ("torch.nn.modules.", "torch.nn.utils.", "torch.optim.", "torch.utils.data.", "torch.distributions.",
                  "torch.backends.", "torch.autograd.", "torch.cuda.", "torch.amp.")
STD_MODULES = {"math", "typing", "dataclasses", "functools", "itertools", "collections", "collections.abc",
               "__future__", "abc", "enum", "copy", "random", "time", "json", "warnings", "contextlib", "re",
               "statistics", "numbers", "os", "os.path", "posixpath", "sys", "signal", "atexit", "rich"}
STD_PACKAGES = ("rich.",)
ALLOWED = sorted(TORCH_MODULES | STD_MODULES | set(BY_MODULE))  # what README lists
# within allowed modules: what is not available (process control stays; running other programs does not)
STD_DENIED = {"os": ("system", "popen", "exec", "spawn", "posix_spawn", "startfile", "fwalk"),
              "typing": ("get_type_hints", "ForwardRef")}  # prefixes; get_type_hints evaluates strings
SYS_ALLOWED = {"exit", "stdout", "stderr", "stdin", "argv", "platform", "version", "version_info", "maxsize",
               "float_info", "byteorder", "getrecursionlimit", "setrecursionlimit", "getsizeof"}
PRIVATE_ALLOWED = {"os": {"_exit"}}

DUNDER_ATTRS = {"__init__", "__name__", "__qualname__", "__doc__", "__class__", "__call__", "__len__", "__iter__",
                "__next__", "__getitem__", "__setitem__", "__contains__", "__repr__", "__str__", "__post_init__",
                "__enter__", "__exit__", "__version__", "__eq__", "__hash__", "__bool__"}
DUNDER_NAMES = {"__name__", "__file__", "__doc__", "__debug__", "__class__"}
CODE_BUILTINS = {"eval", "exec", "compile", "__import__", "globals", "locals", "vars", "breakpoint", "help",
                 "__build_class__"}
NAME_BUILTINS = {"getattr", "setattr", "delattr", "hasattr"}  # only called directly, with a literal name
INTROSPECTION = {"f_globals", "f_locals", "f_builtins", "f_back", "f_code", "tb_frame", "tb_next", "gi_frame",
                 "cr_frame", "ag_frame", "gi_code", "co_consts", "func_globals"}
# torch's switches for its own dispatch: refused on any object, since what holds them may not be resolved
MACHINERY = {"_C", "DisableTorchFunction", "DisableTorchFunctionSubclass", "_pop_mode_temporarily", "_pop_mode",
             "_push_mode", "_disabled_torch_function_impl", "_set_torch_function_mode", "overrides"}
PATCH_ROOTS = {"_pytest", "pytest"}  # the test framework: its imports are refused anyway; name the patch too


class Forbidden(Exception):
    """A rule the lab broke: the lab is marked forbidden and scores 0."""


def _allowed_module(name: str) -> bool:
    return (name in TORCH_MODULES or name in STD_MODULES or name in BY_MODULE
            or name.startswith(TORCH_PACKAGES + STD_PACKAGES))


@lru_cache(maxsize=None)
def _forbidden_objects() -> tuple:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    found = []
    for ns in (torch, nn, F, torch._C._nn):
        found += [getattr(ns, n) for n in FORBIDDEN if getattr(ns, n, None) is not None]
    return tuple(found)


def _is_forbidden(obj) -> bool:
    if any(obj is f for f in _forbidden_objects()):
        return True
    name = getattr(obj, "__name__", None) if callable(obj) else None
    return isinstance(name, str) and (name in FORBIDDEN_NAMES or any(f in name for f in FRAGMENTS))


BEYOND_CONTRACT = "an earlier lab's module gives only what that lab defines"


@lru_cache(maxsize=None)
def lab_names(module: str) -> frozenset:
    """What a lab's module defines (functions, classes, constants: not what it imports), from the pack's files: the
    lab's stub (its contract, in every copy of the pack: the student release holds no solution and no held-back
    stand-in), its stand-in and its solution where present."""
    root, names = Path(__file__).resolve().parent.parent, set()
    for path in (root / "labs" / f"{module}.py", root / "worker" / "standins" / f"{module}.py",
                 root / "solutions" / f"{module}.py"):
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError):
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                    names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return frozenset(names)


class Mod:
    """A module a name is bound to: `obj` is the module itself (torch's and the standard ones the judge has
    imported), None for a lab's module or a refused one."""

    def __init__(self, name, obj=None):
        self.name, self.obj = name, obj
        self.kind = ("lab" if name in BY_MODULE else "torch" if name == "torch" or name.startswith("torch.")
                     else "std" if _allowed_module(name) else "refused")


class Obj:
    """An object found in a module's (or a class's) namespace, and the path it was reached by."""

    def __init__(self, obj, path):
        self.obj, self.path = obj, path


def _module(name):
    mod = sys.modules.get(name)
    if mod is None and _allowed_module(name) and name not in BY_MODULE:
        try:
            mod = importlib.import_module(name)
        except Exception:  # not installed here: known by name only
            mod = None
    return Mod(name, mod)


def _is_main_guard(node) -> bool:
    """Exactly `if __name__ == "__main__":`."""
    t = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(t, ast.Compare) and isinstance(t.left, ast.Name)
            and t.left.id == "__name__" and len(t.ops) == 1 and isinstance(t.ops[0], ast.Eq)
            and isinstance(t.comparators[0], ast.Constant) and t.comparators[0].value == "__main__")


def _root(node):
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node if isinstance(node, ast.Name) else None


def _literal_name(call):
    if len(call.args) >= 2 and isinstance(call.args[1], ast.Constant) and isinstance(call.args[1].value, str):
        return call.args[1].value
    return None


class Scope:
    def __init__(self, kind, parent=None):
        self.kind, self.parent, self.bindings, self.lines = kind, parent, {}, {}
        self.globals, self.nonlocals = set(), set()

    def module(self):
        s = self
        while s.parent is not None:
            s = s.parent
        return s

    def target(self, name):
        """The scope a binding of `name` made here lands in (global and nonlocal declarations)."""
        if name in self.globals:
            return self.module()
        if name in self.nonlocals:
            s = self.parent
            while s is not None and (s.kind != "function" or name not in s.bindings) and s.parent is not None:
                s = s.parent
            return s or self
        return self

    def bind(self, name, how, line=0):
        target = self.target(name)
        target.bindings.setdefault(name, []).append(how)
        target.lines.setdefault(name, []).append(line)


def _key(how):
    """Two bindings the same (`import torch` twice, `import torch` and `import torch.nn`) have the same key."""
    return how if how[0] in ("import", "from") else how[:2]


def own_names(source) -> frozenset:
    """The functions and classes a submission's own lab file defines at its top level (not what it imports or
    assigns), when that file breaks no rule itself; empty otherwise. A later lab of the same submission may import
    them from it (it is then graded on that own file: judge/main.py)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return frozenset()
    names = frozenset(node.name for node in tree.body
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
    return names if names and not scan_source(source) else frozenset()


class Scanner:
    def __init__(self, own=None):
        self.scope_of, self.nodes, self.hits, self.special = {}, [], [], set()
        self.own = own or {}  # {earlier lab's module: names the submission's own file of it defines}

    # ---- pass 1: scopes and bindings, and the nodes that are read (the main guard's body is not) -------------
    def visit(self, node, scope):
        self.scope_of[id(node)] = scope
        self.nodes.append(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for d in getattr(node, "decorator_list", ()):
                self.visit(d, scope)
            self.visit_args(node.args, scope)
            if getattr(node, "returns", None) is not None:
                self.visit_annotation(node.returns, scope)
            if not isinstance(node, ast.Lambda):
                scope.bind(node.name, ("def", id(node)), node.lineno)
            inner = Scope("function", scope)
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
                inner.bind(arg.arg, ("arg", id(arg)), node.lineno)
            self.prescan_declarations(node.body if isinstance(node.body, list) else [], inner)
            for child in (node.body if isinstance(node.body, list) else [node.body]):
                self.visit(child, inner)
        elif isinstance(node, ast.ClassDef):
            for child in node.decorator_list + node.bases + [k.value for k in node.keywords]:
                self.visit(child, scope)
            scope.bind(node.name, ("def", id(node)), node.lineno)
            inner = Scope("class", scope)
            for child in node.body:
                self.visit(child, inner)
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            gens = node.generators
            self.visit(gens[0].iter, scope)
            inner = Scope("comprehension", scope)
            for i, g in enumerate(gens):
                self.scope_of[id(g)] = inner
                if i:
                    self.visit(g.iter, inner)
                self.visit(g.target, inner)
                for cond in g.ifs:
                    self.visit(cond, inner)
            for child in ((node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,)):
                self.visit(child, inner)
        elif isinstance(node, ast.Module):
            self.prescan_declarations(node.body, scope)
            for child in node.body:
                if _is_main_guard(child):  # its body runs only when the file is run itself, never when graded
                    self.visit(child.test, scope)
                    for other in child.orelse:
                        self.visit(other, scope)
                else:
                    self.visit(child, scope)
        else:
            self.bindings_of(node, scope)
            if isinstance(node, ast.AnnAssign):
                self.visit_annotation(node.annotation, scope)
                for child in (node.target, node.value):
                    if child is not None:
                        self.visit(child, scope)
                return
            for child in ast.iter_child_nodes(node):
                self.visit(child, scope)

    @staticmethod
    def prescan_declarations(body, scope):
        todo = list(body)
        while todo:  # this scope's statements, not those of functions or classes inside it
            n = todo.pop()
            if isinstance(n, ast.Global):
                scope.globals |= set(n.names)
            elif isinstance(n, ast.Nonlocal):
                scope.nonlocals |= set(n.names)
            elif not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                todo += list(ast.iter_child_nodes(n))

    def visit_args(self, args, scope):
        for d in args.defaults + [d for d in args.kw_defaults if d is not None]:
            self.visit(d, scope)
        for arg in args.posonlyargs + args.args + args.kwonlyargs + [x for x in (args.vararg, args.kwarg) if x]:
            if arg.annotation is not None:
                self.visit_annotation(arg.annotation, scope)

    def visit_annotation(self, node, scope):
        """An annotation, read as code; one written as a string is read as the code it holds (typing evaluates it)."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                inner = ast.parse(node.value.strip(), mode="eval").body
            except (SyntaxError, ValueError):
                return
            for n in ast.walk(inner):
                n.lineno, n.col_offset = node.lineno, node.col_offset
            node = inner
        self.visit(node, scope)

    def bindings_of(self, node, scope):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    scope.bind(a.asname, ("import", a.name), node.lineno)
                else:
                    top = a.name.split(".")[0]
                    scope.bind(top, ("import", top), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.name != "*":
                    scope.bind(a.asname or a.name, ("from", node.level, node.module or "", a.name), node.lineno)
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            for t in node.targets:
                self.special.add(id(t))
                scope.bind(t.id, ("assign", id(node), node.value, scope), node.lineno)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            self.special.add(id(node.target))
            scope.bind(node.target.id, ("assign", id(node), node.value, scope), node.lineno)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            self.special.add(id(node.target))  # an annotation alone binds nothing
        elif isinstance(node, ast.NamedExpr):
            s = scope
            while s.kind == "comprehension":
                s = s.parent
            self.special.add(id(node.target))
            s.bind(node.target.id, ("other", id(node)), node.lineno)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)) and id(node) not in self.special:
            scope.bind(node.id, ("other", id(node)), node.lineno)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            scope.bind(node.name, ("other", id(node)), node.lineno)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            scope.bind(node.name, ("other", id(node)), node.lineno)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            scope.bind(node.rest, ("other", id(node)), node.lineno)

    # ---- resolution -------------------------------------------------------------------------------------------
    def lookup(self, name, scope):
        """(the scope that binds `name`, its bindings) as seen from `scope`; (None, None) for a builtin or unbound."""
        s, first = scope, True
        if name in scope.globals:
            s = scope.module()
        while s is not None:
            if s.kind == "class" and not first:
                s = s.parent
                continue
            if name in s.bindings:
                return s, s.bindings[name]
            first, s = False, s.parent
        return None, None

    def binding_value(self, how, depth):
        if how[0] == "import":
            return _module(how[1])
        if how[0] == "from":
            if how[1]:  # relative
                return None
            return self.attr_value(_module(how[2]), how[3])
        if how[0] == "assign":
            return self.value(how[2], how[3], depth + 1)
        return None

    def name_value(self, name, scope, depth=0):
        s, bindings = self.lookup(name, scope)
        if bindings is None:
            return ("builtin", name) if hasattr(builtins, name) else None
        if len({_key(b) for b in bindings}) != 1 or depth > 20:
            return None  # bound more than one way: not one known thing
        return self.binding_value(bindings[0], depth)

    def value(self, node, scope, depth=0):
        if depth > 20:
            return None
        if isinstance(node, ast.Name):
            return self.name_value(node.id, scope, depth)
        if isinstance(node, ast.Attribute):
            return self.attr_value(self.value(node.value, scope, depth + 1), node.attr)
        if isinstance(node, ast.Call) and self.is_builtin(node.func, scope, "getattr") and _literal_name(node):
            return self.attr_value(self.value(node.args[0], scope, depth + 1), _literal_name(node))
        return None

    def is_builtin(self, node, scope, name):
        return isinstance(node, ast.Name) and node.id == name and self.value(node, scope) == ("builtin", name)

    @staticmethod
    def attr_value(base, attr):
        if isinstance(base, Mod):
            if base.obj is None:
                return None
            missing = object()
            child = vars(base.obj).get(attr, missing)
            if child is missing:
                sub = sys.modules.get(f"{base.obj.__name__}.{attr}")
                return Mod(sub.__name__, sub) if sub is not None else None
            if inspect.ismodule(child):
                return Mod(child.__name__, child)
            return Obj(child, f"{base.name}.{attr}")
        if isinstance(base, Obj) and isinstance(base.obj, type):
            try:
                return Obj(inspect.getattr_static(base.obj, attr), f"{base.path}.{attr}")
            except AttributeError:
                return None
        return None

    # ---- pass 2: the rules ------------------------------------------------------------------------------------
    def hit(self, node, what):
        self.hits.append((getattr(node, "lineno", 0), what))

    def check(self):
        as_base = set()  # nodes where a module may stand: the base of an attribute, an alias's value, getattr's object
        for node in self.nodes:
            if isinstance(node, ast.Attribute):
                as_base.add(id(node.value))
            elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
                as_base.add(id(node.value))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in NAME_BUILTINS \
                    and node.args:
                as_base.add(id(node.args[0]))
        self.check_rebinding()
        for node in self.nodes:
            scope = self.scope_of[id(node)]
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.check_import(node)
            elif isinstance(node, ast.Attribute):
                self.check_attribute(node, self.value(node.value, scope), node.attr, ast.unparse(node))
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                self.check_name(node, scope)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in NAME_BUILTINS \
                    and self.is_builtin(node.func, scope, node.func.id):
                self.check_name_call(node, scope)
            if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load) \
                    and id(node) not in as_base and isinstance(self.value(node, scope), Mod):
                self.hit(node, f"`{ast.unparse(node)}` is a module used as a value; use a module only through its "
                               "attributes (`F.softmax`), so what the code reaches can be read")
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target] \
                if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                self.check_patch(node, target, scope)

    def check_rebinding(self):
        scopes = {id(s): s for s in self.scope_of.values()}
        for scope in scopes.values():
            for name, bindings in scope.bindings.items():
                if len({_key(b) for b in bindings}) > 1 and any(isinstance(self.binding_value(b, 0), Mod)
                                                                for b in bindings):
                    self.hits.append((sorted(scope.lines[name])[1], f"`{name}` names a module and is bound again (a "
                                      "module's name is bound once: give the other value a name of its own)"))

    def check_import(self, node):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                return self.hit(node, "a relative import (`from . import`): import the labs by their names")
            if any(a.name == "*" for a in node.names):
                self.hit(node, f"`from {node.module} import *`: star imports are not allowed (the scan must see "
                               "every name); import the names you use")
            names = [node.module or ""]
        else:
            names = [a.name for a in node.names]
        for name in names:
            if not _allowed_module(name):
                why = " (the grader's own code)" if name.split(".")[0] in {"checkers", "judge", "parent", "pack",
                                                                           "protocol", "worker", "grading",
                                                                           "solutions", "grader"} else ""
                self.hit(node, f"import {name}{why}: a lab may import only torch's public modules, a few standard "
                               "modules (math, typing, dataclasses, functools, ...) and the labs' own modules")
        if isinstance(node, ast.ImportFrom) and _allowed_module(node.module or ""):
            base = _module(node.module)
            for a in node.names:
                if a.name != "*":
                    self.check_attribute(node, base, a.name, f"from {node.module} import {a.name}")

    def check_attribute(self, node, base, attr, text):
        if attr.startswith("__") and attr.endswith("__") and attr not in DUNDER_ATTRS:
            return self.hit(node, f"`{text}`: `{attr}` reads a namespace or torch's machinery, which labs may not; "
                                  "write the name you mean directly")
        if attr in INTROSPECTION:
            return self.hit(node, f"`{text}`: reading frames or code objects is not allowed")
        if isinstance(base, Mod) and base.kind == "lab":
            if attr not in lab_names(base.name) and attr not in self.own.get(base.name, ()) and not attr.startswith("__"):
                self.hit(node, f"`{text}`: {BEYOND_CONTRACT}; import "
                               f"`{attr}` from where it comes from")
            return
        if isinstance(base, Mod) and base.kind in ("torch", "std"):
            child = self.attr_value(base, attr)
            if attr.startswith("_") and not attr.startswith("__") and attr not in PRIVATE_ALLOWED.get(base.name, ()):
                owner = "torch's" if base.kind == "torch" else f"{base.name}'s"
                return self.hit(node, f"`{text}`: {owner} private parts (names starting with `_`) are off limits")
            if base.kind == "torch" and (attr in FORBIDDEN_NAMES or any(f in attr for f in FRAGMENTS)
                                         or isinstance(child, Obj) and _is_forbidden(child.obj)):
                return self.hit(node, f"`{text}` is torch's built-in `{attr}`, which the labs ask you to write "
                                      "yourself")
            if isinstance(child, Obj) and _is_forbidden(child.obj):
                return self.hit(node, f"`{text}` is torch's built-in `{child.obj.__name__}`, which the labs ask you "
                                      "to write yourself")
            if isinstance(child, Mod) and not _allowed_module(child.name):
                return self.hit(node, f"`{text}`: {child.name} is not among the modules a lab may use")
            if base.name == "sys" and attr not in SYS_ALLOWED:
                return self.hit(node, f"`{text}`: of sys, a lab may use only {', '.join(sorted(SYS_ALLOWED))}")
            if any(attr.startswith(p) for p in STD_DENIED.get(base.name, ())):
                return self.hit(node, f"`{text}` runs other code or evaluates strings, which labs may not")
            return
        if isinstance(base, Obj) and getattr(base.obj, "__module__", "").startswith("torch") \
                and attr.startswith("_") and not attr.startswith("__"):
            return self.hit(node, f"`{text}`: torch's private parts (names starting with `_`) are off limits")
        if isinstance(base, Obj) and isinstance(self.attr_value(base, attr), Obj) \
                and _is_forbidden(self.attr_value(base, attr).obj):
            return self.hit(node, f"`{text}` is torch's built-in `{attr}`, which the labs ask you to write yourself")
        if base is None or isinstance(base, Obj):  # an object the scan does not follow: judged by the name
            if attr in FORBIDDEN_NAMES:
                return self.hit(node, f"`{text}`: `{attr}` is the name of a torch built-in the labs ask you to "
                                      "write yourself; reach your own code by another name")
            if attr in MACHINERY:
                return self.hit(node, f"`{text}`: torch's dispatch machinery is off limits")

    def check_name(self, node, scope):
        name = node.id
        if name.startswith("__") and name.endswith("__") and name not in DUNDER_NAMES \
                and self.lookup(name, scope)[1] is None:
            return self.hit(node, f"`{name}` is off limits to a lab")
        if self.lookup(name, scope)[1] is not None:
            return
        if name in CODE_BUILTINS:
            self.hit(node, f"`{name}` runs code or reads a namespace built at run time, which labs may not use")
        elif name in NAME_BUILTINS and not self.is_called(node):
            self.hit(node, f"`{name}` may only be called directly, with the attribute's name written as a string")

    def is_called(self, node):
        return id(node) in self.called

    def check_name_call(self, node, scope):
        literal = _literal_name(node)
        if literal is None:
            return self.hit(node, f"`{ast.unparse(node)[:80]}`: {node.func.id} needs the name written as a literal "
                                  "string (a name computed at run time hides what it reaches)")
        if node.func.id == "getattr" or node.func.id == "hasattr":
            self.check_attribute(node, self.value(node.args[0], scope), literal, ast.unparse(node)[:80])
        else:
            base = self.value(node.args[0], scope)
            if isinstance(base, Mod) or isinstance(base, Obj) and isinstance(base.obj, type) \
                    and getattr(base.obj, "__module__", "").startswith("torch"):
                self.hit(node, f"`{ast.unparse(node)[:80]}` patches {getattr(base, 'name', None) or base.path}")

    def check_patch(self, node, target, scope):
        if not isinstance(target, (ast.Attribute, ast.Subscript)):
            return
        root = _root(target)
        if root is None:
            return
        value = self.value(root, scope)
        parts = []
        t = target
        while isinstance(t, (ast.Attribute, ast.Subscript)):
            if isinstance(t, ast.Attribute):
                parts.append(t.attr)
            t = t.value
        base = self.value(target.value, scope) if isinstance(target, ast.Attribute) else None
        torch_class = isinstance(base, Obj) and isinstance(base.obj, type) \
            and getattr(base.obj, "__module__", "").startswith("torch")
        if (isinstance(value, Mod) and "backends" not in parts) or torch_class or root.id in PATCH_ROOTS:
            self.hit(node, f"{ast.unparse(target)} = ... (patches {root.id})")


def warm():
    """Fill what the scan caches (the pack's fingerprints, the forbidden objects, the labs' names) in the process
    judges fork from, so no judge pays for it again (about 0.1 s each)."""
    from judge.copied import fingerprinted
    fingerprinted()
    _forbidden_objects()
    for module in BY_MODULE:
        lab_names(module)


def scan_source(source, filename: str = "<lab>", own=None) -> list:
    """Rule breaks in the code, each as 'line N: what'; [] when the source does not parse (the import will say).
    `own`: {earlier lab's module: the names the submission's own file of it defines} (own_names), which the code may
    import from it beside the contract's."""
    try:
        tree = ast.parse(source, filename)
    except (SyntaxError, ValueError):
        return []
    except RecursionError:  # Python's own bound on nesting: never read past it, so never skipped
        return [_TOO_DEEP]
    except MemoryError:  # past the memory the judge's work on a text may take (pack/memory.py), or the parser's own
        return [_TOO_BIG]
    scanner = Scanner(own)
    try:
        scanner.visit(tree, Scope("module"))
        scanner.called = {id(n.func) for n in scanner.nodes if isinstance(n, ast.Call)}
        scanner.check()
        scanner.hits += copied(source, filename)
    except RecursionError:
        return [_TOO_DEEP]
    except MemoryError:
        return [_TOO_BIG]
    return [f"line {line}: {what}" for line, what in sorted(set(scanner.hits), key=lambda h: h[0])]


_TOO_DEEP = ("the file nests too deeply for the grader to read it (a very long chain of operators or brackets);"
             " write it as plain statements")
_TOO_BIG = ("the file needs more memory than the grader gives a lab's text (--memory) to read it; write it as plain "
            "statements, without huge literals")
