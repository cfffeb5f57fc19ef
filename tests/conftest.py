"""Shared test helpers: paths to fixtures and to the optional real data in ../shared/data, and the test oracles.

The oracles (transformers, safetensors, peft, tiktoken) come with the `test` extra. On a developer's machine a
missing one skips the tests that need it; under CI (`CI=true`) a missing or broken oracle fails the run at
start, so a green CI never hides hundreds of skipped parity tests.
"""

import importlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"
SHARED_ORACLES = ROOT.parent / "shared" / "oracles"  # other projects' code (nanoGPT, llm.c), for tests only
ORACLES = ("transformers", "safetensors", "peft", "tiktoken")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def pytest_configure(config):
    if not in_ci():
        return
    broken = []
    for name in ORACLES:
        try:
            importlib.import_module(name)
        except Exception as e:  # ImportError, or a broken install that fails while importing
            broken.append(f"{name} ({type(e).__name__}: {e})")
    if broken:
        raise pytest.UsageError(f"CI=true and test oracles cannot be imported: {'; '.join(broken)}. "
                                f"Install them: pip install -e '.[test]'")


def oracle(module: str, reason: str = ""):
    """Import a test oracle: skip the calling module where it is absent, fail under CI=true."""
    if in_ci():
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason or f"{module} (a test oracle) is not installed: pip install -e '.[test]'")


def shared_data(relpath: str) -> Path:
    """Path of a real data file under ../shared/data, or skip the test with a reason when it is absent."""
    p = SHARED_DATA / relpath
    if not p.exists():
        pytest.skip(f"real-data check: {p} is not present (the ../shared folder beside the project)")
    return p


def shared_oracle(relpath: str):
    """Another project's module from ../shared/oracles (e.g. "nanogpt/model.py", "llmc/train_gpt2.py"), imported
    by path as a test oracle, or skip the test with a reason when it is absent."""
    import importlib.util

    p = SHARED_ORACLES / relpath
    if not p.is_file():
        pytest.skip(f"oracle check: {p} is not present (the ../shared folder beside the project)")
    name = "oracle_" + relpath.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_error_line(res) -> str:
    """A script failed the way every user error must: status 2, exactly one `error:` line on stderr, no
    traceback. Returns that line."""
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]
