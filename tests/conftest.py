"""Shared test helpers: paths to fixtures and to the optional real data in ../shared/data."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_data(relpath: str) -> Path:
    """Path of a real data file under ../shared/data, or skip the test with a reason when it is absent."""
    p = SHARED_DATA / relpath
    if not p.exists():
        pytest.skip(f"real-data check: {p} is not present (the ../shared folder beside the project)")
    return p
