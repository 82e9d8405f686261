"""DaskEMProx (EM + 2D-1D starlet prox on Dask arrays) == EMProx: threads, LocalCluster, checkpoints."""
import json

import numpy as np
import pytest

import xfusion
from xfusion import toy
from xfusion.grid import SPATIAL, SPECTRAL, assign_roles, fusion_grid
from xfusion.likelihood import PoissonLikelihood, PoissonTerm
from xfusion.operators.model import InstrumentModel, build_model
from xfusion.regularizers.sparsity import Wavelet2D1D, _mad, lattice_strides
from xfusion.regularizers.starlet import starlet2d, starlet2d1d
from xfusion.solvers.em import EMProx
from xfusion.checkpoints import ZarrCheckpoint
from xfusion.solvers.loop import run

da = pytest.importorskip("dask.array")
from xfusion.parallel_em import DaskEMProx, _interior_2d  # noqa: E402

N_ITER = 8


def setup(x, y):
    """The in-memory fuse.py setup: models in internal units, data, start level."""
    grid = fusion_grid(x, y)
    xo, yo, _ = assign_roles(x, y)
    mx, my = build_model(grid, xo, SPATIAL), build_model(grid, yo, SPECTRAL)
    scale = float(np.mean(mx.weights))
    mx, my = mx.scaled(scale), my.scaled(scale)
    shape = mx.fused_shape
    xd, yd = xo["counts"].values, yo["counts"].values
    level = float(xd.sum(dtype=np.float64)) / max(float(mx.reduced(np.ones((1, shape[2])))[1].sum()) * shape[0]
                                                  * shape[1], 1e-300)
    return {"grid": grid, "mx": mx, "my": my, "xd": xd, "yd": yd, "level": level,
            "psf": grid["psf"].values if "psf" in grid else None, "factor": grid.attrs["spatial_factor"]}


def numpy_solver(s, reg):
    terms = [PoissonTerm(s["mx"], s["xd"], None, np.float32), PoissonTerm(s["my"], s["yd"], None, np.float32)]
    return EMProx(PoissonLikelihood(terms), reg)


#: slabs of ~97 channels in the "rechunk" layout on the 30x30 field (several slabs, a ragged last one)
SLAB = 30 * 30 * 4 * 97


def dask_solver(s, reg, chunk, client=None, layout="halo"):
    v = s["factor"]
    xd = da.from_array(s["xd"], chunks=(chunk, chunk, -1))
    yd = da.from_array(s["yd"], chunks=(chunk // v, chunk // v, -1))
    return DaskEMProx(xd, yd, s["mx"], s["my"], s["psf"], v, reg, client, layout=layout, slab_bytes=SLAB)


LAYOUTS = pytest.mark.parametrize("layout", ["halo", "rechunk"])


def start(s, solver=None):
    shape = s["mx"].fused_shape
    if solver is None:
        return np.full(shape, s["level"], dtype=np.float32)
    return da.full(shape, s["level"], chunks=solver.chunks, dtype=np.float32)


def iterate(solver, z0, n):
    state = solver.init(z0)
    for _ in range(n):
        state = solver.step(state)
    return state


def rel_diff(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def small():
    x, y, _ = toy.make("small", seed=0)
    return setup(x, y)


@pytest.fixture(scope="module")
def wide():
    """30x30 fused pixels: chunks (15, 15) make a 2x2 block grid whose halos cross blocks."""
    x, y, _ = toy.make("small", seed=0, x={"shape": [30, 30]}, source={"radius_arcsec": 100.0})
    return setup(x, y)


@pytest.fixture(scope="module")
def wide_reference(wide):
    return iterate(numpy_solver(wide, Wavelet2D1D()), start(wide), N_ITER)["z"]


def test_dask_reflect_is_scipy_reflect_and_block_starlet_is_bitwise():
    rng = np.random.default_rng(1)
    z = rng.random((30, 26, 8), dtype=np.float32)
    # dask "reflect" repeats the edge sample: NumPy "symmetric" == SciPy ndimage "reflect"
    zo = da.overlap.overlap(da.from_array(z, chunks=(15, 13, 8)), depth={0: 6, 1: 6, 2: 0},
                            boundary={0: "reflect", 1: "reflect", 2: "none"})
    pad = np.pad(z, ((6, 6), (6, 6), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(zo.blocks[0, 0].compute(), pad[:27, :25])
    np.testing.assert_array_equal(zo.blocks[1, 1].compute(), pad[15:, 13:])
    assert not np.array_equal(pad, np.pad(z, ((6, 6), (6, 6), (0, 0)), mode="reflect"))
    for n2 in (1, 2):
        D = 2 * (2 ** n2 - 1)
        zo = da.overlap.overlap(da.from_array(z, chunks=(15, 13, 8)), depth={0: D, 1: D, 2: 0},
                                boundary={0: "reflect", 1: "reflect", 2: "none"})
        blocks = da.map_blocks(_interior_2d, zo, n2, D, new_axis=0, chunks=((n2 + 1,), (15, 15), (13, 13), (8,)),
                               dtype=np.float32, meta=np.empty((0, 0, 0, 0), np.float32))
        np.testing.assert_array_equal(blocks.compute(), starlet2d(z, n2))


def test_lattice_strides():
    assert lattice_strides((15, 15, 240), 2 ** 18) == (1, 1, 1)
    assert lattice_strides((45, 45, 2400), None) == (1, 1, 1)
    for shape, sample in (((45, 45, 2400), 2 ** 18), ((512, 512, 8192), 2 ** 18), ((30, 30, 240), 5000)):
        st = lattice_strides(shape, sample)
        n = np.prod([len(range(0, a, s)) for a, s in zip(shape, st)])
        assert sample / 4 <= n <= sample
    band = np.random.default_rng(2).standard_normal((30, 30, 240)).astype(np.float32)
    assert lattice_strides(band.shape, 5000) == (2, 2, 11)
    np.testing.assert_equal(_mad(band, 5000), xfusion.regularizers.starlet.mad_sigma(band[::2, ::2, ::11]))


def test_thresholds_identical_to_numpy(wide):
    """Per-band MADs from the gathered lattice == Wavelet2D1D's _mad on the same z_half (sample < band)."""
    reg = Wavelet2D1D(sample=20000)
    solver = dask_solver(wide, reg, 15)
    st = solver.init(start(wide, solver))
    zh = st["z_half"].compute()
    c = starlet2d1d(zh, reg.n2, reg.n1)
    assert lattice_strides(zh.shape, reg.sample) != (1, 1, 1)
    for a, b, null in reg._bands():
        if not null:
            assert st[f"sigma_{a}_{b}"] == _mad(c[a, b], reg.sample)
    # one prox with those thresholds == Wavelet2D1D.prox
    z1 = solver._prox(st)[0].compute()
    np.testing.assert_allclose(z1, np.maximum(reg.prox(zh), 0), rtol=0, atol=1e-6 * np.abs(z1).max())


@LAYOUTS
@pytest.mark.parametrize("chunk", [15, 30])
def test_agrees_with_numpy_threads(wide, wide_reference, chunk, layout):
    solver = dask_solver(wide, Wavelet2D1D(), chunk, layout=layout)
    assert layout == "halo" or len(solver.slabs) > 2
    st = iterate(solver, start(wide, solver), N_ITER)
    assert isinstance(st["z"], da.Array) and st["z"].chunks[:2] == ((chunk,) * (30 // chunk),) * 2
    assert rel_diff(st["z"].compute(), wide_reference) <= 1e-5
    assert all(isinstance(st[k], float) for k in ("data_term", "penalty", "objective"))


@pytest.mark.parametrize("kw", [None, {"k_rule": "sigmoid"}, {"per_band": False, "null_space": "threshold"}],
                         ids=["richardson_lucy", "sigmoid", "paper_rule"])
def test_small_whole_field_variants(small, kw):
    reg_np = None if kw is None else Wavelet2D1D(**kw)
    reg_da = None if kw is None else Wavelet2D1D(**kw)
    ref = iterate(numpy_solver(small, reg_np), start(small), 5)
    solver = dask_solver(small, reg_da, 15)
    st = iterate(solver, start(small, solver), 5)
    assert rel_diff(st["z"].compute(), ref["z"]) <= 1e-5
    assert st["data_term"] == pytest.approx(ref["data_term"], rel=1e-5)  # KL form: differences of ~1e5 terms
    # the MADs of fine bands sit at ~1/50 of max|z|: float32 rounding of z (~3e-7) moves them by ~1e-4
    assert st["penalty"] == pytest.approx(ref["penalty"], rel=1e-3, abs=1e-6)


@LAYOUTS
def test_vignetted_weights_and_models(small, layout):
    """(M, N, L) weights for both instruments; model_x/model_y == the NumPy models."""
    s = dict(small)
    rng = np.random.default_rng(3)
    mods = []
    for m in (s["mx"], s["my"]):
        w = np.broadcast_to(m.weights, m.fused_shape) * rng.uniform(0.7, 1.0, m.fused_shape[:2])[:, :, None]
        mods.append(InstrumentModel(w, m.spectral, m.spatial, m.role, m.fused_shape, m.data_shape))
    s["mx"], s["my"] = mods
    ref = iterate(numpy_solver(s, Wavelet2D1D()), start(s), 3)
    solver = dask_solver(s, Wavelet2D1D(), 15, layout=layout)
    st = iterate(solver, start(s, solver), 3)
    assert rel_diff(st["z"].compute(), ref["z"]) <= 1e-5
    mx_, my_ = solver.model_x(st["z"]), solver.model_y(st["z"])
    assert isinstance(mx_, da.Array) and mx_.shape == s["xd"].shape and my_.shape == s["yd"].shape
    assert rel_diff(mx_.compute(), s["mx"].forward(ref["z"])) <= 1e-5
    assert rel_diff(my_.compute(), s["my"].forward(ref["z"])) <= 1e-5


@LAYOUTS
def test_energy_dependent_psf(small, layout):
    """A PSF band stack interpolated over energy (EnergyDependentSpatial in the NumPy model)."""
    import xarray as xr

    x, y, _ = toy.make("small", seed=0)
    r = np.arange(-12, 13)
    bands = [np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sg ** 2) for sg in (2.0, 3.0, 4.0)]
    c = r * 10.0
    psf = xr.DataArray(np.stack([b / b.sum() for b in bands]), dims=("psf_energy", "psf_x", "psf_y"),
                       coords={"psf_energy": ("psf_energy", [0.6, 0.9, 1.3], {"units": "keV"}),
                               "psf_x": ("psf_x", c, {"units": "arcsec"}), "psf_y": ("psf_y", c, {"units": "arcsec"})})
    ye = xfusion.observation(y.counts, energy_edges=np.append(y.energy_lo.values, y.energy_hi.values[-1]),
                             pixel_size=30.0, exposure=float(y.exposure), effective_area=float(y.effective_area),
                             psf=psf, name="Y energy-dependent PSF")
    s = setup(x, ye)
    s["psf"] = s["grid"]["psf"].transpose("psf_energy", "psf_x", "psf_y").values
    ref = iterate(numpy_solver(s, Wavelet2D1D()), start(s), 3)
    solver = dask_solver(s, Wavelet2D1D(), 15, layout=layout)
    st = iterate(solver, start(s, solver), 3)
    assert len(solver.psf) == 3
    assert rel_diff(st["z"].compute(), ref["z"]) <= 1e-5
    assert rel_diff(solver.model_y(st["z"]).compute(), s["my"].forward(ref["z"])) <= 1e-5


@LAYOUTS
def test_graph_size_constant(wide, layout):
    solver = dask_solver(wide, Wavelet2D1D(), 15, layout=layout)
    st = solver.init(start(wide, solver))
    sizes = {}
    for it in range(1, 21):
        if it in (1, 20):
            sizes[it] = solver.iteration_graph_size(st)
        st = solver.step(st)
    assert sizes[1] == sizes[20] > 0


def test_checkpoint_round_trip(wide, tmp_path):
    path = str(tmp_path / "ckpt.zarr")
    solver = dask_solver(wide, Wavelet2D1D(), 15)
    z0 = start(wide, solver)
    full, hist_full, n, _ = run(solver, z0, max_iter=N_ITER, tol=0, progress=False)
    run(solver, z0, max_iter=4, tol=0, progress=False, checkpoint=ZarrCheckpoint(path), checkpoint_every=4)
    import xarray as xr

    stored = xr.open_zarr(path, consolidated=False, chunks={})
    assert stored["state_z"].data.chunks[:2] == ((15, 15), (15, 15))
    assert set(stored.attrs) >= {"dask_state", "scalars", "manifest", "complete"}
    assert len(json.loads(stored.attrs["manifest"])["arrays"]["state_z"]["sha256"]) == 4  # one digest per block
    seen = []
    resumed, hist, n2, _ = run(solver, z0, max_iter=N_ITER, tol=0, progress=False, checkpoint=ZarrCheckpoint(path),
                               checkpoint_every=4, resume=True, callback=lambda it, st: seen.append(it))
    assert seen == list(range(5, N_ITER + 1))
    assert n == n2 == N_ITER
    np.testing.assert_array_equal(resumed["z"].compute(), full["z"].compute())
    np.testing.assert_allclose(hist["objective"], hist_full["objective"], rtol=1e-12)


@LAYOUTS
def test_local_cluster_agrees_and_checkpoints(wide, wide_reference, tmp_path, layout):
    distributed = pytest.importorskip("distributed")
    path = str(tmp_path / "ckpt.zarr")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        solver = dask_solver(wide, Wavelet2D1D(), 15, client, layout=layout)
        z0 = start(wide, solver)
        run(solver, z0, max_iter=4, tol=0, progress=False, checkpoint=ZarrCheckpoint(path), checkpoint_every=4)
        seen = []
        st, _, n, _ = run(solver, z0, max_iter=N_ITER, tol=0, progress=False, checkpoint=ZarrCheckpoint(path),
                          checkpoint_every=4, resume=True, callback=lambda it, st: seen.append(it))
        assert n == N_ITER and seen == list(range(5, N_ITER + 1)) and solver.iteration_graph_size(st) > 0
        assert rel_diff(client.compute(st["z"]).result(), wide_reference) <= 1e-5


def test_chunks_smaller_than_the_psf_radius_say_what_to_do(small):
    with pytest.raises(ValueError, match="larger chunks"):
        dask_solver(small, Wavelet2D1D(), 6)


def test_rechunk_layout_allows_blocks_smaller_than_the_psf(small):
    """The slab layout needs no PSF halo: 6-pixel blocks (PSF radius > 6) work and agree with NumPy."""
    ref = iterate(numpy_solver(small, Wavelet2D1D()), start(small), 3)
    solver = dask_solver(small, Wavelet2D1D(), 6, layout="rechunk")
    st = iterate(solver, start(small, solver), 3)
    assert rel_diff(st["z"].compute(), ref["z"]) <= 1e-5


def test_unknown_layout(small):
    with pytest.raises(ValueError, match="layout"):
        dask_solver(small, Wavelet2D1D(), 15, layout="slabs")


@LAYOUTS
def test_blockwise_operators_dot_test(wide, layout):
    """<H z, u> == <z, H^T u> for the block-wise X and Y operators (float32 blocks, float64 sums) on
    15-pixel chunks, where halos / slabs cross blocks."""
    solver = dask_solver(wide, None, 15, layout=layout)
    rng = np.random.default_rng(1)
    M, N, L = solver.shape
    z = rng.random((M, N, L))
    zd = da.from_array(z.astype(np.float32), chunks=solver.chunks)
    uy = rng.random(solver.yd.shape)
    ux = rng.random(solver.xd.shape)
    hy = solver.model_y(zd).compute().astype(np.float64)
    aty = (solver._hy_adjoint_raw(da.from_array(uy.astype(np.float32), chunks=solver.ychunks)) * solver.wy
           ).compute().astype(np.float64)
    hx = solver.model_x(zd).compute().astype(np.float64)
    from xfusion.parallel_em import _x_adjoint

    atx = da.map_blocks(_x_adjoint, da.from_array(ux.astype(np.float32), chunks=solver.xd.chunks), solver.wx,
                        solver.spec, chunks=solver.chunks, dtype=np.float32,
                        meta=np.empty((0, 0, 0), np.float32)).compute().astype(np.float64)
    z32 = z.astype(np.float32).astype(np.float64)
    for fwd, adj, u in ((hy, aty, uy.astype(np.float32)), (hx, atx, ux.astype(np.float32))):
        lhs, rhs = float(np.sum(fwd * u)), float(np.sum(z32 * adj))
        assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
    # the Y forward equals the in-memory model
    assert rel_diff(hy, wide["my"].forward(z32)) <= 1e-5
