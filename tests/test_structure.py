"""
The package's structure: no import cycles between its modules (module-level imports), no library module
imports a script, and generate.py does not import the model loader or converter.

    python -m pytest -q tests/test_structure.py
"""

import ast

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


def test_no_import_cycles():
    graph = module_imports()
    assert len(graph) >= 20
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            assert state.get(d) != "open", f"import cycle: {' -> '.join(path + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


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
