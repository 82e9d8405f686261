"""benchmarks/delivery_probes.py (session 54): its summary reads each variant against the delivered cube."""
import pytest


@pytest.fixture()
def dp(bench_module):
    return bench_module("delivery_probes")


def test_summary_compares_each_variant_with_the_delivered_cube(dp):
    recs = [
        {"result": {"cold": {"nmse": 20.0, "v": 100.0, "w": 50.0}, "rest": {"nmse": 19.5, "v": 110.0, "w": 50.0},
                    "half": {"nmse": 20.5, "v": 90.0, "w": 60.0}, "same": None}},
        {"result": {"cold": {"nmse": 10.0}, "rest": {"nmse": 10.1}, "half": {"nmse": 9.0}, "same": None}},
        {"result": None},  # a scene where the probe does not apply
    ]
    lines = dp.summary("warm", recs)
    assert len(lines) == 2  # "same" measured nowhere
    rest, half = lines
    assert rest.startswith("warm rest: 2 scenes") and "mean -0.200 dB" in rest and "worst -0.50" in rest
    assert "velocity RMS median +10.0 % (lower on 0/1)" in rest and "width RMS median +0.0 %" in rest
    assert half.startswith("warm half: 2 scenes") and "mean -0.250 dB" in half and "best +0.50" in half
    assert "velocity RMS median -10.0 %" in half


def test_summary_of_the_average_probe_reads_the_chosen_cube(dp):
    recs = [{"result": {"chosen": {"nmse": 15.0}, "runner": {"j": 1, "nmse": 14.0}, "other_family": None}}]
    (line,) = dp.summary("average", recs)
    assert line.startswith("average runner: 1 scenes") and "mean -1.000 dB" in line
    assert "velocity RMS median -" in line  # no line maps on this scene


def test_summary_of_the_runon_probe_splits_the_scenes_by_kind(dp):
    """Session 58's ``runon`` probe: each fraction against the delivered count, over all scenes and per kind."""
    base = {"nmse": 20.0, "v": 100.0, "w": 50.0}
    recs = [{"scene": "point_sources/1 x", "result": {"count": base, "f0.5": {"nmse": 19.9, "v": 80.0, "w": 45.0},
                                                       "f0.75": {"nmse": 20.1, "v": 90.0, "w": 48.0}}},
            {"scene": "mixed/2 x", "result": {"count": base, "f0.5": {"nmse": 19.1, "v": 110.0, "w": 50.0},
                                               "f0.75": {"nmse": 19.7, "v": 104.0, "w": 49.0}}},
            {"scene": "snr_shell/3 x", "result": None}]
    lines = {ln.split(":")[0]: ln for ln in dp.summary("runon", recs)}
    assert set(lines) == {"runon f0.5", "runon f0.75", "runon f0.5 point_sources", "runon f0.5 mixed",
                          "runon f0.75 point_sources", "runon f0.75 mixed"}
    assert "2 scenes, NMSE change mean -0.500 dB" in lines["runon f0.5"]
    assert "velocity RMS median -5.0 % (lower on 1/2)" in lines["runon f0.5"]
    assert "1 scenes, NMSE change mean -0.300 dB" in lines["runon f0.75 mixed"]
