"""Stopping rules of the iteration loop (xfusion.solvers.loop): EM with a prior stops on the relative change of
the iterate (its objective's data term and penalty can cancel), other methods on the objective."""
import numpy as np
import pytest

import xfusion
from xfusion.solvers.loop import IterateChange, RelativeChange, stopping_rule


def test_iterate_rule_needs_patience_consecutive_small_changes():
    rule = IterateChange(1e-3, patience=3)
    h = {"iterate_change": [np.nan, 0.1, 5e-4, 5e-4]}
    assert not rule(h)  # two small changes, patience 3
    h["iterate_change"].append(1e-3)
    assert rule(h)  # <= tol counts
    h["iterate_change"][-2] = np.nan
    assert not rule(h)  # NaN (e.g. not recorded by an older checkpoint) never counts as small
    h["iterate_change"][-2] = 5e-4
    assert not IterateChange(1e-3, patience=3, min_iter=5)(h)
    assert not IterateChange(None, patience=3)(h) and not IterateChange(0, patience=3)(h)
    assert IterateChange.last(h) == 1e-3 and rule.key == "iterate_change" and RelativeChange(1e-3).key == "objective"


class _Method:
    def __init__(self, stop_on=None, patience=None):
        if stop_on:
            self.stop_on = stop_on
        if patience:
            self.patience = patience


def test_stopping_rule_follows_the_method():
    assert type(stopping_rule(_Method(), 1e-4)) is RelativeChange  # default: the objective
    rule = stopping_rule(_Method("iterate", patience=7), 1e-3)
    assert type(rule) is IterateChange and rule.patience == 7 and rule.tol == 1e-3


def test_em_with_prior_stops_on_iterate_change(small_toy):
    x, y, _ = small_toy
    snaps = []
    tol, cap = 1e-2, 40
    r = xfusion.fuse(x, y, regularization="wavelet2d1d", k=1.0, n_scales_1d=2, null_space="zero", tol=tol,
                     max_iter=cap, progress=False, callback=lambda it, s: snaps.append(np.array(s["z"], np.float64)))
    c, n = r.iterate_change.values, r.attrs["iterations"]
    assert np.isnan(c[0]) and r.iterate_change.attrs["long_name"].startswith("relative change of the iterate")
    for k in (2, 3, n):  # ||z_k - z_(k-1)|| / ||z_k|| of the iterates the callback saw (snaps[k - 1] = z_k)
        want = np.linalg.norm(snaps[k - 1] - snaps[k - 2]) / np.linalg.norm(snaps[k - 1])
        assert c[k] == pytest.approx(want, rel=1e-5)
    # stopped at the first iteration where 5 consecutive changes are <= tol, well before the cap
    first = next(m for m in range(1, cap + 1) if IterateChange(tol)({"iterate_change": list(c[:m + 1])}))
    assert r.attrs["converged"] == 1 and n == first < cap
    # plain RL keeps the objective rule: no iterate change recorded
    rl = xfusion.fuse(x, y, regularization="none", max_iter=3, tol=None, progress=False)
    assert "iterate_change" not in rl and rl.attrs["iterations"] == 3
