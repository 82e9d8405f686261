"""Noise model "propagated" of the 2D-1D starlet prior (xfusion.regularizers.sparsity): the EM step's Poisson
variance z / s through each band's filter, scaled per band by a noise probe. Block (Dask) == in memory, and the
propagated sigma of each band == the empirical standard deviation of the bands of Poisson noise."""
import json

import numpy as np
import pytest

from xfusion.regularizers.sparsity import Wavelet2D1D
from xfusion.regularizers.starlet import starlet1d, starlet2d

da = pytest.importorskip("dask.array")
from xfusion.backends.blockwise import DaskBackend  # noqa: E402


def _maps(shape, seed):
    rng = np.random.default_rng(seed)
    z = rng.gamma(2.0, 1.0, shape).astype(np.float32)
    var = (z / rng.uniform(0.5, 2.0, shape[:2])[:, :, None]).astype(np.float32)  # z / s, s varying over the sky
    probe = (np.sqrt(var) * rng.standard_normal(shape)).astype(np.float32)
    return z, var, probe


@pytest.mark.parametrize("kw", [{"sample": 20000}, {"sample": 20000, "n_scales_2d": 2, "k_rule": "sigmoid",
                                                    "null_space": "threshold"}], ids=["default", "n2_sigmoid"])
def test_propagated_block_statistics_and_apply_match_numpy(kw):
    """Per-band factors and variance floors from uneven blocks (lattice across block edges, halos) are those of the
    whole cube bit for bit; the blockwise thresholded synthesis and penalty match the in-memory prox."""
    reg = Wavelet2D1D(noise="propagated", **kw)
    z, var, probe = _maps((30, 30, 120), 5)
    B = DaskBackend(((7, 11, 12), (5, 25), (120,)))
    cube = lambda a: B.cube(a, a.shape, a.dtype)  # noqa: E731
    ref = reg.statistics(z, noise=(var, probe))
    got = B.combined(reg, cube(z), (cube(var), cube(probe)))
    assert got["sigma"] == ref["sigma"] and got["vfloor"] == ref["vfloor"]
    assert all(0 < v < 10 for v in ref["sigma"].values())
    out, pen = B.prox(reg, cube(z), got, (cube(var),))
    ref_out, ref_pen = reg.prox(z, with_penalty=True, noise=(var, probe))
    np.testing.assert_allclose(out.compute(), ref_out, rtol=0, atol=1e-6 * np.abs(ref_out).max())
    assert float(pen.compute()) == pytest.approx(ref_pen, rel=1e-6)
    with pytest.raises(ValueError, match="noise maps"):
        reg.prox(z)


def test_propagated_sigma_matches_poisson_noise():
    """Independent Poisson voxels of a smoothly varying intensity (10 to 400 counts): the variance map of every band
    (the intensity through the band's squared filter) matches the variance of the bands of 32 noise realizations
    within a few percent on the faint and the bright half of the field alike; the per-band correlation factor
    estimated from one noise probe is ~1 (no correlations; edges and the probe's draw make it 0.95-1.1); one MAD
    per band ("mad") is off by > 30% on one of the halves."""
    shape = (20, 20, 48)
    x, y, e = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    lam = 10 + 390 * x ** 2 * (0.6 + 0.4 * np.cos(3 * y)) * (1 + 0.5 * np.sin(4 * e))
    rng = np.random.default_rng(0)
    reg = Wavelet2D1D(noise="propagated", n_scales_2d=1, n_scales_1d=3, null_space="threshold")
    lam32 = lam.astype(np.float32)
    stats = reg.statistics(lam32, noise=(lam32, (np.sqrt(lam) * rng.standard_normal(shape)).astype(np.float32)))
    var = reg._variance_bands(lam32, 0)
    noise = rng.poisson(lam, (32,) + shape) - lam
    bands = []
    for n in noise:
        c2 = starlet2d(n, 1)
        bands.append(np.stack([starlet1d(c2[a], 3) for a in range(2)]))
    emp = np.std(np.array(bands), axis=0)
    inner = (slice(3, -3), slice(3, -3), slice(10, -10))  # away from the reflected edges
    for (a, b), c in stats["sigma"].items():
        assert 0.9 <= c <= 1.15, ((a, b), c)
        for half in (slice(0, 7), slice(7, None)):  # faint and bright halves of the field (x)
            ratio = np.mean(emp[a, b][inner][half]) / np.mean(np.sqrt(var[(a, b)][0] * var[(a, b)][1])[inner][half])
            assert ratio == pytest.approx(1.0, abs=0.04), ((a, b), half, ratio)
    mad = Wavelet2D1D(noise="mad", n_scales_2d=1, n_scales_1d=3, null_space="threshold").statistics(
        (lam + noise[0]).astype(np.float32))["sigma"][(0, 3)]
    faint, bright = (np.mean(emp[0, 3][inner][h]) for h in (slice(0, 7), slice(7, None)))
    assert max(mad / faint, bright / mad) > 1.3


def test_propagated_em_on_dask_matches_numpy():
    """EMProx with noise="propagated" on Dask blocks (probe drawn per block, statistics with the state) follows the
    in-memory fit: the probes differ (same distribution), the iterates agree to ~1e-3 while the "mad" fit is
    ~2e-2 away; the state carries the per-band factors (< 1: the EM step's correlations)."""
    from xfusion import toy
    from xfusion.grid import SPATIAL, SPECTRAL, assign_roles, fusion_grid
    from xfusion.likelihood import PoissonLikelihood, PoissonTerm
    from xfusion.operators.model import build_model
    from xfusion.parallel_em import DaskEMProx
    from xfusion.solvers.em import EMProx

    x, y, _ = toy.make("small", seed=0)
    grid = fusion_grid(x, y)
    xo, yo, _ = assign_roles(x, y)
    mx, my = build_model(grid, xo, SPATIAL), build_model(grid, yo, SPECTRAL)
    scale = mx.mean_weight()
    mx, my = mx.scaled(scale), my.scaled(scale)
    xd, yd = xo["counts"].values.astype(np.float32), yo["counts"].values.astype(np.float32)
    z0 = np.full(mx.fused_shape, xd.sum() / mx.forward(np.ones(mx.fused_shape, np.float32)).sum(), np.float32)
    v = grid.attrs["spatial_factor"]

    def fit(reg, dask):
        if dask:
            s = DaskEMProx(da.from_array(xd, chunks=(15, 15, -1)), da.from_array(yd, chunks=(15 // v, 15 // v, -1)),
                           mx, my, None, v, reg)
        else:
            s = EMProx(PoissonLikelihood([PoissonTerm(mx, xd), PoissonTerm(my, yd)]), reg)
        st = s.init(z0)
        for _ in range(3):
            st = s.step(st)
        return st

    ref = fit(Wavelet2D1D(noise="propagated"), False)
    got = fit(Wavelet2D1D(noise="propagated"), True)
    mad = fit(Wavelet2D1D(), False)
    scale_ = np.abs(ref["z"]).max()
    diff = np.abs(got["z"].compute() - ref["z"]).max() / scale_
    assert diff < 5e-3 and np.abs(mad["z"] - ref["z"]).max() / scale_ > 4 * diff
    factors = [v_ for k, v_ in got.items() if k.startswith("sigma_")]
    assert factors and all(0 < f < 1 for f in factors)


def test_fuse_exposes_the_noise_model():
    """``fuse(..., noise="propagated")`` reaches the prior (recorded in the settings, a different fit from "mad");
    a method without the EM step's variance or a prior that cannot use it is refused with a message."""
    import xfusion
    from xfusion import scenes

    x, y, _ = scenes.make("cluster_core", seed=3, counts=3e5, size=(12, 240))
    kw = dict(regularization="wavelet2d1d", k=1.0, n_scales_1d=2, null_space="zero", max_iter=4, tol=None,
              progress=False)
    a = xfusion.fuse(x, y, **kw)
    b = xfusion.fuse(x, y, noise="propagated", **kw)
    assert xfusion.settings_of(b)["noise"] == "propagated" and xfusion.settings_of(a)["noise"] == "mad"
    fa, fb = a["flux"].values, b["flux"].values
    assert np.all(np.isfinite(fb)) and not np.allclose(fa, fb, rtol=1e-3)
    # "auto" keeps comparing the families (RL included) and tunes every starlet candidate with this noise model
    c = xfusion.fuse(x, y, noise="propagated", progress=False)
    rec = json.loads(c.attrs["parameters"])["auto_tuning"]
    assert rec["regularization"] == "auto" and rec["method"] == "poisson thinning"
    assert c.attrs["regularization"] != "wavelet2d1d" or xfusion.settings_of(c)["noise"] == "propagated"
    with pytest.raises(ValueError, match="noise"):
        xfusion.fuse(x, y, regularization="anscombe2d1d", noise="propagated", max_iter=2, progress=False)
    with pytest.raises(ValueError, match="noise|propagated"):
        xfusion.fuse(x, y, method="ista", noise="propagated", max_iter=2, progress=False,
                     **{k: v for k, v in kw.items() if k not in ("max_iter", "progress")})


def test_propagated_fit_resumed_from_a_checkpoint_equals_the_uninterrupted_one(tmp_path):
    """The probe's refresh schedule lives in the state (checkpointed), not in the solver object: a fresh solver
    resuming at iteration 5 refreshes exactly where the uninterrupted fit did, so the two iterates are equal."""
    from xfusion import toy
    from xfusion.checkpoints import ZarrCheckpoint
    from xfusion.grid import SPATIAL, SPECTRAL, assign_roles, fusion_grid
    from xfusion.likelihood import PoissonLikelihood, PoissonTerm
    from xfusion.operators.model import build_model
    from xfusion.solvers.em import EMProx
    from xfusion.solvers.loop import run

    x, y, _ = toy.make("small", seed=0)
    xo, yo, _ = assign_roles(x, y)
    grid = fusion_grid(xo, yo)
    mx, my = build_model(grid, xo, SPATIAL), build_model(grid, yo, SPECTRAL)
    scale = mx.mean_weight()
    mx, my = mx.scaled(scale), my.scaled(scale)
    xd, yd = xo["counts"].values.astype(np.float32), yo["counts"].values.astype(np.float32)
    z0 = np.full(mx.fused_shape, xd.sum() / mx.forward(np.ones(mx.fused_shape, np.float32)).sum(), np.float32)

    def solver():
        return EMProx(PoissonLikelihood([PoissonTerm(mx, xd), PoissonTerm(my, yd)]), Wavelet2D1D(noise="propagated"))

    full = run(solver(), z0, max_iter=12, tol=None, progress=False)[0]
    path = str(tmp_path / "ck.zarr")
    run(solver(), z0, max_iter=5, tol=None, progress=False, checkpoint=ZarrCheckpoint(path), checkpoint_every=5)
    resumed = run(solver(), z0, max_iter=12, tol=None, progress=False, checkpoint=ZarrCheckpoint(path),
                  checkpoint_every=5, resume=True)[0]
    np.testing.assert_array_equal(resumed["z"], full["z"])
