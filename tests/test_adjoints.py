"""Dot tests with N(0,1) vectors for every linear operator: elementary, composed, stacked, reduced
(subspace) and block-wise (Dask, tiny uneven chunks), float32 and float64.

Tolerances: 1e-10 (float64) and 1e-4 (float32). A one-pixel-shifted adjoint scores O(0.1-1) with N(0,1)
vectors (shown below with deliberately wrong adjoints), so these tolerances reject it by 3+ orders of
magnitude in float32 too.
"""
import numpy as np
import pytest
import scipy.sparse
import xarray as xr

from xfusion import toy
from xfusion.grid import SPATIAL, SPECTRAL, fusion_grid
from xfusion.operators import Chain, Convolve1D, Convolve2D, Rebin, ResponseMatrix, Scale, SpatialMatrix, build_model
from xfusion.operators.area import AreaMap
from xfusion.operators.dottest import dottest
from xfusion.operators.footprint import Footprint
from xfusion.operators.model import InstrumentModel
from xfusion.operators.psf import EnergyDependentSpatial, StackedSpatial, band_weights
from xfusion.regularizers.sobolev import Gradient2D

TOL = {np.float64: 1e-10, np.float32: 1e-4}
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])

rng = np.random.default_rng(11)
K2 = rng.random((7, 5))  # asymmetric, odd x odd
K2 /= K2.sum()
K2b = rng.random((5, 3))
K2b /= K2b.sum()
K1 = rng.random(9)
K1 /= K1.sum()
KS = np.outer([0.1, 0.5, 1.0, 0.3, 0.05], [0.2, 1.0, 0.4])  # separable (rank 1), asymmetric on both axes
ENERGIES = np.linspace(0.5, 1.4, 12)


class Subspace:
    """The reduced model as a linear operator on coefficients: W (M, N, r) -> spatial(W) @ V_eff."""

    def __init__(self, spatial, v, in_hw):
        self.spatial, self.v, self.in_hw = spatial, np.asarray(v), tuple(in_hw)

    def forward(self, w):
        a = w if self.spatial is None else self.spatial.forward(w)
        return a @ self.v.astype(w.dtype)

    def adjoint(self, g):
        q = g @ self.v.T.astype(g.dtype)
        return q if self.spatial is None else self.spatial.adjoint(q)


OPS = {
    "scale_energy": (lambda: Scale(rng.random(12) + 0.5), (6, 4, 12)),
    "scale_vignetted": (lambda: Scale(rng.random((6, 4, 12))), (6, 4, 12)),
    # compact vignetted area: a (3, 2) pixel table at 5 energy nodes, 2x2 fused pixels each, 12 channels
    "scale_area_map": (lambda: Scale(AreaMap(rng.random((3, 2, 5)), [0.6, 0.8, 0.9, 1.2, 1.3], ENERGIES, 2, 3.0)),
                       (6, 4, 12)),
    "rebin_space": (lambda: Rebin((3, 2, 1)), (6, 4, 12)),
    "rebin_energy": (lambda: Rebin((1, 1, 4)), (6, 4, 12)),
    "rebin_all": (lambda: Rebin((2, 2, 3)), (6, 4, 12)),
    "conv1d": (lambda: Convolve1D(K1, 13), (5, 4, 13)),
    "conv1d_long_kernel": (lambda: Convolve1D(K1, 5), (3, 2, 5)),
    "response_matrix": (lambda: ResponseMatrix(rng.random((12, 5))), (4, 3, 12)),
    "conv2d": (lambda: Convolve2D(K2, (11, 8)), (11, 8, 6)),
    "conv2d_kernel_larger_than_field": (lambda: Convolve2D(K2, (4, 3)), (4, 3, 2)),
    "spatial_matrix": (lambda: SpatialMatrix.from_psf(K2, (9, 6), 3), (9, 6, 7)),
    "spatial_matrix_separable": (lambda: SpatialMatrix.from_psf(KS, (9, 6), 3), (9, 6, 7)),
    "energy_dependent_conv": (lambda: EnergyDependentSpatial(
        [Convolve2D(K2, (9, 6)), Convolve2D(K2b, (9, 6))], band_weights([0.7, 1.1], ENERGIES)), (9, 6, 12)),
    "energy_dependent_matrix": (lambda: EnergyDependentSpatial(
        [SpatialMatrix.from_psf(K2, (9, 6), 3), SpatialMatrix.from_psf(K2b, (9, 6), 3)],
        band_weights([0.7, 1.1], ENERGIES)), (9, 6, 12)),
    "stacked_spatial": (lambda: StackedSpatial([SpatialMatrix.from_psf(K2, (9, 6), 3),
                                                SpatialMatrix.from_psf(K2b, (9, 6), 3)]), (9, 6, 4)),
    "stacked_conv": (lambda: StackedSpatial([Convolve2D(K2, (9, 6)), Convolve2D(K2b, (9, 6))]), (9, 6, 4)),
    "chain_conv_rebin": (lambda: Chain([Scale(rng.random(12) + 0.5), Convolve2D(K2, (9, 6)), Rebin((3, 3, 1))]),
                         (9, 6, 12)),
    "chain_spectral": (lambda: Chain([Convolve1D(K1, 12), Rebin((1, 1, 4))]), (3, 3, 12)),
    # issue 18 (session 7): a separable PSF as two 1D Toeplitz products; instrument models with the per-energy
    # weights folded into the response matrix, or applied after the spatial operator (on the data)
    "conv2d_separable": (lambda: Convolve2D(KS, (11, 8)), (11, 8, 6)),
    "model_folded_response": (lambda: InstrumentModel(rng.random(12) + 0.5, ResponseMatrix(rng.random((12, 5))),
                                                      Convolve2D(KS, (9, 6)), (9, 6, 12), (9, 6, 5)), (9, 6, 12)),
    "model_weights_after_spatial": (lambda: InstrumentModel(rng.random(12) + 0.5, None, SpatialMatrix.from_psf(
        K2, (9, 6), 3), (9, 6, 12), (3, 2, 12)), (9, 6, 12)),
    "gradient2d": (lambda: Gradient2D(), (7, 5, 3)),
}


@pytest.mark.parametrize("name", OPS)
@DTYPES
def test_elementary_and_composed(name, dtype):
    make, shape = OPS[name]
    op = make()
    for seed in (0, 1):
        assert dottest(op, shape, dtype, seed=seed) <= TOL[dtype]


@DTYPES
def test_separable_psf_and_reordered_weights_are_the_same_operators(dtype):
    """Issue 18 (session 7): the separable path of Convolve2D equals its FFTs, and the instrument models with the
    weights folded into the response matrix or moved after the spatial operator equal ``spatial(spectral(w Z))``
    written as a plain chain, to float round-off; a non-separable kernel keeps the FFTs."""
    from xfusion.operators.psf import _conv_valid

    assert Convolve2D(K2, (11, 8)).separable is None
    r = np.random.default_rng(4)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for shape in ((11, 8, 6), (37, 21, 3)):  # one partial Toeplitz block; several (BAND_ROWS = 16) and a partial one
        conv = Convolve2D(KS, shape[:2])
        assert conv.separable is not None
        z = r.standard_normal(shape).astype(dtype)
        for flipped, got in ((False, conv.forward(z)), (True, conv.adjoint(z))):
            ref = conv._padded(lambda a: _conv_valid(a, conv.kernel, flipped), z)
            assert got.dtype == dtype
            np.testing.assert_allclose(got, ref, rtol=0, atol=rtol * np.abs(ref).max())
    w, R = r.random(12) + 0.5, ResponseMatrix(r.random((12, 5)))
    cases = [(InstrumentModel(w, R, Convolve2D(KS, (9, 6)), (9, 6, 12), (9, 6, 5)),
              [Scale(w), R, Convolve2D(KS, (9, 6))], ["ResponseMatrix", "Convolve2D"]),
             (InstrumentModel(w, None, Rebin((3, 3, 1)), (9, 6, 12), (3, 2, 12)), [Scale(w), Rebin((3, 3, 1))],
              ["Rebin", "Scale"]),
             (InstrumentModel(w, Convolve1D(K1, 12), None, (9, 6, 12), (9, 6, 12)), [Scale(w), Convolve1D(K1, 12)],
              ["Scale", "Convolve1D"])]
    Rs = ResponseMatrix(scipy.sparse.random(12, 5, density=0.4, random_state=1, format="csr"))  # a sparse RMF folds too
    cases.append((InstrumentModel(w, Rs, None, (9, 6, 12), (9, 6, 5)), [Scale(w), Rs], ["ResponseMatrix"]))
    z = r.random((9, 6, 12)).astype(dtype)
    for model, plain, names in cases:
        assert [type(o).__name__ for o in model.ops] == names
        ref, u = Chain(plain).forward(z), r.random(model.data_shape).astype(dtype)
        np.testing.assert_allclose(model.forward(z), ref, rtol=rtol, atol=0)
        np.testing.assert_allclose(model.adjoint(u), Chain(plain).adjoint(u), rtol=rtol, atol=0)


def _tile_model(r, hw, box, n_pixels, L, post=False):
    """A tile-like model on an ``hw`` field: a dense footprint x PSF (n_pixels, M N) non-zero only on the fused
    pixels of ``box`` (x0, x1, y0, y1), random sparsity inside, so that it starts with a Gather and a
    BlockFootprint; per-energy weights, and per-pixel factors (``post``) if asked."""
    F = np.zeros((n_pixels,) + tuple(hw))
    x0, x1, y0, y1 = box
    F[:, x0:x1, y0:y1] = r.random((n_pixels, x1 - x0, y1 - y0)) * (r.random((n_pixels, x1 - x0, y1 - y0)) < 0.6)
    p = r.random((n_pixels, L)) + 0.5 if post else None
    return InstrumentModel(r.random(L) + 0.5, None, Footprint(F.reshape(n_pixels, -1), hw), hw + (L,),
                           (n_pixels, L), p)


def _group_case(r):
    """Two response-first models (one with a separable PSF after its response), three tile-like models (one with
    per-pixel factors) on a 12 x 10 field of 12 channels, and a rebinned model that shares nothing."""
    hw, L = (12, 10), 12
    return [InstrumentModel(r.random(L) + 0.5, ResponseMatrix(r.random((L, 5))), None, hw + (L,), hw + (5,)),
            _tile_model(r, hw, (0, 7, 0, 6), 4, L),
            InstrumentModel(r.random(L) + 0.5, ResponseMatrix(r.random((L, 3))), Convolve2D(KS, hw), hw + (L,),
                            hw + (3,)),
            _tile_model(r, hw, (4, 12, 3, 10), 5, L, post=True),
            InstrumentModel(r.random(L) + 0.5, None, Rebin((3, 2, 1)), hw + (L,), (4, 5, L)),
            _tile_model(r, hw, (2, 9, 5, 10), 3, L)]


@DTYPES
def test_groups_of_models_are_their_members_stacked(dtype):
    """Issue 18 (session 8): models sharing their first operator, evaluated together
    (:mod:`xfusion.operators.group`): a SharedResponse (one product with the stacked response matrices) and a
    SharedGather (one gather of the union of the pixels the tiles see, one block-sparse product of the stacked
    footprints, one scatter). The group's forward is the list of the members' forwards and its adjoint the sum
    of their adjoints (float round-off), and the stacked operator passes the dot test with N(0,1) vectors. The
    groups run in memory (NumPy); the Dask backend applies the members one by one (see test_mosaic)."""
    from xfusion.operators.group import SharedGather, SharedResponse, group_models

    r = np.random.default_rng(8)
    models = _group_case(r)
    groups = group_models(models)
    assert [(type(g).__name__, idx) for g, idx in groups] == [
        ("SharedResponse", [0, 2]), ("SharedGather", [1, 3, 5]), ("NoneType", [4])]
    assert isinstance(groups[0][0], SharedResponse) and isinstance(groups[1][0], SharedGather)
    # the union of the pixels the tiles see, each once
    cols = np.concatenate([models[i].ops[0].columns for i in (1, 3, 5)])
    assert sorted(groups[1][0].columns.tolist()) == np.unique(cols).tolist()
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for g, idx in groups[:2]:
        for seed in (0, 1):
            q = np.random.default_rng(seed)
            z = q.standard_normal(models[0].fused_shape).astype(dtype)
            us = [q.standard_normal(models[i].data_shape).astype(dtype) for i in idx]
            fz, aty = g.forward(z), g.adjoint(us)
            assert [f.shape for f in fz] == [models[i].data_shape for i in idx] and aty.shape == z.shape
            assert all(f.dtype == dtype for f in fz) and aty.dtype == dtype
            for f, i in zip(fz, idx):
                ref = models[i].forward(z)
                np.testing.assert_allclose(f, ref, rtol=0, atol=rtol * np.abs(ref).max())
            ref = sum(models[i].adjoint(u) for i, u in zip(idx, us))
            np.testing.assert_allclose(aty, ref, rtol=0, atol=rtol * np.abs(ref).max())
            lhs = sum(float(np.sum(f.astype(np.float64) * u)) for f, u in zip(fz, us))
            rhs = float(np.sum(z.astype(np.float64) * aty))
            assert abs(lhs - rhs) <= TOL[dtype] * max(abs(lhs), abs(rhs))
    # a single model of a kind, or models on different cubes, are not grouped
    assert [idx for _, idx in group_models(models[:2])] == [[0], [1]]
    other = InstrumentModel(np.ones(6), ResponseMatrix(r.random((6, 2))), None, (12, 10, 6), (12, 10, 2))
    assert [idx for _, idx in group_models([models[0], other])] == [[0], [1]]


@pytest.fixture(scope="module")
def models():
    """Instrument models of the toy kinds: kernel + rebin (small), RMF + King PSF + shaped ARFs (realistic),
    no rebinning (Convolve1D, FFT; gaussian_1kev) and an energy-dependent PSF."""
    out = {}
    cases = {"small": {}, "realistic_rebin": dict(x={"shape": [15, 15], "n_channels": 12}, y={"n_channels": 240}),
             "gaussian_1kev": dict(x={"shape": [9, 9], "n_channels": 60}, y={"n_channels": 60})}
    for name, over in cases.items():
        x, y, _ = toy.make(name, **over)
        g = fusion_grid(x, y)
        out[name] = (build_model(g, x, SPATIAL), build_model(g, y, SPECTRAL))
    x, y, _ = toy.make("small")
    c = np.arange(-3, 4) * 10.0
    k = [np.pad(K2, ((0, 0), (1, 1))), np.random.default_rng(3).random((7, 7))]
    k = [kk / kk.sum() for kk in k]
    psf = xr.DataArray(np.stack(k), dims=("psf_energy", "psf_x", "psf_y"),
                       coords={"psf_energy": ("psf_energy", [0.7, 1.2], {"units": "keV"}),
                               "psf_x": ("psf_x", c, {"units": "arcsec"}), "psf_y": ("psf_y", c, {"units": "arcsec"})})
    ye = y.drop_vars(["psf", "psf_x", "psf_y"]).assign(psf=psf)
    g = fusion_grid(x, ye)
    out["energy_psf"] = (build_model(g, x, SPATIAL), build_model(g, ye, SPECTRAL))
    return out


MODEL_NAMES = ["small", "realistic_rebin", "gaussian_1kev", "energy_psf"]


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("role", [0, 1], ids=["X", "Y"])
@DTYPES
def test_instrument_models(models, name, role, dtype):
    m = models[name][role]
    assert dottest(m, m.fused_shape, dtype) <= TOL[dtype]
    assert dottest(m.scaled(7.5), m.fused_shape, dtype, seed=3) <= TOL[dtype]


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("role", [0, 1], ids=["X", "Y"])
@DTYPES
def test_reduced_subspace_models(models, name, role, dtype):
    """W -> spatial(W) @ V_eff (incl. the stacked energy-dependent form) is linear with the right adjoint and
    equals the full model of W @ basis."""
    m = models[name][role]
    M, N, L = m.fused_shape
    basis = np.random.default_rng(5).standard_normal((4, L))
    sp, v = m.reduced(basis)
    op = Subspace(sp, v, (M, N))
    assert dottest(op, (M, N, 4), dtype) <= TOL[dtype]
    w = np.random.default_rng(6).standard_normal((M, N, 4))
    full = m.forward(w @ basis)
    np.testing.assert_allclose(op.forward(w), full, rtol=1e-9, atol=1e-9 * np.abs(full).max())


# ----------------------------------------------------------------------------- wrong adjoints are caught
class Shifted:
    """A deliberately wrong adjoint: the true one rolled by one pixel along ``axis``."""

    def __init__(self, op, axis=0):
        self.op, self.axis = op, axis

    def forward(self, x):
        return self.op.forward(x)

    def adjoint(self, y):
        return np.roll(self.op.adjoint(y), 1, axis=self.axis)


@pytest.mark.parametrize("name,axis", [("conv2d", 0), ("conv2d", 1), ("conv2d_separable", 0), ("conv2d_separable", 1),
                                       ("spatial_matrix", 0), ("stacked_spatial", 1),
                                       ("rebin_space", 0), ("conv1d", 2), ("response_matrix", 2),
                                       ("energy_dependent_conv", 0)])
@DTYPES
def test_one_pixel_shifted_adjoint_fails(name, axis, dtype):
    make, shape = OPS[name]
    op = make()
    scores = [dottest(Shifted(op, axis), shape, dtype, seed=s) for s in range(3)]
    assert min(scores) > 100 * TOL[np.float32], scores  # >= 1e-2: rejected by both tolerances
    assert max(dottest(op, shape, dtype, seed=s) for s in range(3)) <= TOL[dtype]


def test_uniform_vectors_would_miss_the_shift():
    """Why N(0,1): with U(0,1) vectors the same wrong adjoint scores ~1e-4-1e-2 (near or below the float32
    tolerance on smooth kernels), with N(0,1) it scores O(0.1-1)."""
    op = Shifted(OPS["stacked_spatial"][0](), 1)
    r = np.random.default_rng(0)
    x = r.random((9, 6, 4))
    y = r.random(op.forward(x).shape)
    lhs, rhs = np.sum(op.forward(x) * y), np.sum(x * op.adjoint(y))
    uniform = abs(lhs - rhs) / abs(lhs)
    normal = dottest(op, (9, 6, 4))
    assert normal > 30 * uniform


def test_dottest_checks_the_adjoint_shape():
    class Bad:
        def forward(self, x):
            return x

        def adjoint(self, y):
            return y[:-1]

    with pytest.raises(AssertionError, match="adjoint returned shape"):
        dottest(Bad(), (3, 2, 2))


@DTYPES
@pytest.mark.parametrize("psf", [False, True])
def test_footprint_adjoint(dtype, psf):
    """Detector-pixel footprint (rotated 17 deg, offset by a fraction of a pixel), bare (sparse) and after
    a PSF (dense F B), with a one-pixel-shifted adjoint rejected (issue 15)."""
    from xfusion.operators.footprint import Footprint, footprint_matrix

    x = (np.arange(12) - 5.5) * 4.0
    g = np.array([-10.0, 0.0, 10.0])
    dx, dy = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    op = Footprint(footprint_matrix(x, x, 4.0, dx, dy, 10.0, 17.0, (1.3, -0.7)), (12, 12))
    if psf:
        op = op.with_psf(Convolve2D(np.outer([1.0, 3, 1], [1.0, 2, 4, 2, 1]) / 45.0, (12, 12)))
    assert op.depth == 0
    assert dottest(op, (12, 12, 5), dtype) <= TOL[dtype]
    assert min(dottest(Shifted(op, 0), (12, 12, 5), dtype, seed=s) for s in range(3)) > 100 * TOL[np.float32]
    if psf:  # a tile in a corner of the field: the dense F B keeps only the columns it sees (issue 18)
        tile = Footprint(footprint_matrix(x, x, 4.0, dx, dy, 10.0, 17.0, (-12.0, -12.0)), (12, 12))
        tile = tile.with_psf(Convolve2D(np.outer([1.0, 3, 1], [1.0, 2, 4, 2, 1]) / 45.0, (12, 12)))
        assert tile.columns is not None and tile.columns.size < 100
        assert dottest(tile, (12, 12, 5), dtype) <= TOL[dtype]
        z = np.random.default_rng(1).random((12, 12, 5))
        assert np.allclose(tile.forward(z), tile.matrix @ z.reshape(144, 5), rtol=1e-6, atol=0)
        # restricted to the pixels it sees (issue 18): gather, footprint on those only, then the per-energy area
        # weights on the tile's (P, L) data; the same operator to float round-off, each part and the model adjoint
        from xfusion.operators.model import InstrumentModel

        gather, rest = tile.restricted()
        assert dottest(gather, (12, 12, 5), dtype) <= TOL[dtype]
        # block-sparse F B on the gathered pixels (boxes of pixels, each with the rows that see it): same matrix;
        # here one box is cheapest (9 rows), so blocks of any partition are checked too, rows left out included
        from xfusion.operators.footprint import BlockFootprint

        n = gather.columns.size
        np.testing.assert_array_equal(rest.matrix, tile.matrix[:, gather.columns])
        part = BlockFootprint(rest.matrix, [0, 7, 30, 31, 55])
        assert len(part.blocks) == 5 and sum(r.size * (e - a) for a, e, r, _, _ in part.blocks) < 9 * n
        zz = np.random.default_rng(5).standard_normal((n, 1, 5)).astype(dtype)
        uu = np.random.default_rng(6).standard_normal((9, 5)).astype(dtype)
        atol = 1e-5 if dtype == np.float32 else 1e-12
        for op in (rest, part):
            np.testing.assert_array_equal(op.matrix, tile.matrix[:, gather.columns])
            np.testing.assert_allclose(op.forward(zz), rest.matrix @ zz[:, 0], rtol=0, atol=atol)
            np.testing.assert_allclose(op.adjoint(uu)[:, 0], rest.matrix.T @ uu, rtol=0, atol=atol)
            assert dottest(op, (n, 1, 5), dtype) <= TOL[dtype]
        w = np.linspace(1.0, 2.0, 5)
        model = InstrumentModel(w, None, tile, (12, 12, 5), (9, 5))
        assert [type(o).__name__ for o in model.ops] == ["Gather", "BlockFootprint", "Scale"]
        whole = Chain([Scale(w), tile])
        zz, u = z.astype(dtype), np.random.default_rng(2).random((9, 5)).astype(dtype)
        rtol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(model.forward(zz), whole.forward(zz), rtol=rtol, atol=0)
        np.testing.assert_allclose(model.adjoint(u), whole.adjoint(u), rtol=rtol, atol=0)
        assert dottest(model, (12, 12, 5), dtype) <= TOL[dtype]


# ----------------------------------------------------------------------------- block-wise (Dask)
da = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def small_models():
    x, y, _ = toy.make("small")
    g = fusion_grid(x, y)
    mx, my = build_model(g, x, SPATIAL), build_model(g, y, SPECTRAL)
    return x, y, mx, my


#: operators with no block form (whole-field or subspace-only operators): refused by the Dask backend
NO_BLOCK_FORM = {"stacked_spatial", "stacked_conv", "gradient2d"}


def _uneven(n, v):
    """Uneven chunks of an axis of n pixels, multiples of v: 1, 2, 1, 2, ... units of v (some smaller than a
    PSF radius, so the backend merges them for the halo)."""
    out, units, k = [], n // v, 0
    while units:
        c = min(1 + k % 2, units)
        out.append(c * v)
        units, k = units - c, k + 1
    return tuple(out)


@pytest.mark.parametrize("name", [n for n in OPS if n not in NO_BLOCK_FORM])
@DTYPES
def test_blockwise_dask_equals_numpy_and_dot_test(name, dtype):
    """Every operator with a block form on a Dask cube of tiny uneven chunks (kernels larger than a chunk,
    rebinning changing the block shape): forward and adjoint equal the in-memory ones, and the dot test holds
    for the block-wise pair (float64 sums)."""
    from xfusion.backends.blockwise import DaskBackend
    from xfusion.operators import blocks

    make, shape = OPS[name]
    op = make()
    v = blocks.factor(op)
    chunks = (_uneven(shape[0], v[0]), _uneven(shape[1], v[1]), (shape[2],))
    _dask_pair_check(DaskBackend(chunks), op, chunks, None, dtype, 7)


def _dask_pair_check(B, op, chunks, data_chunks, dtype, seed):
    """``op``'s forward and adjoint on backend ``B`` (a Dask cube chunked ``chunks``; data chunked ``data_chunks``,
    None: like the forward's output) equal the in-memory ones, and the dot test holds (float64 sums). Returns the
    forward and adjoint arrays' chunks."""
    r = np.random.default_rng(seed)
    x = r.standard_normal(tuple(sum(c) for c in chunks)).astype(dtype)
    fx = B.forward(op, da.from_array(x, chunks=chunks))
    y = r.standard_normal(fx.shape).astype(dtype)
    aty = B.adjoint(op, da.from_array(y, chunks=data_chunks or fx.chunks))
    out = (fx.chunks, aty.chunks)
    fx, aty = fx.compute(), aty.compute()
    assert fx.dtype == aty.dtype == dtype and aty.shape == x.shape
    for got, ref in ((fx, op.forward(x)), (aty, op.adjoint(y))):
        np.testing.assert_allclose(got, ref, rtol=0, atol=10 * TOL[dtype] * np.abs(ref).max())
    lhs = float(np.sum(fx.astype(np.float64) * y))
    rhs = float(np.sum(x.astype(np.float64) * aty))
    assert abs(lhs - rhs) <= TOL[dtype] * max(abs(lhs), abs(rhs))
    return out


def _whole_field_ops():
    """Whole-field detector maps as models hold them: a bare sparse footprint, a dense F B of a tile in a corner
    (it keeps the columns it sees), the tile's gather + block-sparse F B, the large-field form (PSF convolution,
    then the sparse footprint), each followed by weights over energy and per detector pixel (a model's ``rest``)."""
    from xfusion.operators.area import Scale
    from xfusion.operators.footprint import Footprint, footprint_matrix

    x = (np.arange(12) - 5.5) * 4.0
    dx, dy = np.array([-6.0, 6.0, -6.0, 6.0]), np.array([-6.0, -6.0, 6.0, 6.0])
    bare = Footprint(footprint_matrix(x, x, 4.0, dx, dy, 12.0, 17.0, (3.0, -2.0)), (12, 12))
    corner = Footprint(footprint_matrix(x, x, 4.0, dx, dy, 10.0, 30.0, (-12.0, -12.0)), (12, 12))
    tile = corner.with_psf(Convolve2D(KS, (12, 12)))
    r = np.random.default_rng(3)
    rest = [Scale(r.uniform(0.5, 2.0, 5)), Scale(r.uniform(0.5, 2.0, (4, 5)))]
    return {"bare": Chain([bare] + rest), "tile_dense": Chain([tile] + rest),
            "tile_gather_blocks": Chain(list(tile.restricted()) + rest),
            "psf_then_bare": Chain([Convolve2D(KS, (12, 12)), bare] + rest)}


@pytest.mark.parametrize("name", ["bare", "tile_dense", "tile_gather_blocks", "psf_then_bare"])
@DTYPES
def test_whole_field_maps_on_dask_blocks_equal_numpy_and_dot_test(name, dtype):
    """Detector footprints act on the whole field: on Dask, the forward sums every pixel block's share (blocks
    that hold none of the map's pixels add nothing), the adjoint writes each block from the (P, K) data, and the
    weights after the map act on its small output in memory. On tiny uneven chunks (some blocks outside the
    corner tile, kernels larger than a chunk): both equal the in-memory ones and the dot test holds."""
    from xfusion.backends.blockwise import DaskBackend

    op = _whole_field_ops()[name]
    chunks = ((2, 4, 1, 5), (5, 3, 4), (5,))
    B = DaskBackend(chunks)
    assert B.supports(op)
    # the data arrive in two chunks: the adjoint gathers them
    assert _dask_pair_check(B, op, chunks, (2, 5), dtype, 8) == (((4,), (5,)), chunks)


def test_operators_without_any_block_form_are_refused_by_the_block_backend():
    """A whole-field operator that is not a detector map (the stacked energy-dependent PSF) has no form on pixel
    blocks: the backend says so (run in memory)."""
    from xfusion.backends.blockwise import DaskBackend

    make, shape = OPS["stacked_spatial"]
    B = DaskBackend(((shape[0],), (shape[1],), (shape[2],)))
    assert not B.supports(make())


def test_subspace_block_kernel_on_uneven_chunks(small_models):
    """DaskPoissonTerm (the block-wise subspace data term) == PoissonTerm.subspace_value_and_grad on tiny
    uneven chunks, value and gradient."""
    from xfusion.likelihood import PoissonTerm
    from xfusion.parallel import DaskPoissonTerm

    x, y, mx, my = small_models
    r = np.random.default_rng(4)
    basis = np.abs(r.standard_normal((3, 240))) + 0.1
    sp, v = my.reduced(basis)
    w = np.abs(r.standard_normal((15, 15, 3))) + 0.5
    a = sp.forward(w)
    ref = PoissonTerm(my, y.counts.values, None, np.float64).subspace_value_and_grad(a, v)
    yd = da.from_array(y.counts.values.astype(np.float64), chunks=((2, 2, 1), (1, 3, 1), -1))
    term = DaskPoissonTerm(my, yd, np.float64)
    (val, grad), = DaskPoissonTerm.evaluate_many([term], [(a, v)])
    assert np.isclose(val, ref[0], rtol=1e-12)
    np.testing.assert_allclose(grad, ref[1], rtol=1e-10, atol=1e-12 * np.abs(ref[1]).max())
