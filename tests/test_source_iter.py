"""Compact sources run on past the zeroed count (``source_iter``, session 53)."""
import json

import numpy as np
import pytest

import xfusion
from xfusion import scenes, sources, tuning
from xfusion.grid import assign_roles, fusion_grid

# the explicit 2D-1D fit the footprint tests share: no shape prior, no line step, every iteration run
KW = dict(regularization="wavelet2d1d", k=1.0, n_scales_1d=2, null_space="zero", tol=None, shape_prior=None,
          source_lines="none", progress=False)
PEAKS = [[10, 13], [3, 4]]


@pytest.fixture(scope="module")
def small():
    """point_sources/1043 (tuning seed, small): a coronal and a line-free source."""
    x, y, _ = scenes.from_spec(scenes.suite("tune", 48)[43], size="small")
    return x, y


def test_the_rule_runs_on_a_zeroed_count_stopped_early_or_a_thresholded_count_with_bright_sources():
    zeroed = {"regularization": "wavelet2d1d", "k": 2.0, "null_space": "zero", "max_iter": 8}
    peaks = [(3, 4), [10, 13]]
    cores = [[3, 4], [10, 13]]
    assert tuning.run_on(zeroed, 8, peaks) == (8, [tuning.ZERO_MAX_ITER, cores])
    assert tuning.run_on(zeroed, 8, []) == (8, None)  # no compact source
    assert tuning.run_on(dict(zeroed, max_iter=50), 50, peaks) == (50, None)  # thinning's count is the cap
    assert tuning.run_on(zeroed, 9, peaks) == (9, None)  # a count the user set, not thinning's
    assert tuning.run_on({"regularization": "none", "max_iter": 8}, 8, peaks) == (8, None)
    assert tuning.run_on(None, 8, peaks) == (8, None)
    # the thresholded prior (session 59): the field stops at 3/4 of thinning's count where the sources hold
    # at least RUN_ON_SHARE of the counts; they run on to the count
    thr = dict(zeroed, null_space="threshold", max_iter=40)
    s = tuning.RUN_ON_SHARE
    assert tuning.run_on(thr, 40, peaks, s) == (30, [40, cores])
    assert tuning.run_on(thr, 40, peaks, 0.999 * s) == (40, None)  # compact knots holding little: not a source sky
    assert tuning.run_on(thr, 40, [], 0.5) == (40, None)
    assert tuning.run_on(thr, 41, peaks, 0.5) == (41, None)  # the user's count
    assert tuning.run_on(dict(thr, max_iter=1), 1, peaks, 0.5) == (1, None)  # nothing left to stop early
    assert tuning.run_on(dict(thr, max_iter=3), 3, peaks, 0.5) == (2, [3, cores])
    assert tuning.run_on(dict(thr, max_iter=True), True, peaks, 0.5) == (True, None)


def test_only_the_footprints_take_the_longer_run_and_the_total_is_kept(small):
    """The cube equals the 20-iteration fit in the 3x3 footprints and the 6-iteration fit outside the 5x5 around
    each source, bit for bit; in the ring between, the 6-iteration fit scaled so that each source's 5x5 keeps its
    6-iteration total, and so does the cube. The iteration count of the result stays 6 and the parameters record
    what ran on."""
    x, y = small
    a = xfusion.fuse(x, y, max_iter=6, **KW)
    b = xfusion.fuse(x, y, max_iter=20, **KW)
    c = xfusion.fuse(x, y, max_iter=6, source_iter=[20, PEAKS], **KW)
    shape = (x.sizes["x"], x.sizes["y"])
    core, wide = sources.footprint_mask(PEAKS, shape), sources.footprint_mask(PEAKS, shape, half=2)
    fa, fb, fc = (r["flux"].transpose("x", "y", "energy").values.astype(np.float64) for r in (a, b, c))
    np.testing.assert_array_equal(fc[core], fb[core])
    np.testing.assert_array_equal(fc[~wide], fa[~wide])
    assert np.abs(fa[core] - fb[core]).max() > 1e-3 * np.abs(fb).max()  # the run on changed them
    for p in PEAKS:  # each source's 5x5: its total kept, its ring a scaled copy
        w = sources.footprint_mask([p], shape, half=2)
        ring = w & ~sources.footprint_mask([p], shape)
        assert fc[w].sum() == pytest.approx(fa[w].sum(), rel=1e-5)
        s = fc[ring].sum() / fa[ring].sum()
        np.testing.assert_allclose(fc[ring], s * fa[ring], rtol=1e-5, atol=1e-6 * np.abs(fa).max())
    assert fc.sum() == pytest.approx(fa.sum(), rel=1e-6)
    assert int(c.attrs["iterations"]) == 6
    assert json.loads(c.attrs["parameters"])["source_iter"] == [20, PEAKS]
    assert xfusion.settings_of(c)["source_iter"] == [20, PEAKS]
    # at or below the count there is nothing to run on; "none" and None are off
    for v in ([6, PEAKS], [3, PEAKS], "none", None, "auto"):
        np.testing.assert_array_equal(xfusion.fuse(x, y, max_iter=6, source_iter=v, **KW)["flux"].values,
                                      a["flux"].values)


def test_run_on_on_dask_blocks_agrees_with_memory(small):
    """Dask-backed counts in 12x12-pixel blocks, a footprint across a block edge (rows 11-13)."""
    x, y = small
    f = int(fusion_grid(x, y).attrs["spatial_factor"])
    peaks = [[12, 13], [3, 4]]
    xd = x.assign(counts=x.counts.chunk({"x": 12, "y": 12, "energy": -1}))
    yd = y.assign(counts=y.counts.chunk({"x": 12 // f, "y": 12 // f, "energy": -1}))
    lazy = xfusion.fuse(xd, yd, chunks=(12, 12), max_iter=5, source_iter=[12, peaks], **KW)
    assert lazy.attrs["backend"] == "dask"
    ref = xfusion.fuse(x, y, max_iter=5, source_iter=[12, peaks], **KW)
    off = xfusion.fuse(x, y, max_iter=5, **KW)
    b = ref["flux"].values
    np.testing.assert_allclose(lazy["flux"].values, b, rtol=0, atol=1e-4 * float(np.abs(b).max()))
    assert np.abs(off["flux"].values - b).max() > 1e-2 * float(np.abs(b).max())


def test_a_resumed_run_runs_on_again_to_the_same_cube(small, tmp_path):
    """The run on is not checkpointed: resuming a finished run recomputes it from the checkpoint's last state."""
    x, y = small
    kw = dict(KW, max_iter=6, source_iter=[15, PEAKS], checkpoint=tmp_path / "c.zarr", checkpoint_every=4)
    r0 = xfusion.fuse(x, y, **kw)
    r1 = xfusion.fuse(x, y, resume=True, **kw)
    np.testing.assert_array_equal(r1["flux"].values, r0["flux"].values)


def test_bad_source_iter_values_are_refused(small):
    x, y = small
    with pytest.raises(ValueError, match="outside the fused grid"):
        xfusion.fuse(x, y, max_iter=2, source_iter=[10, [[3, 99]]], **KW)
    for bad in ("yes", 50, [50], [-1, PEAKS], [50, [[1, 2, 3]]], [2.5, PEAKS]):
        with pytest.raises(ValueError, match="source_iter"):
            xfusion.fuse(x, y, max_iter=2, source_iter=bad, **KW)
    with pytest.raises(TypeError, match="source_iter"):  # an option of the 2D-1D prior only
        xfusion.fuse(x, y, regularization="none", max_iter=2, source_iter=[10, PEAKS], progress=False)


def test_the_default_runs_on_at_the_compact_sources_of_a_full_size_sky():
    """point_sources/1018 (tuning seed, full size; session 53: the zeroed prior at 8 iterations, 4 compact sources):
    the default records [50, peaks], the peaks those of xfusion.sources.compact_peaks; the same fit without the run
    on differs only in the footprints (that a default's settings give its cube again: the small test below)."""
    x, y, _ = scenes.from_spec(scenes.suite("tune", 96)[18])
    r = xfusion.fuse(x, y, progress=False)
    p = json.loads(r.attrs["parameters"])
    peaks = sources.compact_peaks(assign_roles(x, y)[0])
    assert p["null_space"] == "zero" and p["max_iter"] < tuning.ZERO_MAX_ITER and len(peaks) >= 2
    assert p["source_iter"] == [tuning.ZERO_MAX_ITER, peaks]
    off = xfusion.fuse(x, y, progress=False, settings=r, source_iter="none")
    assert json.loads(off.attrs["parameters"])["source_iter"] is None
    fr, fo = (a["flux"].transpose("x", "y", "energy").values.astype(np.float64) for a in (r, off))
    # per pixel, the change of its spectrum relative to its total
    change = np.abs(fr - fo).sum(-1) / np.maximum(np.abs(fo).sum(-1), 1e-30)
    m = sources.footprint_mask(peaks, change.shape)
    assert np.median(change[m]) > 0.02
    # outside the footprints only the shape prior's neighbourhood shapes carry the change (applied after the blend)
    assert np.median(change[~sources.footprint_mask(peaks, change.shape, half=2)]) < 1e-3


def test_excess_share_counts_what_sources_hold_above_their_ring():
    """On a flat image every 3x3 equals 9/16 of its ring's counts, so the share is 0, also at an edge or a corner;
    a point of A counts on it is A over the image total; no peak or an empty image gives 0."""
    flat = np.full((20, 20), 7.0)
    assert sources.excess_share(flat, [[5, 5], [0, 0], [19, 10]]) == pytest.approx(0.0, abs=1e-12)
    img = flat.copy()
    img[5, 5] += 300.0
    img[12, 14] += 100.0
    assert sources.excess_share(img, [[5, 5], [12, 14]]) == pytest.approx(400.0 / img.sum(), rel=1e-12)
    assert sources.excess_share(img, [[5, 5]]) == pytest.approx(300.0 / img.sum(), rel=1e-12)
    img[7, 5] += 160.0  # a neighbour in the ring is taken as the surroundings: 9/16 of it comes off
    assert sources.excess_share(img, [[5, 5]]) == pytest.approx((300.0 - 90.0) / img.sum(), rel=1e-12)
    assert sources.excess_share(img, []) == 0.0 and sources.excess_share(np.zeros((5, 5)), [[2, 2]]) == 0.0


def test_excess_share_separates_a_point_source_sky_from_a_mixed_one():
    """Tuning seeds, small (session 59): the compact sources of point_sources/1043 hold 8 % of the sharp-spatial
    counts above their rings, the compact knots of mixed/1039 0.5 %; the gate of the run-on rule lies between."""
    shares = []
    for i in (43, 39):
        x, y, _ = scenes.from_spec(scenes.suite("tune", 48)[i], size="small")
        sharp = assign_roles(x, y)[0]
        img = sharp["counts"].sum("energy").transpose("x", "y").values
        shares.append(sources.excess_share(img, sources.compact_peaks(sharp)))
    assert shares[0] > 0.05 and 0 < shares[1] < 0.01


def test_the_default_stops_a_thresholded_field_early_where_sources_hold_enough_counts():
    """Tuning seeds, small (session 59): on point_sources/1038 thinning chooses the thresholded prior with a count
    N and its compact sources hold over RUN_ON_SHARE of the counts: the field stops at round(3 N / 4) while the
    footprints run on to N, recorded so that the settings give the same cube; with ``source_iter="none"`` and the
    count N the field takes the whole count (mixed/1039's knots, below the share: the test above)."""
    x, y, _ = scenes.from_spec(scenes.suite("tune", 48)[38], size="small")
    r = xfusion.fuse(x, y, progress=False)
    p = json.loads(r.attrs["parameters"])
    n = p["auto_tuning"]["choice"]["max_iter"]
    peaks, share = sources.peaks_and_share(assign_roles(x, y)[0])
    assert p["null_space"] == "threshold" and share >= tuning.RUN_ON_SHARE and peaks
    assert p["max_iter"] == round(tuning.RUN_ON_FRACTION * n) < n and p["source_iter"] == [n, peaks]
    np.testing.assert_array_equal(xfusion.fuse(x, y, progress=False, settings=r)["flux"].values, r["flux"].values)
    whole = xfusion.fuse(x, y, progress=False, settings=r, source_iter="none", max_iter=n)  # as docs/checking.rst
    q = json.loads(whole.attrs["parameters"])
    assert q["max_iter"] == n and q["source_iter"] is None
    fr, fw = (a["flux"].transpose("x", "y", "energy").values.astype(np.float64) for a in (r, whole))
    core = sources.footprint_mask(peaks, fr.shape[:2])
    outside = ~sources.footprint_mask(peaks, fr.shape[:2], half=2)
    assert np.abs(fr[outside] - fw[outside]).max() > 1e-3 * np.abs(fw).max()  # the field stopped earlier
    assert fr.sum() == pytest.approx(fw.sum(), rel=0.01)
    assert np.abs(fr[core] - fw[core]).max() < np.abs(fr[outside] - fw[outside]).max()  # the cores took the count
