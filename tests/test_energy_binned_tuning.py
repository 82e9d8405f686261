"""benchmarks/energy_binned_tuning.py (session 78): the tuning run on the sharp-spectral cube binned in energy, a probe
of a coarse-to-fine search for the 60 s target. Its binning keeps every count and the band, and its stored rows read
back to the counts that benchmarks/QUALITY_HISTORY.md quotes (the settings do not carry over: not adopted)."""
import numpy as np
import pytest
import xarray as xr

from xfusion import scenes

from conftest import BENCH


def test_binning_keeps_every_count_the_band_and_the_layout(bench_module):
    mod = bench_module("energy_binned_tuning")
    x, y, _ = scenes.make("snr_shell", seed=3, counts=2e5, size=(12, 80))
    given = y.copy(deep=True)
    yb = mod.bin_energy(y, 2)
    xr.testing.assert_identical(y, given)  # the given observation is not changed
    assert yb.sizes["energy"] == 40 and yb["counts"].dims == y["counts"].dims
    assert float(yb["counts"].sum()) == float(y["counts"].sum())
    np.testing.assert_array_equal(yb["counts"].values[..., 0], y["counts"].values[..., :2].sum(axis=-1))
    assert yb["energy_lo"].values[0] == y["energy_lo"].values[0]
    assert yb["energy_hi"].values[-1] == y["energy_hi"].values[-1]
    np.testing.assert_array_equal(yb["energy_lo"].values[1:], yb["energy_hi"].values[:-1])  # contiguous channels
    assert yb["energy"].attrs == y["energy"].attrs and yb["counts"].dtype == y["counts"].dtype
    with pytest.raises(ValueError, match="response matrix"):
        mod.bin_energy(x, 2)  # the sharp-spatial observation has a channel response: refused


@pytest.mark.parametrize("variant, expected", [
    ("small_ns2", "48 scenes: family 44 same, k 26 same (20 lower when binned), count 18 same (25 longer), all four 14;"
                  " selection CPU binned / given 91.2 / 125.4 s = 0.73"),
    ("small_ns1", "48 scenes: family 47 same, k 43 same (4 lower when binned), count 19 same (24 longer), all four 18;"
                  " selection CPU binned / given 81.8 / 128.2 s = 0.64"),
    ("full_ns2", "12 scenes: family 10 same, k 6 same (6 lower when binned), count 2 same (8 longer), all four 0;"
                 " selection CPU binned / given 186.9 / 374.5 s = 0.50"),
    ("full_ns1", "12 scenes: family 9 same, k 10 same (2 lower when binned), count 5 same (5 longer), all four 4;"
                 " selection CPU binned / given 148.0 / 284.9 s = 0.52"),
])
def test_the_stored_rows_read_back(bench_module, capsys, variant, expected):
    mod = bench_module("energy_binned_tuning")
    path = BENCH / "results" / f"energy_binned_tuning_{variant}_s78.jsonl"
    capsys.readouterr()
    assert mod.main(["--summary", str(path)]) == 0
    assert capsys.readouterr().out.strip() == expected
