"""Session 71: on a continuum sky the k walk's choice moves half-way toward the rung that predicts the held-out counts
best once put through the spectral-shape prior, as the delivered cube is (``xfusion.tuning.SHAPE_STEP``; criteria
and measurements in benchmarks/QUALITY_HISTORY.md, session 71)."""
import json

import pytest

from xfusion import scenes, tuning

LADDER = list(tuning.K_LADDER)


@pytest.mark.parametrize("walk, shape, expected", [
    (3.0, 1.0, 2.0),  # two rungs down: one
    (4.5, 1.0, 3.0),  # three rungs down: one (rounded toward the walk)
    (2.0, 1.0, 2.0),  # one rung down: stays
    (2.0, 0.5, 1.0),
    (1.0, 1.0, 1.0),
    (0.5, 2.0, 1.0),  # upward alike
    (0.5, 1.0, 0.5),
    (tuning.K_LADDER[0], tuning.K_LADDER[-1], LADDER[(len(LADDER) - 1) // 2]),
])
def test_half_way_moves_by_half_the_rungs_rounded_toward_the_walk(walk, shape, expected):
    assert tuning._half_way(LADDER, walk, shape) == expected


def test_a_faint_continuum_sky_is_delivered_at_the_half_way_rung_and_says_why(monkeypatch):
    """suite("tune", 144)[142] small (synchrotron/1142, 2.1e5 counts): the walk climbs to k = 3; through the shape
    prior k = 1 predicts the held-out counts best; the choice is k = 2 (the all-count NMSE of the rungs delivered
    through the prior, session 70's tuning record: k = 1 25.98, 2 24.72, 3 23.40 dB). The zeroed count is the
    chosen rung's own. With the rule off, the choice is the walk's."""
    x, y, _ = scenes.from_spec(scenes.suite("tune", 144)[142], size="small")
    cur = tuning.select(x, y)
    choice, details = json.loads(cur.attrs["choice"]), json.loads(cur.attrs["details"])
    step = details["shape_step"]
    assert (step["k_walk"], step["k_shape"], step["k"]) == (3.0, 1.0, 2.0)
    shaped = {float(k): v for k, v in step["shape_deviance"].items()}
    assert min(shaped, key=shaped.get) == step["k_shape"] and set(shaped) >= {0.5, 1.0, 2.0, 3.0}
    # the walk's own choice: the least held-out deviance among the ladder's rungs (as recorded in the curve)
    rungs = {json.loads(s)["k"]: float(d) for s, d in zip(cur["setting"].values, cur["mean_deviance"].values)
             if json.loads(s).get("null_space") == "zero" and "regularization" not in json.loads(s)}
    assert min(rungs, key=rungs.get) == step["k_walk"] and details["ladder"]["k"] == step["k"]
    assert choice["k"] == 2.0 and choice["null_space"] == "zero" and choice["spectral_band_factor"] == 8.0
    assert choice["max_iter"] == details["zero"]["max_iter"] >= 1  # the count transferred from the k = 2 run
    assert details["chosen_candidate"] == [json.loads(s).get("k") for s in cur["setting"].values].index(2.0)
    assert tuning._record(cur)["shape_step"] == step  # in the result's parameters["auto_tuning"]
    monkeypatch.setattr(tuning, "SHAPE_STEP", False)
    off = tuning.select(x, y)
    assert json.loads(off.attrs["choice"])["k"] == 3.0 and "shape_step" not in json.loads(off.attrs["details"])


def test_the_step_is_not_applied_where_it_was_not_measured(monkeypatch):
    """Only ``select``'s own ladder (the zeroed null space, k walked): with the null space given, the walk's choice
    stands and nothing is recorded; the shape scores are not even computed."""
    calls = []
    monkeypatch.setattr(tuning, "_shape_deviance", lambda *a: calls.append(1) or 0.0)
    x, y, _ = scenes.from_spec(scenes.suite("tune", 144)[142], size="small")
    cur = tuning.select(x, y, null_space="zero")
    assert "shape_step" not in json.loads(cur.attrs["details"]) and not calls
    assert json.loads(cur.attrs["choice"])["k"] == 3.0
