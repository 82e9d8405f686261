"""The registry of regularizations and methods drives fuse, the CLI help and the options tables; the prior added
through it (anscombe2d1d); explicit outcomes of the solvers' corner cases."""
import dataclasses
import importlib
import json

import numpy as np
import pytest

import xfusion
from xfusion import registry
from xfusion.registry.anscombe2d1d import AnscombeWavelet2D1D
from xfusion.regularizers.sparsity import Wavelet2D1D
from xfusion.solvers.subspace import SubspaceFISTA

fuse_module = importlib.import_module("xfusion.fuse")


def test_fuse_tables_are_views_of_the_registry():
    assert fuse_module.REGULARIZATIONS == registry.REGULARIZATIONS
    for name in registry.REGULARIZATIONS:
        spec = registry.regularization(name)
        assert fuse_module.OPTION_DEFAULTS[name] == {f.name: f.default for f in dataclasses.fields(spec.options)}
        for opt, (default, unit, doc) in spec.options.docs().items():
            assert unit and len(doc) > 20, (name, opt)  # every option documented (help(), --help, docs table)
        assert set(registry.methods_for(spec.family)) <= set(registry.METHODS)
    assert fuse_module.METHOD_OPTIONS == {"em": {}, "ista": {"step": None}, "fista": {}}
    assert fuse_module.MAX_ITER == {"em": 50, "ista": 2000, "fista": 300}
    assert fuse_module.EARLY_STOP == {"none": 5, "lowrank": 30, "lowrank_local": 20}
    with pytest.raises(ValueError, match="unknown regularization 'tv'.*anscombe2d1d"):
        registry.regularization("tv")


def test_cli_help_lists_every_registered_regularization_and_option():
    from xfusion.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["fuse"]
    text = sub.format_help()
    for name in registry.REGULARIZATIONS:
        assert f"{name}:" in text
        for opt in registry.option_docs(name):
            assert opt in text
    assert "anscombe2d1d" in next(a for a in sub._actions if a.dest == "regularization").choices


def test_options_are_validated_by_their_dataclass():
    opts = registry.regularization("anscombe2d1d").options
    with pytest.raises(ValueError, match="option k must be a number >= 0"):
        opts(k="auto")  # no thinning for this prior: "auto" is refused, not silently kept
    with pytest.raises(ValueError, match="k_min=2.0 exceeds k_max=1.0"):
        opts(k_rule="sigmoid", k_min=2.0, k_max=1.0)
    opts(k_min=2.0, k_max=1.0)  # ignored by the constant rule (session 30)
    assert "stabilized" in opts.__doc__ and "``k``" in opts.__doc__


def test_anscombe_prox_is_the_inverse_transform_of_the_stabilized_prox():
    """With nothing thresholded (k=0, every band kept) the 2D-1D synthesis is exact, so the prox is the identity
    on a non-negative cube: A^-1(A(z)) = z. With k > 0 it equals A^-1 of the inner prox of A(z)."""
    rng = np.random.default_rng(0)
    z = rng.gamma(2.0, 3.0, (16, 16, 32))
    ident = AnscombeWavelet2D1D(Wavelet2D1D(1, 3, k=0.0, null_space="threshold"))
    np.testing.assert_allclose(ident.prox(z), z, rtol=1e-9, atol=1e-9)
    inner = Wavelet2D1D(1, 3, k=1.0)
    reg = AnscombeWavelet2D1D(inner)
    a = 2 * np.sqrt(z + 3 / 8)
    np.testing.assert_allclose(reg.prox(z), (inner.prox(a) / 2) ** 2 - 3 / 8, rtol=1e-12)
    assert not np.allclose(reg.prox(z), z, rtol=1e-3)


def test_anscombe_fuses_in_memory_and_is_refused_on_dask(small_toy):
    x, y, _ = small_toy
    r = xfusion.fuse(x, y, regularization="anscombe2d1d", max_iter=3, tol=None, progress=False)
    p = json.loads(r.attrs["parameters"])
    assert p["regularization"] == "anscombe2d1d" and p["k"] == 1.0 and r.attrs["iterations"] == 3
    assert np.all(np.isfinite(r.flux.values)) and float(r.flux.min()) >= 0
    assert r.objective.values[-1] < r.objective.values[0]
    with pytest.raises(NotImplementedError, match="in memory only"):
        xfusion.fuse(x.chunk({"x": 8}), y, regularization="anscombe2d1d", max_iter=1, progress=False)


def test_early_stopping_counts_do_not_apply_to_ista(small_toy):
    x, y, _ = small_toy
    with pytest.raises(ValueError, match="max_iter must be .*'auto' \\(for regularization"):
        xfusion.fuse(x, y, regularization="none", method="ista", max_iter="auto", progress=False)


def test_fista_line_search_failure_is_an_explicit_reported_outcome(small_toy, monkeypatch):
    """When no trial step satisfies the quadratic bound, the iterate is kept (no unverified step is accepted),
    the failures are counted in the result and a warning says so."""
    x, y, _ = small_toy
    monkeypatch.setattr(SubspaceFISTA, "max_backtracks", 0)
    with pytest.warns(RuntimeWarning, match="line search found no step"):
        r = xfusion.fuse(x, y, regularization="lowrank", max_iter=3, tol=None, progress=False)
    assert r.attrs["backtrack_failures"] == 3
    np.testing.assert_array_equal(r.objective.values, np.full(4, r.objective.values[0]))


def test_a_third_observation_joins_the_likelihood(small_toy):
    """A second sharp-spatial camera (same pixels, independent counts of the same sky) adds its Poisson term: the
    result carries its predicted and observed counts, the two-input call is unchanged by the extra machinery, and
    an input on neither the fused pixels nor the fused channels is refused."""
    x, y, t = small_toy
    lam = xfusion.predict(t, x)
    x2 = x.copy(deep=True).assign_attrs(name="X-cam2")
    x2["counts"] = x2["counts"].copy(data=np.random.default_rng(7).poisson(lam.values).astype(x.counts.dtype))
    kw = dict(regularization="none", max_iter=4, tol=None, progress=False)
    r2 = xfusion.fuse(x, y, **kw)
    r3 = xfusion.fuse(x, y, x2, **kw)
    assert json.loads(r3.attrs["extra_observations"]) == ["X-cam2"] and "extra_observations" not in r2.attrs
    assert r3.counts_obs2.dims == r3.model_obs2.dims and r3.counts_obs2.shape == x.counts.shape
    np.testing.assert_array_equal(r3.counts_obs2.values, x2.counts.values)
    # the data term is the sum over the three inputs: it exceeds the two-input one at the same iterate count
    assert r3.data_term.values[-1] > r2.data_term.values[-1]
    # X-cam2's fit is as good as X's own (same instrument, same sky)
    dx = float(np.abs(r3.model_spatial - r3.counts_spatial).sum())
    d2 = float(np.abs(r3.model_obs2.values - r3.counts_obs2.values).sum())
    assert 0.9 < d2 / dx < 1.1
    odd = x.isel(x=slice(1, None))
    with pytest.raises(ValueError, match="shares neither the fused pixels"):
        xfusion.fuse(x, y, odd, **kw)
    with pytest.raises(TypeError, match="at least two observations"):
        xfusion.fuse(x, **kw)


def test_regularization_auto_resolves_to_a_registered_prior(small_toy):
    """regularization="auto" fuses with whichever of wavelet2d1d / none the thinning picks; the result records the
    choice (a registered name, so settings_of refits it) and the selection record."""
    x, y, _ = small_toy
    r = xfusion.fuse(x, y, regularization="auto", k=1.0, n_scales_1d=2, null_space="zero", progress=False)
    p = json.loads(r.attrs["parameters"])
    assert r.attrs["regularization"] in ("wavelet2d1d", "none")
    assert p["auto_tuning"]["regularization"] == "auto" and p["auto_tuning"]["chosen"] == r.attrs["regularization"]
    assert "auto" not in xfusion.settings_of(r).values()


def test_stabilize_anscombe_is_anscombe2d1d_and_reaches_every_tuning_candidate(small_toy):
    """``wavelet2d1d`` with ``stabilize="anscombe"`` is the same prior as ``anscombe2d1d`` (same options: the same
    result bit for bit); the tuning builds every wavelet candidate stabilized; under "auto" the option does not name
    the family (plain RL is still compared) and is recorded."""
    from xfusion import tuning
    from xfusion.regularizers.stabilized import AnscombeStabilized

    x, y, _ = small_toy
    kw = dict(k=1.0, n_scales_1d=5, null_space="zero", max_iter=4, tol=None, progress=False)
    a = xfusion.fuse(x, y, regularization="anscombe2d1d", **kw)
    w = xfusion.fuse(x, y, regularization="wavelet2d1d", stabilize="anscombe", **kw)
    plain = xfusion.fuse(x, y, regularization="wavelet2d1d", **kw)
    np.testing.assert_array_equal(a.flux.values, w.flux.values)
    assert not np.allclose(plain.flux.values, w.flux.values, rtol=1e-3)
    cand = {"k": 1.0, "null_space": "zero", "n_scales_1d": 2}
    assert isinstance(tuning._wavelet_reg({"stabilize": "anscombe"}, cand), AnscombeStabilized)
    assert isinstance(tuning._wavelet_reg({}, cand), Wavelet2D1D)
    auto = xfusion.fuse(x, y, stabilize="anscombe", progress=False)
    p = json.loads(auto.attrs["parameters"])
    rec = p["auto_tuning"]
    assert rec["regularization"] == "auto" and "none" in json.dumps(rec["candidates"])  # RL still a candidate
    assert p["regularization"] == "none" or p["stabilize"] == "anscombe"
    default = xfusion.fuse(x, y, progress=False)
    assert rec["heldout_deviance"] != json.loads(default.attrs["parameters"])["auto_tuning"]["heldout_deviance"]


def test_stabilize_refuses_what_it_cannot_do(small_toy):
    x, y, _ = small_toy
    with pytest.raises(ValueError, match='stabilize="anscombe" cannot use noise="propagated"'):
        xfusion.fuse(x, y, regularization="wavelet2d1d", stabilize="anscombe", noise="propagated", k=1.0,
                     max_iter=1, progress=False)
    with pytest.raises(ValueError, match="option stabilize must be one of 'none', 'anscombe'"):
        xfusion.fuse(x, y, regularization="wavelet2d1d", stabilize="sqrt", k=1.0, max_iter=1, progress=False)
    with pytest.raises(NotImplementedError, match="stabilize='anscombe' runs in memory only"):
        xfusion.fuse(x.chunk({"x": 8}), y, regularization="wavelet2d1d", stabilize="anscombe", k=1.0, n_scales_1d=5,
                     null_space="zero", max_iter=1, progress=False)


def test_removed_rechunk_layout_is_refused_and_not_advertised():
    """Session 30 (red team): layout="rechunk" was in the options table and accepted (recorded as used in memory,
    refused by the Dask path) although the layout was removed in session 4."""
    doc = registry.option_docs("wavelet2d1d")["layout"]
    assert "rechunk\"`` were removed in session 4" in doc[2] and doc[1] == '"halo"'
    with pytest.raises(ValueError, match="layout='rechunk' was removed in session 4.*use layout='halo'"):
        registry.regularization("wavelet2d1d").options(layout="rechunk")
    registry.regularization("wavelet2d1d").options(layout="halo")
