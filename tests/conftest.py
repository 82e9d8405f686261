from pathlib import Path

import pytest

from xfusion import toy

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def small_toy():
    return toy.make("small", seed=0)


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real instrument files not found at {SHARED_DATA}")
    return SHARED_DATA
