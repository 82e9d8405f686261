"""The two test tiers (session 77): ``python3 dev.py test`` runs the suite without the heavy tier, ``--heavy`` only that
tier, ``--all`` both; the list is tests/conftest.py ``HEAVY`` and ``.ci/run`` runs both tiers."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dev():
    spec = importlib.util.spec_from_file_location("xfusion_dev_commands", ROOT / "dev.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_suite_leaves_out_the_heavy_tier_and_builds_the_docs(dev):
    docs, tests, args = dev.test_plan([], cpus=2)
    assert docs and tests
    assert args == ["-q", "-n", "2", "--dist", "loadfile", "--no-loadscope-reorder", "-m", "not heavy"]
    assert dev.test_plan([], cpus=1)[2] == ["-q", "-m", "not heavy"]  # one core: one process


def test_heavy_all_and_a_callers_marker(dev):
    docs, tests, args = dev.test_plan(["--heavy", "-x"], cpus=2)
    assert not docs and tests and args[-3:] == ["-m", "heavy", "-x"] and "--heavy" not in args
    docs, tests, args = dev.test_plan(["--all", "-k", "units"], cpus=2)
    assert docs and "-m" not in args and args[-2:] == ["-k", "units"]
    for own in (["-m", "slow"], ["-mslow"]):  # the caller's expression replaces the tier's
        args = dev.test_plan(own, cpus=2)[2]
        assert args.count("-m") + args.count("-mslow") == 1 and "not heavy" not in args
    assert dev.test_plan(["--no-docs"], cpus=2)[:2] == (False, True)
    assert dev.test_plan(["--no-tests"], cpus=2)[:2] == (True, False)
    assert "--no-docs" not in dev.test_plan(["--no-docs"], cpus=2)[2]


def test_ci_runs_both_tiers():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[-2:] == ["python3 dev.py test", "exec python3 dev.py test --heavy"]


def test_every_entry_names_a_test_function_and_says_why(request):
    """Every entry of HEAVY and KEPT_LONG names a test function of a file of tests/ (the collection hook checks the
    parametrizations) and says why; no test is in both; this file is in the suite."""
    from conftest import HEAVY, KEPT_LONG

    assert not set(HEAVY) & set(KEPT_LONG)
    for key, why in {**HEAVY, **KEPT_LONG}.items():
        name, _, test = key.partition("::")
        assert (ROOT / "tests" / name).is_file() and test.startswith("test_") and why
        assert f"def {test.split('[')[0]}(" in (ROOT / "tests" / name).read_text()
    mine = request.node
    assert mine.get_closest_marker("heavy") is None  # this file is in the suite
