"""lowrank_local: the local rank-r projection (against a direct SVD), its patches, and the prior through fuse with
its rank and count chosen by thinning."""
import json

import numpy as np
import pytest

import xfusion
from xfusion import tuning
from xfusion.regularizers.local_rank import LocalLowRank, patch_starts


def test_patches_cover_every_pixel_and_end_on_the_edge():
    for n, p, s in [(45, 6, 3), (24, 6, 3), (7, 6, 3), (5, 6, 3), (13, 4, 4), (10, 3, 1)]:
        starts = patch_starts(n, p, s)
        covered = np.zeros(n, int)
        for a in starts:
            covered[a:a + min(p, n)] += 1
        assert covered.min() >= 1 and starts[0] == 0 and starts[-1] + min(p, n) == n, (n, p, s, starts)


def test_one_patch_is_its_best_rank_r_approximation():
    """A field of exactly one patch: the output is the truncated SVD of its Casorati matrix (Eckart-Young)."""
    rng = np.random.default_rng(1)
    z = rng.gamma(2.0, 1.0, (5, 5, 40))
    for r in (1, 2, 4):
        u, s, vt = np.linalg.svd(z.reshape(25, 40), full_matrices=False)
        want = (u[:, :r] * s[:r]) @ vt[:r]
        np.testing.assert_allclose(LocalLowRank(rank=r, patch=5).project(z), want.reshape(5, 5, 40), rtol=1e-8,
                                   atol=1e-10)


def test_a_cube_of_low_rank_everywhere_is_kept_and_a_noisy_one_is_not():
    rng = np.random.default_rng(2)
    w, v = rng.random((20, 17, 2)), rng.random((2, 64))
    z = (w @ v).astype(np.float32)
    before = z.copy()
    out = LocalLowRank(rank=2, patch=6).project(z)
    assert out.dtype == np.float32 and out.shape == z.shape
    np.testing.assert_array_equal(z, before)  # the input is not modified
    np.testing.assert_allclose(out, z, rtol=2e-5, atol=2e-5)
    noisy = z + 0.05 * rng.standard_normal(z.shape).astype(np.float32)
    err_in = np.linalg.norm(noisy - z)
    err_out = np.linalg.norm(LocalLowRank(rank=2, patch=6).project(noisy) - z)
    assert err_out < 0.5 * err_in  # rank 2 of 36 pixel spectra per patch removes most of the noise
    # full rank keeps everything
    np.testing.assert_allclose(LocalLowRank(rank=36, patch=6).project(noisy), noisy, rtol=1e-4, atol=1e-5)


def test_a_line_moving_across_the_field_survives_locally_but_not_in_a_global_basis_of_the_same_rank():
    """The motivation: a Gaussian line whose centroid drifts with x is rank ~2-3 in a patch, high rank globally."""
    e = np.arange(200.0)
    x = np.arange(30.0)
    z = np.exp(-0.5 * ((e[None, None, :] - 60 - 2.5 * x[:, None, None]) / 3.0) ** 2) * np.ones((30, 12, 1))
    local = LocalLowRank(rank=3, patch=6).project(z)
    flat = z.reshape(-1, 200)
    u, s, vt = np.linalg.svd(flat, full_matrices=False)
    glob = ((u[:, :3] * s[:3]) @ vt[:3]).reshape(z.shape)
    assert np.linalg.norm(local - z) < 0.25 * np.linalg.norm(glob - z)


@pytest.mark.parametrize("bad", [{"rank": 0}, {"patch": 0}, {"rank": 2.5}, {"patch": 6, "stride": 7}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="must be an integer"):
        LocalLowRank(**bad)


def test_fuse_tunes_rank_and_count_by_thinning_and_refuses_dask(small_toy):
    x, y, t = small_toy
    r = xfusion.fuse(x, y, regularization="lowrank_local", progress=False)
    p = json.loads(r.attrs["parameters"])
    rec = p["auto_tuning"]
    assert rec["choice"]["rank"] in tuning.LOCAL_RANK_LADDER and p["rank"] == rec["choice"]["rank"]
    assert r.attrs["iterations"] == rec["choice"]["max_iter"] >= 1
    dev = rec["heldout_deviance"]
    assert len(dev) == len(tuning.LOCAL_RANK_LADDER) and dev.index(min(dev)) == \
        [c["rank"] for c in rec["candidates"]].index(p["rank"])
    assert np.all(np.isfinite(r.flux.values)) and float(r.flux.min()) >= 0
    fixed = xfusion.fuse(x, y, regularization="lowrank_local", rank=2, patch=4, max_iter=3, tol=None, progress=False)
    assert json.loads(fixed.attrs["parameters"])["rank"] == 2 and fixed.attrs["iterations"] == 3
    with pytest.raises(NotImplementedError, match="in memory only"):
        xfusion.fuse(x.chunk({"x": 8}), y, regularization="lowrank_local", rank=2, max_iter=1, progress=False)
