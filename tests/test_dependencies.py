"""
The hard rule on dependencies: importing every module of the package (and the scripts' imports) loads only
torch, numpy, tiktoken, regex, requests and the standard library; the test oracles (transformers,
safetensors, peft) and the optional extras (matplotlib, tensorboard, pyarrow) are never imported at import
time, and pyproject.toml declares exactly the runtime dependencies.

    python -m pytest -q tests/test_dependencies.py
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

FORBIDDEN = ("transformers", "safetensors", "peft", "matplotlib", "tensorboard", "pyarrow", "datasets", "accelerate")
RUNTIME = {"torch", "numpy", "tiktoken", "regex", "requests"}


def test_importing_the_package_loads_no_oracle_or_extra():
    """...and imports point one way: no library module loads the benchmarks (nanogpt2/benchmarks/ imports the
    library, never the reverse)."""
    modules = sorted(p.stem for p in (ROOT / "nanogpt2").glob("*.py") if p.stem != "__init__")
    benchmarks = sorted(p.stem for p in (ROOT / "nanogpt2" / "benchmarks").glob("*.py") if p.stem != "__init__")
    code = ("import json, sys\n"
            + "".join(f"import nanogpt2.{m}\n" for m in modules)
            + "from_library = sorted(m for m in sys.modules if m.startswith('nanogpt2.benchmarks'))\n"
            + "".join(f"import nanogpt2.benchmarks.{m}\n" for m in benchmarks)
            + "import runpy\n"
            # the scripts' module-level imports, without running their main()
            + "".join(f"runpy.run_path({str(ROOT / s)!r}, run_name='not_main')\n" for s in ("train.py", "sample.py", "bench.py"))
            + f"print(json.dumps([sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}), from_library]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    forbidden, from_library = json.loads(proc.stdout.strip().splitlines()[-1])
    assert forbidden == [] and from_library == []
    assert len(modules) >= 12 and {"decode", "tokenizer"} <= set(benchmarks)  # every module was imported


def test_pyproject_declares_exactly_the_runtime_dependencies():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert names == RUNTIME
    assert project["requires-python"] == ">=3.10"


def _pytest_with_broken_oracle(tmp_path, ci: str):
    """Run this file's pyproject test in a child pytest where `peft` fails to import (a stand-in module on
    PYTHONPATH that raises), with CI set as given."""
    fake = tmp_path / "fake"
    fake.mkdir(exist_ok=True)
    (fake / "peft.py").write_text("raise ImportError('simulated broken peft')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PYTHONPATH=str(fake), CI=ci)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_dependencies.py::test_pyproject_declares_exactly_the_runtime_dependencies"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_broken_oracle_fails_under_ci_and_is_tolerated_elsewhere(tmp_path):
    ci = _pytest_with_broken_oracle(tmp_path, "true")
    assert ci.returncode != 0
    assert "test oracles cannot be imported: peft (ImportError: simulated broken peft)" in ci.stdout + ci.stderr
    local = _pytest_with_broken_oracle(tmp_path, "")
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
