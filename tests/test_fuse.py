"""End-to-end fusion on the small toy: quality vs naive baselines, schema, purity, resume, ISTA."""
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import xarray as xr
import zarr

import xfusion
from xfusion import baselines, metrics
from xfusion.grid import SPATIAL, SPECTRAL, fusion_grid
from xfusion.likelihood import PoissonLikelihood, PoissonTerm
from xfusion.operators import build_model
from xfusion.operators.dottest import dottest
from xfusion.regularizers.lowrank import pca_basis
from xfusion.regularizers.sobolev import Gradient2D, Sobolev
from xfusion.regularizers.starlet import mad_sigma, soft_threshold, starlet2d1d


#: explicit settings for tests about checkpoints and resuming: "auto" ones are tuned by thinning at every call
#: (test_resume_after_interruption_gives_same_result keeps them: a resumed run reuses what they chose)
PINNED = {"wavelet2d1d": dict(k=1.0, n_scales_1d=2, null_space="zero"), "lowrank_sobolev": dict(rank=10, mu=0.01)}


@pytest.fixture(scope="module")
def base_metrics(small_toy):
    x, y, t = small_toy
    return {n: metrics.report(f(x, y), t, ratio=3) for n, f in
            (("xup", baselines.upsample_spatial), ("yup", baselines.upsample_spectral))}


@pytest.mark.parametrize("reg,margin_db", [("wavelet2d1d", 3.0), ("lowrank_sobolev", 3.0), ("lowrank_wavelet2d", 1.0)])
def test_beats_naive_baselines(small_toy, base_metrics, reg, margin_db):
    x, y, t = small_toy
    r = xfusion.fuse(x, y, regularization=reg, progress=False)
    m = metrics.report(r, t)
    for b in base_metrics.values():
        assert m["nmse_db"] > b["nmse_db"] + margin_db
        assert m["ergas"] < b["ergas"]
        if reg != "lowrank_wavelet2d":  # measured: LRW2D's acSSIM on this toy is 0.12 vs 0.09 for X upsampled
            assert m["acssim"] < b["acssim"]
    # on this toy Y has ~16,000 counts per pixel, so Y upsampled already has good spectral angles; the
    # low-rank family distorts spectra more (as the paper notes) and is not held to this one
    if reg == "wavelet2d1d":
        assert m["asam_rad"] < base_metrics["xup"]["asam_rad"]


def test_default_on_gaussian_rebin_beats_baselines_and_best_richardson_lucy(gaussian_rebin_toy):
    """Issue target on the paper's gaussian_rebin: >= 12 dB, better than both naive baselines on all four
    metrics and better in NMSE than plain two-instrument RL at its best iteration."""
    x, y, t = gaussian_rebin_toy
    r = xfusion.fuse(x, y, progress=False)
    m = metrics.report(r, t)
    assert m["nmse_db"] >= 12.0
    # "auto" delivers the chosen family's cube through the spectral-shape prior (xfusion.regularizers.shape), its
    # pseudo-counts chosen by thinning too (xfusion.tuning.tune_shape)
    from xfusion.regularizers.shape import levels_of
    from xfusion.tuning import PIXEL_LADDER, SHAPE_LADDER

    params = json.loads(r.attrs["parameters"])
    n0, n0_pixel = levels_of(params["shape_prior"])  # level 0 its own when thinning prefers it (session 37)
    assert n0 in SHAPE_LADDER and (n0_pixel == n0 or n0_pixel in PIXEL_LADDER)
    assert params["shape_prior"] == params["auto_tuning"]["shape_prior"]["choice"]
    for f in (baselines.upsample_spatial, baselines.upsample_spectral):
        b = metrics.report(f(x, y), t, ratio=3)
        assert m["nmse_db"] > b["nmse_db"] and m["asam_rad"] < b["asam_rad"]
        assert m["acssim"] < b["acssim"] and m["ergas"] < b["ergas"]
    # plain RL at 3, 5 and 8 iterations: ONE run of 8, its iterates (internal units) recorded on the way
    seen = {}
    rl = baselines.richardson_lucy(x, y, 8, progress=False,
                                   callback=lambda it, st: seen.update({it: np.array(st["z"], np.float64)}))
    per_unit = float(rl.flux.sum(dtype=np.float64)) / float(seen[8].sum())  # flux = z / internal scale
    np.testing.assert_allclose(seen[8] * per_unit, rl.flux.values, rtol=1e-5, atol=1e-6 * float(rl.flux.max()))
    best_rl = max(metrics.nmse(t, rl.flux.copy(data=(seen[n] * per_unit).astype(np.float32))) for n in (3, 5, 8))
    assert m["nmse_db"] > best_rl + 0.3


def test_result_schema_and_inputs_untouched(small_toy):
    x, y, t = small_toy
    xc, yc = copy.deepcopy(x), copy.deepcopy(y)
    r = xfusion.fuse(y, x, progress=False, max_iter=5, regularization="wavelet2d1d")  # either order
    xr.testing.assert_identical(x, xc)
    xr.testing.assert_identical(y, yc)
    assert r.flux.dims == ("x", "y", "energy") and r.flux.shape == t.shape
    assert r.flux.attrs["units"] == "ph cm-2 s-1" and float(r.flux.min()) >= 0
    np.testing.assert_array_equal(r.energy_lo.values, y.energy_lo.values)
    np.testing.assert_array_equal(r.x.values, x.x.values)
    assert r.model_spatial.shape == x.counts.shape and r.model_spectral.shape == y.counts.shape
    np.testing.assert_array_equal(r.counts_spectral.values, y.counts.values)
    params = json.loads(r.attrs["parameters"])
    # k="auto" is chosen by Poisson thinning from the k ladder (xfusion.tuning) and recorded
    from xfusion.tuning import K_LADDER
    assert params["regularization"] == "wavelet2d1d" and params["k"] in K_LADDER
    assert params["auto_tuning"]["method"] == "poisson thinning" and params["auto_tuning"]["choice"]["k"] == params["k"]
    assert r.attrs["iterations"] == 5 and r.sizes["iteration"] == 6
    assert r.attrs["xfusion_version"] == xfusion.__version__
    # the predicted counts are the forward model of the fused flux
    np.testing.assert_allclose(xfusion.predict(r.flux, x).values, r.model_spatial.values, rtol=1e-4, atol=1e-6)
    same = xfusion.fuse(x, y, progress=False, max_iter=5, regularization="wavelet2d1d")
    np.testing.assert_array_equal(same.flux.values, r.flux.values)


def test_options_are_checked(small_toy):
    x, y, _ = small_toy
    with pytest.raises(TypeError, match="unknown option"):
        xfusion.fuse(x, y, progress=False, rnak=3)
    with pytest.raises(ValueError, match="unknown regularization"):
        xfusion.fuse(x, y, regularization="tv", progress=False)
    with pytest.raises(ValueError, match="does not apply"):
        xfusion.fuse(x, y, regularization="lowrank", method="em", progress=False)


@pytest.mark.parametrize("reg", ["wavelet2d1d", "lowrank_sobolev"])
def test_resume_after_interruption_gives_same_result(small_toy, tmp_path, reg):
    x, y, _ = small_toy
    full = xfusion.fuse(x, y, regularization=reg, max_iter=8, tol=None, progress=False)
    ck = tmp_path / "ck.zarr"
    xfusion.fuse(x, y, regularization=reg, max_iter=8, tol=None, progress=False, checkpoint=ck, checkpoint_every=2,
                 callback=lambda it, state: it == 5)  # "interrupted" after iteration 5, last checkpoint at 4
    seen = []
    resumed = xfusion.fuse(x, y, regularization=reg, max_iter=8, tol=None, progress=False, checkpoint=ck,
                           checkpoint_every=2, resume=True, callback=lambda it, state: seen.append(it))
    assert seen == [5, 6, 7, 8]  # starts at the checkpoint's iteration + 1, runs only the remaining ones
    assert resumed.attrs["iterations"] == 8
    np.testing.assert_allclose(resumed.flux.values, full.flux.values, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(resumed.objective.values, full.objective.values, rtol=1e-9)
    # session 28: a smaller max_iter than the checkpoint's iteration is refused (was: its later state returned as if
    # it were the max_iter run); the same max_iter returns the finished run
    with pytest.raises(ValueError, match="is at iteration 8, past max_iter=6: a run cannot be rewound"):
        xfusion.fuse(x, y, regularization=reg, max_iter=6, tol=None, progress=False, checkpoint=ck, resume=True)
    again = xfusion.fuse(x, y, regularization=reg, max_iter=8, tol=None, progress=False, checkpoint=ck, resume=True)
    np.testing.assert_array_equal(again.flux.values, resumed.flux.values)


@pytest.mark.parametrize("reg", ["auto", "none"])
def test_resume_reuses_the_settings_auto_chose(small_toy, tmp_path, monkeypatch, reg):
    """Session 29: a resumed run tuned its "auto" settings again (the tuning costs 2-3 fits: all of it repeated
    after a kill in the final fit; and a tuning that chose otherwise would make the checkpoint look foreign). The
    checkpoint now keeps the choice for the request (inputs and arguments as given) and the resumed run reuses it."""
    from xfusion import tuning

    x, y, _ = small_toy
    full = xfusion.fuse(x, y, regularization=reg, progress=False)
    n = full.attrs["iterations"]
    ck = tmp_path / "ck.zarr"
    xfusion.fuse(x, y, regularization=reg, progress=False, checkpoint=ck, checkpoint_every=1,
                 callback=lambda it, state: it == n // 2)
    def refuse(*a, **k):
        raise AssertionError("tuned again on resume")
    monkeypatch.setattr(tuning, "tune", refuse)
    monkeypatch.setattr(tuning, "resolve_auto", refuse)
    seen = []
    resumed = xfusion.fuse(x, y, regularization=reg, progress=False, checkpoint=ck, checkpoint_every=1, resume=True,
                           callback=lambda it, state: seen.append(it))
    assert seen[0] == n // 2 + 1 and resumed.attrs["iterations"] == n
    np.testing.assert_array_equal(resumed.flux.values, full.flux.values)
    assert json.loads(resumed.attrs["parameters"]) == json.loads(full.attrs["parameters"])  # auto_tuning included
    # other counts: another request, so the stored choice is not reused (tuning is asked for, and refused here)
    with pytest.raises(AssertionError, match="tuned again"):
        xfusion.fuse(x.assign(counts=x.counts + 1), y, regularization=reg, progress=False, checkpoint=ck,
                     resume=True)


def test_a_refused_checkpoint_path_costs_no_tuning(small_toy, tmp_path, monkeypatch):
    """Session 29: the checkpoint path was checked after the automatic tuning (minutes on a real field), so a
    user's file at that path was refused only then. Now before any work."""
    from xfusion import tuning
    from xfusion.checkpoints import CheckpointError

    x, y, _ = small_toy
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    def refuse(*a, **k):
        raise AssertionError("tuned before the checkpoint path was checked")
    monkeypatch.setattr(tuning, "resolve_auto", refuse)
    with pytest.raises(CheckpointError, match="not written by xfusion"):
        xfusion.fuse(x, y, progress=False, checkpoint=mine)
    assert mine.read_text() == "mine"


@pytest.mark.parametrize("reg,key", [("wavelet2d1d", "z"), ("lowrank_sobolev", "w")])
def test_resume_uses_the_stored_state(small_toy, tmp_path, reg, key):
    """A perturbed stored state changes the resumed result when its checksums are recomputed (so the state is
    really read), and is refused when they are not (so damage is never used)."""
    from xfusion.checkpoints import CheckpointError, ZarrCheckpoint

    x, y, _ = small_toy
    kw = dict(regularization=reg, max_iter=8, tol=None, progress=False, checkpoint_every=2, **PINNED[reg])
    full = xfusion.fuse(x, y, **kw)
    ck = tmp_path / "ck.zarr"
    xfusion.fuse(x, y, checkpoint=ck, **dict(kw, max_iter=4))
    store = ZarrCheckpoint(ck, xr.open_zarr(ck, consolidated=False).attrs["fingerprint"])
    with store:
        state, history, it = store.load()
        assert it == 4
        bump = np.ones_like(state[key])
        bump[: bump.shape[0] // 2] = 2  # not a global scale, which EM's multiplicative update would undo
        state[key] = state[key] * bump
        store.save(state, history, it)  # perturbed, checksums recomputed
    resumed = xfusion.fuse(x, y, checkpoint=ck, resume=True, **kw)
    rel = float(np.abs(resumed.flux.values - full.flux.values).max() / np.abs(full.flux.values).max())
    assert rel > 1e-3
    # the same kind of change behind the checksum's back: refused
    xfusion.fuse(x, y, checkpoint=ck, **dict(kw, max_iter=4))
    arr = zarr.open_array(str(ck / f"state_{key}"), mode="r+")
    arr[...] = arr[...] * bump
    with pytest.raises(CheckpointError, match=f"state_{key}.*checksum"):
        xfusion.fuse(x, y, checkpoint=ck, resume=True, **kw)


def test_resume_refuses_a_foreign_checkpoint(small_toy, tmp_path):
    x, y, _ = small_toy
    ck = tmp_path / "ck.zarr"
    xfusion.fuse(x, y, max_iter=2, progress=False, checkpoint=ck, **PINNED["wavelet2d1d"])
    with pytest.raises(ValueError, match="different inputs or parameters"):
        xfusion.fuse(x, y, max_iter=2, progress=False, checkpoint=ck, resume=True, **dict(PINNED["wavelet2d1d"], k=2.0))


def test_sigkill_then_resume(small_toy, tmp_path, child_env):
    """A run killed with SIGKILL mid-way resumes from its Zarr checkpoint to the uninterrupted result."""
    x, y, _ = small_toy
    ck = tmp_path / "ck.zarr"
    n = 16  # the killed run waits for the kill from iteration n - 1 on, so it never finishes first (was 40 + 40)
    script = textwrap.dedent(f"""
        import time, xfusion
        x, y, _ = xfusion.toy.make("small", seed=0)
        def slow(it, state):
            time.sleep(0.4 if it < {n} - 1 else 600)
        xfusion.fuse(x, y, max_iter={n}, tol=None, progress=False, checkpoint={str(ck)!r}, checkpoint_every=2,
                     callback=slow, **{PINNED["wavelet2d1d"]!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=child_env)
    try:
        t0 = time.time()
        while not (ck / "zarr.json").exists() and time.time() - t0 < 60:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = xfusion.io.zarr.open(ck).attrs["iteration"]
    assert 0 < done < n
    seen = []
    resumed = xfusion.fuse(x, y, max_iter=n, tol=None, progress=False, checkpoint=ck, checkpoint_every=2, resume=True,
                           callback=lambda it, state: seen.append(it), **PINNED["wavelet2d1d"])
    assert seen == list(range(done + 1, n + 1))
    full = xfusion.fuse(x, y, max_iter=n, tol=None, progress=False, **PINNED["wavelet2d1d"])
    np.testing.assert_allclose(resumed.flux.values, full.flux.values, rtol=1e-6, atol=1e-12)


def test_ista_reproduces_a_straightforward_algorithm_1(small_toy):
    """method="ista" equals a plain loop of Alg. 1 + Alg. 2 (PWS threshold mu * MAD of the finest band), the
    starlet taken on the field extended point-symmetrically by the 2D transform's reach (6 pixels for 2 scales;
    session 34: the field edge, ``xfusion.regularizers.sparsity.FIELD_EDGE``)."""
    x, y, _ = small_toy
    n_iter, mu = 6, 1.0
    r = xfusion.fuse(x, y, method="ista", step=0.05, max_iter=n_iter, tol=None, dtype="float64", progress=False, n_scales_2d=2,
                     n_scales_1d=3, k=mu, per_band=False, null_space="threshold")
    # straightforward implementation, in the same internal units (Z scaled by mean t_X A_X)
    grid = fusion_grid(x, y)
    mx, my = build_model(grid, x, SPATIAL), build_model(grid, y, SPECTRAL)
    s = float(np.mean(mx.weights))
    mx, my = mx.scaled(s), my.scaled(s)
    X, Y = x.counts.values.astype(float), y.counts.values.astype(float)
    z = np.full(mx.fused_shape, X.sum() / mx.forward(np.ones(mx.fused_shape)).sum())
    alpha = json.loads(r.attrs["parameters"])["step"]
    for _ in range(n_iter):
        grad = mx.adjoint(1 - X / mx.forward(z)) + my.adjoint(1 - Y / my.forward(z))
        zt = z - alpha * grad
        h = 6
        c = starlet2d1d(np.pad(zt, ((h, h), (h, h), (0, 0)), mode="reflect", reflect_type="odd"), 2, 3)[:, :, h:-h, h:-h]
        rho = mu * mad_sigma(c[0, 0])
        zt = c[2, 3] + sum(soft_threshold(c[a, b], rho) for a in range(3) for b in range(4) if (a, b) != (2, 3))
        z = np.maximum(zt, 0)
    np.testing.assert_allclose(r.flux.values, (z / s).astype(np.float32), rtol=2e-5, atol=1e-14)


def test_em_without_regularization_is_richardson_lucy(small_toy):
    x, y, _ = small_toy
    r = baselines.richardson_lucy(x, y, n_iter=3, dtype="float64", progress=False)
    grid = fusion_grid(x, y)
    mx, my = build_model(grid, x, SPATIAL), build_model(grid, y, SPECTRAL)
    X, Y = x.counts.values.astype(float), y.counts.values.astype(float)
    sens = mx.adjoint(np.ones_like(X)) + my.adjoint(np.ones_like(Y))
    z = np.full(mx.fused_shape, X.sum() / mx.forward(np.ones(mx.fused_shape)).sum())
    for _ in range(3):
        z = z / sens * (mx.adjoint(X / mx.forward(z)) + my.adjoint(Y / my.forward(z)))
    np.testing.assert_allclose(r.flux.values, z.astype(np.float32), rtol=1e-5)
    # EM decreases the data term monotonically
    assert np.all(np.diff(r.data_term.values) <= 1e-9 * r.data_term.values[0])


def test_sobolev_operator_adjoint_and_gradient():
    D = Gradient2D()
    for dt, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        assert dottest(D, (7, 5, 3), dt) <= tol
    rng = np.random.default_rng(0)
    w = rng.random((6, 5, 2))
    d = rng.standard_normal(w.shape)
    s = Sobolev(0.1)
    fd = (s.value(w + 1e-6 * d) - s.value(w - 1e-6 * d)) / 2e-6
    assert fd == pytest.approx(np.sum(s.gradient(w) * d), rel=1e-6)


def test_pca_basis_sorted_and_orthonormal():
    rng = np.random.default_rng(0)
    comps = rng.random((3, 50))
    spectra = rng.random((200, 3)) * [10, 3, 1] @ comps + 0.01 * rng.standard_normal((200, 50))
    v = pca_basis(spectra, rank=3)
    np.testing.assert_allclose(v @ v.T, np.eye(3), atol=1e-12)
    resid = spectra - spectra @ v.T @ v
    assert np.linalg.norm(resid) / np.linalg.norm(spectra) < 0.01
    assert pca_basis(spectra, explained=0.9999).shape[0] >= 3


def test_ista_divergence_is_reported(small_toy):
    x, y, _ = small_toy
    with pytest.raises(FloatingPointError, match="smaller step"):
        xfusion.fuse(x, y, method="ista", step=50.0, max_iter=50, tol=None, progress=False)


def test_vignetted_area_runs_on_full_cube_and_is_refused_by_low_rank(small_toy):
    x, y, t = small_toy
    et = np.linspace(0.4, 1.5, 1101)
    vig = xr.DataArray(np.ones((15, 15, 1100)) * np.linspace(0.8, 1.0, 15)[:, None, None] * 1000,
                       dims=("x", "y", "energy_true"),
                       coords={"energy_true": 0.5 * (et[1:] + et[:-1]), "energy_true_lo": ("energy_true", et[:-1]),
                               "energy_true_hi": ("energy_true", et[1:])}, attrs={"units": "cm2"})
    xv = xfusion.observation(x.counts, energy_edges=np.append(x.energy_lo.values, x.energy_hi.values[-1]),
                             pixel_size=10.0, exposure=float(x.exposure), effective_area=vig,
                             response=x.response.values, response_spacing=float(x.energy_offset.attrs["spacing"]))
    grid = fusion_grid(xv, y)
    m = build_model(grid, xv, SPATIAL)
    assert m.weights.shape == (15, 15, 240)
    np.testing.assert_allclose(m.weights[0, 0] / m.weights[14, 0], 0.8, rtol=1e-6)
    r = xfusion.fuse(xv, y, progress=False, max_iter=5, **PINNED["wavelet2d1d"])
    assert np.isfinite(r.objective.values).all()
    with pytest.raises(ValueError, match="do not vary with position"):
        xfusion.fuse(xv, y, regularization="lowrank", progress=False)


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(regularization="tv"), ValueError, "unknown regularization"),
    (dict(regularization="lowrank", rank=1000), ValueError, "exceeds"),
    (dict(regularization="lowrank_sobolev", mu=-0.1), ValueError, "mu must be a number >= 0"),
    (dict(tol=0), ValueError, "tol must be > 0"),
    (dict(tol=-1e-3), ValueError, "tol must be > 0"),
    (dict(k=-1.0), ValueError, "k must be"),
    (dict(n_scales_1d=0), ValueError, "n_scales_1d must be an integer"),
    (dict(method="ista", step=-1.0), ValueError, "step must be > 0"),
    (dict(rank=3), TypeError, "unknown option"),
])
def test_bad_options_give_clear_errors(small_toy, kw, exc, msg):
    x, y, _ = small_toy
    with pytest.raises(exc, match=msg):
        xfusion.fuse(x, y, progress=False, **kw)


@pytest.mark.parametrize("reg", ["lowrank", "none"])
def test_unregularized_options_early_stopped_beat_baselines(small_toy, base_metrics, reg):
    x, y, t = small_toy
    m = metrics.report(xfusion.fuse(x, y, regularization=reg, progress=False), t)
    assert all(m["nmse_db"] > b["nmse_db"] + 1.0 for b in base_metrics.values())


def test_soft_threshold_is_the_l1_prox():
    """prox of t|.| in closed form: argmin_y t|y| + (y - x)^2 / 2, checked on a fine grid of y."""
    xs = np.linspace(-3, 3, 13)
    ys = np.linspace(-4, 4, 80001)
    for t_ in (0.0, 0.5, 1.7):
        brute = [ys[np.argmin(t_ * np.abs(ys) + 0.5 * (ys - x0) ** 2)] for x0 in xs]
        np.testing.assert_allclose(soft_threshold(xs, t_), brute, atol=1e-4)


def test_settings_of_refits_with_the_tuned_settings_and_warm_start(small_toy, tmp_path):
    """settings=result refits with the values "auto" chose (bitwise the same fit, no re-tuning); init=result starts
    at the solution, is validated against the grid, never mutated, and is part of the recorded parameters and of
    the checkpoint's manifest. (Measured on this toy: warm 14 iterations to convergence vs cold 22, NMSE equal to
    1e-6 dB.)"""
    x, y, t = small_toy
    r = xfusion.fuse(x, y, regularization="none", progress=False)  # max_iter "auto": chosen by thinning
    s = xfusion.settings_of(r)
    assert s["regularization"] == "none" and s["method"] == "em" and s["max_iter"] == r.attrs["iterations"] > 0
    assert "auto" not in s.values() and "auto_tuning" not in s and s == xfusion.settings_of(s)
    again = xfusion.fuse(x, y, **s, progress=False)  # the same as settings=r (fuse merges settings_of(r))
    assert "auto_tuning" not in json.loads(again.attrs["parameters"])  # nothing was re-tuned
    np.testing.assert_array_equal(again.flux.values, r.flux.values)
    with pytest.raises(ValueError, match="records regularization"):
        xfusion.fuse(x, y, settings=r, regularization="lowrank", progress=False)
    kw = dict(k=1.0, n_scales_1d=2, null_space="zero", progress=False)
    r = xfusion.fuse(x, y, max_iter=8, **kw)
    rc = copy.deepcopy(r)
    warm = xfusion.fuse(x, y, settings=r, init=r, max_iter=1, tol=None, progress=False)
    xr.testing.assert_identical(r, rc)
    cold = xfusion.fuse(x, y, settings=r, max_iter=0, progress=False)  # the default flat start, not iterated
    # the run starts at the previous solution (data term of its final iterate; the EM floor on exact zeros aside:
    # 1.4e-3 since session 34's field edge, 1e-3 before; a cold start is 2x or more off)
    np.testing.assert_allclose(warm.data_term.values[0], r.data_term.values[-1], rtol=3e-3)
    assert warm.data_term.values[0] < 0.5 * cold.data_term.values[0]
    assert abs(metrics.nmse(t, warm.flux) - metrics.nmse(t, r.flux)) < 0.1
    rec = json.loads(warm.attrs["parameters"])["init"]
    assert rec["from"] == "result" and rec["regularization"] == "wavelet2d1d" and len(rec["flux_sha256"][0]) == 64
    with pytest.raises(ValueError, match="fuse on"):
        xfusion.fuse(x, y, init=r.flux.isel(x=slice(1, None)), **kw)
    with pytest.raises(ValueError, match="same fused grid"):
        xfusion.fuse(x, y, init=r.flux.assign_coords(x=r.x + 5 * float(r.x[1] - r.x[0])), **kw)
    with pytest.raises(ValueError, match="finite and >= 0"):
        xfusion.fuse(x, y, init=r.flux.where(r.x != r.x[0]), **kw)
    # the warm start is in the checkpoint's manifest, not its fingerprint (session 31): a resume takes precedence
    # over init (it only set iterate 0), so the run continues from the checkpoint and records its warm start
    ck = tmp_path / "ck.zarr"
    xfusion.fuse(x, y, settings=r, init=r, max_iter=1, tol=None, progress=False, checkpoint=ck)
    two = xfusion.fuse(x, y, settings=r, init=r, max_iter=2, tol=None, progress=False)
    res = xfusion.fuse(x, y, settings=r, init=r.flux * 2, max_iter=2, tol=None, progress=False, checkpoint=ck,
                       resume=True)
    assert res.attrs["resumed_from_iteration"] == 1
    np.testing.assert_array_equal(res.flux.values, two.flux.values)
    assert json.loads(res.attrs["parameters"])["init"] == json.loads(two.attrs["parameters"])["init"]


def test_low_rank_warm_start_uses_the_coefficients(small_toy):
    x, y, _ = small_toy
    r = xfusion.fuse(x, y, regularization="lowrank_sobolev", max_iter=20, progress=False)
    warm = xfusion.fuse(x, y, settings=r, init=r, max_iter=1, tol=None, progress=False)
    assert json.loads(warm.attrs["parameters"])["init"]["subspace"] == "coefficients"
    assert r.attrs["backtrack_failures"] == 0 == warm.attrs["backtrack_failures"]  # line searches all succeeded
    # the start is the previous solution: its objective is the previous final objective (float32 round-off)
    np.testing.assert_allclose(warm.objective.values[0], r.objective.values[-1], rtol=1e-5)
    flux_only = xfusion.fuse(x, y, settings=r, init=r.flux, max_iter=1, tol=None, progress=False)
    assert json.loads(flux_only.attrs["parameters"])["init"]["subspace"] == "projected flux"


def test_warm_start_with_unreadable_or_non_finite_parts_is_refused(small_toy, tmp_path):
    """Red team s31: a low-rank result with NaN coefficients (finite flux) was taken as init=, the fit silently
    started cold and recorded "subspace": "coefficients"; a lazily opened result whose store was deleted was
    refused for "NaN/inf values" (its chunks read back as NaN). The same for a lazy observation (was "energy bins
    are not contiguous")."""
    from types import SimpleNamespace

    from xfusion import start
    from xfusion.io import zarr as xz

    x, y, _ = small_toy
    kw = dict(regularization="lowrank", max_iter=3, tol=None, progress=False)
    r = xfusion.fuse(x, y, **kw)
    for name in ("coefficients", "basis"):
        bad = r.copy(deep=True)
        bad[name][0] = np.nan
        with pytest.raises(ValueError, match=f"init= {name} must be finite"):
            xfusion.fuse(x, y, init=bad, **kw)
    # a start no blend makes finite: the default start, and the record says so
    rec = {"subspace": None}
    st = {"coefficients": None, "basis": None, "flux": np.ones((2, 2, 3))}
    w0 = np.ones((2, 2, 1))
    out = start.subspace_start(st, np.ones((1, 3)), 1.0, w0, SimpleNamespace(f=lambda w: np.inf), rec)
    assert out is w0 and rec["subspace"].startswith("default start")
    for obj, path in ((r, tmp_path / "r.zarr"), (x, tmp_path / "x.zarr")):
        xz.write(obj, path)
        lazy = xz.open(path, chunks={})
        shutil.rmtree(path)
        with pytest.raises(ValueError, match="r.zarr' no longer exists.*load" if obj is r else "observation 1.*x.zarr"
                                             "' no longer exists"):
            xfusion.fuse(x, y, init=lazy, **kw) if obj is r else xfusion.fuse(lazy, y, **kw)


def test_baselines_subtract_the_background_and_leave_masked_voxels_out(small_toy):
    """Session 30: on pixel grids upsample_spatial / upsample_spectral spread a known background as source flux and
    the counts of invalid (masked) voxels as flux; the detector-pixel path already handled both. Now both paths
    subtract ``background_rate x exposure`` and fill what only masked voxels cover with the channel's mean."""
    x, y, truth = small_toy
    rng = np.random.default_rng(3)
    for obs, f in ((x, baselines.upsample_spatial), (y, baselines.upsample_spectral)):
        args = (lambda o: (o, y)) if obs is x else (lambda o: (x, o))
        b0 = f(*args(obs))
        ob = obs.copy()
        ob["counts"] = obs.counts + rng.poisson(20.0, obs.counts.shape).astype(np.float32)
        ob["background_rate"] = xr.full_like(obs.counts, 20.0 / float(obs.exposure), dtype=np.float64).assign_attrs(
            units="count s-1")
        assert abs(float(f(*args(ob)).sum()) / float(b0.sum()) - 1) < 0.02  # was +13 % (X) with the background
        om = obs.copy()
        mask = np.ones(obs.counts.shape, bool)
        mask[:, : obs.sizes["y"] // 2] = False
        om["mask"] = (obs.counts.dims, mask)
        om["counts"] = obs.counts.where(mask, 1e4).astype(np.float32)
        bm = f(*args(om)).values
        assert bm.max() < 10 * b0.values.max()  # no junk spread as flux (was 1e-5 vs truth 2e-7 in the masked half)
        k = obs.sizes["y"] // 2 * (truth.sizes["y"] // obs.sizes["y"])  # fused columns under masked voxels only
        np.testing.assert_allclose(bm[:, :k], np.broadcast_to(bm[:, k:].mean(axis=(0, 1)), bm[:, :k].shape),
                                   rtol=1e-5)  # the field's mean spectrum, not junk and not 0
        np.testing.assert_array_equal(bm[:, k:], b0.values[:, k:])  # valid pixels unchanged


def test_lowrank_refuses_channels_the_sharp_spectral_instrument_cannot_see():
    """Session 30 red team: with the sharp-spectral instrument blind (zero area) below 1 keV while the CCD sees it
    (Resolve with its gate valve closed), the low-rank basis (from its spectra) is 0 there: the cube came out ~0 in
    that band (1e-33 against a truth of 5e-4), the CCD's counts were pushed into the other channels (+45 %), silently,
    or the start failed naming nothing. Now refused, naming the instrument, the channels and the fix."""
    e_x, e_y = np.linspace(0.5, 2.0, 16), np.linspace(0.5, 2.0, 151)
    rng = np.random.default_rng(0)
    x = xfusion.observation(rng.poisson(20.0, (16, 16, 15)).astype(float), dims=("x", "y", "energy"),
                            energy_edges=e_x, pixel_size=10.0, exposure=5e4, effective_area=500.0, name="CCD")
    area = np.full(150, 250.0)
    area[:50] = 0.0
    counts = rng.poisson(5.0, (4, 4, 150)).astype(float)
    counts[..., :50] = 0.0
    y = xfusion.observation(counts, dims=("x", "y", "energy"), energy_edges=e_y, pixel_size=40.0, exposure=2e5,
                            effective_area=area, name="calorimeter")
    with pytest.raises(ValueError, match=r"'calorimeter' has no effective area in 50 fused channel\(s\) \(0.505-0.995 "
                                         r"keV\) where 'CCD' sees.*regularization='wavelet2d1d'"):
        xfusion.fuse(x, y, regularization="lowrank", max_iter=3, progress=False)
    r = xfusion.fuse(x, y, regularization="none", max_iter=3, progress=False)  # plain RL takes the band from the CCD
    assert float(r["flux"].values[..., :50].sum()) > 0


def test_one_pixel_psf_at_the_fused_pixel_runs_quietly_and_coarser_is_refused():
    """Session 30 red team: a 1x1 (delta) PSF at the fused pixel size ran with numpy's 'Mean of empty slice' warnings
    (an eagerly computed default), and at the observation's own 30" pixels failed deep inside ("PSF coordinate 'psf_x'
    needs at least 2 pixels") naming no fix. Now quiet, and refused with the reason and the fixes."""
    import warnings

    x, y, _ = xfusion.toy.make("small")
    e = np.append(y["energy_lo"].values, y["energy_hi"].values[-1])

    def with_psf(pix):
        return xfusion.observation(y["counts"].values, dims=("x", "y", "energy"), energy_edges=e, pixel_size=30.0,
                                   exposure=float(y["exposure"]), effective_area=250.0, psf=np.ones((1, 1)),
                                   psf_pixel_size=pix, name="Y delta PSF")

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        # this Y (flat 250 cm2, delta PSF) is not the one the toy's counts were drawn with: the totals check says so
        warnings.filterwarnings("ignore", "the fused cube does not reproduce", RuntimeWarning)
        r = xfusion.fuse(x, with_psf(10.0), regularization="none", max_iter=3, progress=False)
    assert np.isfinite(r["flux"].values).all()
    with pytest.raises(ValueError, match=r"1x1 pixel\(s\) of 30 arcsec: a one-pixel PSF .*psf_pixel_size=10\).*psf=None"):
        xfusion.fuse(x, with_psf(30.0), regularization="none", max_iter=3, progress=False)
