"""
The package's structure: no import cycles between its modules (module-level imports), no library module
imports a script, and generate.py does not import the model loader or converter.

    python -m pytest -q tests/test_structure.py
"""

import ast

import pytest

from conftest import ROOT

PACKAGE = ROOT / "nanogpt2"


def module_imports() -> dict:
    """{module: set of nanogpt2 modules it imports at module level (not inside functions)}."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.parse(path.read_text()).body:  # top level only: lazy imports are allowed
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nanogpt2"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("nanogpt2"))
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def assert_acyclic(graph: dict, what: str = "import cycle") -> None:
    """Fail with the first cycle a depth-first walk of {module: modules it imports} meets."""
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            assert state.get(d) != "open", f"{what}: {' -> '.join(path + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_import_cycles():
    graph = module_imports()
    assert len(graph) >= 20
    assert_acyclic(graph)


def test_lazy_imports_of_the_model_do_not_import_it_back():
    """model.py may import a module lazily (GPT.from_pretrained -> convert, GPT.generate -> generate) only if that
    module does not import model.py at module level."""
    graph = module_imports()
    lazy = set()
    for node in ast.walk(ast.parse((PACKAGE / "model.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nanogpt2"):
            lazy.add(node.module)
    assert {"nanogpt2.convert", "nanogpt2.generate"} <= lazy
    for module in lazy:
        assert "nanogpt2.model" not in graph[module], f"{module} imports nanogpt2.model back"


def test_library_modules_import_no_script_and_generate_no_loader():
    graph = module_imports()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for script in ("train", "sample", "bench", "finetune"):
            assert f"import {script}\n" not in text and f"from {script} import" not in text, path
    assert not graph["nanogpt2.generate"] & {"nanogpt2.convert", "nanogpt2.loader", "nanogpt2.checkpoint"}


# ----------------------------------------------------------------------------------------------------
# Lazy imports counted, sizes, private names (the architecture issue: one owner per concept)

MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 400


def _is_main_block(node) -> bool:
    """`if __name__ == "__main__":` — a file run as a script; its imports are the command's, not the library's."""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__")


def _imports(tree, module: str):
    """(imported nanogpt2 module, names imported from it, inside model.py's lazy imports?) for every import of a
    module's code, function bodies included, `if __name__ == "__main__"` blocks left out."""
    found = []

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if _is_main_block(child):
                continue
            if isinstance(child, ast.ImportFrom) and child.level == 0 and (child.module or "").startswith("nanogpt2"):
                found.append((child.module, [a.name for a in child.names]))
            elif isinstance(child, ast.Import):
                found.extend((a.name, []) for a in child.names if a.name.startswith("nanogpt2"))
            walk(child)

    walk(tree)
    return found


def all_imports() -> dict:
    """{module: set of nanogpt2 modules it imports anywhere in its code (lazily too)}. `from nanogpt2 import x`
    counts as an import of nanogpt2.x when x is a module. The accepted exception: model.py's lazy imports
    (GPT.from_pretrained, GPT.generate: nanoGPT's conveniences), which are left out."""
    trees = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): ast.parse(p.read_text())
             for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, tree in trees.items():
        deps = set()
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if name == "nanogpt2.model" and isinstance(node, ast.ImportFrom) and id(node) not in top_level:
                node.module = None  # the accepted lazy imports of model.py
        for mod, names in _imports(tree, name):
            deps.update(f"{mod}.{n}" for n in names if f"{mod}.{n}" in trees)
            if not any(f"{mod}.{n}" in trees for n in names) or mod != "nanogpt2":
                deps.add(mod)
        graph[name] = {d for d in deps if d in trees and d != name and d != "nanogpt2"}
    return graph


def test_no_import_cycles_counting_lazy_imports():
    graph = all_imports()
    assert {"nanogpt2.trainer", "nanogpt2.evaluate"} <= graph["nanogpt2.finetuning"] | graph["nanogpt2.trainer"]
    assert_acyclic(graph, "import cycle (lazy imports counted)")


def test_the_cycle_check_sees_lazy_imports():
    """The check above would fail on a cycle made of lazy imports (the kind it exists for)."""
    src = "def f():\n    from nanogpt2.b import x\n"
    assert _imports(ast.parse(src), "nanogpt2.a") == [("nanogpt2.b", ["x"])]
    with pytest.raises(AssertionError, match="a -> b -> a"):
        assert_acyclic({"a": {"b"}, "b": {"a"}})
    main_only = 'if __name__ == "__main__":\n    from nanogpt2.b import x\n'
    assert _imports(ast.parse(main_only), "nanogpt2.a") == []


def _sizes():
    """(kind, qualified name, lines) of every class and function of the package: its lines from `def` / `class`
    to its end, less its own docstring (documentation is not what makes a function hard to read; a class's
    methods' docstrings count)."""
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                first = node.body[0]
                doc = (first.end_lineno - first.lineno + 1 if isinstance(first, ast.Expr)
                       and isinstance(getattr(first, "value", None), ast.Constant) and isinstance(first.value.value, str) else 0)
                yield kind, f"{rel}:{node.name}", node.end_lineno - node.lineno + 1 - doc


def test_no_class_over_400_lines_and_no_function_over_80():
    sizes = list(_sizes())
    assert any(name.endswith("trainer.py:Trainer") for _, name, _ in sizes)
    too_long = [f"{kind} {name} ({n} lines)" for kind, name, n in sizes
                if n > (MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES)]
    assert not too_long, "split these (STYLE.md: functions < ~80 lines, classes < ~400): " + "; ".join(too_long)


def test_no_private_name_is_imported_from_another_module():
    trees = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): ast.parse(p.read_text())
             for p in PACKAGE.rglob("*.py")}
    private = [f"{name} imports {mod}.{n}" for name, tree in trees.items() for mod, names in _imports(tree, name)
               for n in names if n.startswith("_") and mod != name]
    assert not private, "; ".join(private)
