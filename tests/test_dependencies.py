"""
The hard rule on dependencies: importing every module of the package (and the scripts' imports) loads only
torch, numpy, tiktoken, regex, requests and the standard library; the test oracles (transformers,
safetensors, peft) and the optional extras (matplotlib, tensorboard, pyarrow) are never imported at import
time, and pyproject.toml declares exactly the runtime dependencies.

    python -m pytest -q tests/test_dependencies.py
"""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

FORBIDDEN = ("transformers", "safetensors", "peft", "matplotlib", "tensorboard", "pyarrow", "datasets", "accelerate")
RUNTIME = {"torch", "numpy", "tiktoken", "regex", "requests"}


def test_importing_the_package_loads_no_oracle_or_extra():
    modules = sorted(p.stem for p in (ROOT / "nanogpt2").glob("*.py") if p.stem != "__init__")
    code = ("import json, sys\n"
            + "".join(f"import nanogpt2.{m}\n" for m in modules)
            + "import runpy\n"
            # the scripts' module-level imports, without running their main()
            + "".join(f"runpy.run_path({str(ROOT / s)!r}, run_name='not_main')\n" for s in ("train.py", "sample.py", "bench.py"))
            + f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert len(modules) >= 12  # every module was imported, not an empty list


def test_pyproject_declares_exactly_the_runtime_dependencies():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert names == RUNTIME
    assert project["requires-python"] == ">=3.10"
