"""Gaussian (weighted least-squares) data fidelity: the data term for calibrated data with error bars.

For data that are not photon counts -- e.g. JWST pipeline products in MJy/sr whose ``ERR``
extension gives a per-voxel standard deviation -- the negative log-likelihood of independent
Gaussian errors is, up to a constant,

    D(z) = (gamma / 2) sum_v w_v (d_v - m_v)^2 / var_v,        m = H z

with ``var_v`` the per-voxel variance (``ERR**2``; same units as ``d**2``), ``w_v`` in {0, 1}
the validity mask and ``gamma`` a relative weight of this instrument (1 = the likelihood;
SyFu's gamma between NIRCam and NIRSpec is the same knob, there applied to unweighted
squares). ``D >= 0`` and ``D = 0`` at a perfect fit; at the truth its expectation is
``gamma * n_valid / 2`` (a reduced chi-square of 1). Gradient with respect to the model:
``dD/dm = gamma w (m - d) / var``; with respect to the cube: ``H^T`` of that.

Same interface as :class:`xfusion.likelihood.PoissonTerm` (``value_from_model``,
``residual_factor``, ``subspace_value_and_grad``, ``sensitivity``), so the gradient solvers
(ISTA, :class:`~xfusion.solvers.subspace.SubspaceFISTA`) take either term, and one problem may
mix them (a Poisson X-ray instrument with a Gaussian one). Unlike the Poisson term, models
may be negative (background-subtracted data are), so no point is infeasible.
Richardson-Lucy / EM needs a Poisson likelihood: :meth:`GaussianTerm.ratio` refuses.
Sums are accumulated in float64.
"""
from __future__ import annotations

import numpy as np

#: the message of every refusal to run EM on a Gaussian term
EM_REFUSED = ("the EM (Richardson-Lucy) update needs a Poisson data term; this instrument has a Gaussian data "
              "term (variance given). Use a gradient method instead: method='ista', or a low-rank regularization "
              "(the subspace FISTA solver)")


class GaussianTerm:
    """One data set with Gaussian errors.

    Parameters
    ----------
    model : InstrumentModel (or any object with ``forward``/``adjoint``/``data_shape``)
    data : array, ``model.data_shape``; any units (e.g. MJy/sr). Non-finite values are allowed
        only where ``mask`` is False (they never enter).
    variance : array broadcastable to ``data`` or a number, units of ``data**2``; must be finite
        and > 0 wherever the mask is True.
    mask : bool array like ``data`` (True = valid) or None.
    gamma : float > 0, relative weight of this data term.
    """

    def __init__(self, model, data, variance, mask=None, gamma=1.0, dtype=np.float32):
        self.model = model
        d = np.array(data, dtype=np.float64, copy=True)  # private copy: never aliases user data
        shape = tuple(getattr(model, "data_shape", d.shape))
        if d.shape != shape:
            raise ValueError(f"data shape {d.shape} does not match the model's data shape {shape}")
        try:
            var = np.broadcast_to(np.asarray(variance, dtype=np.float64), d.shape)
        except ValueError as exc:
            raise ValueError(f"variance of shape {np.shape(variance)} cannot be broadcast to the data "
                             f"{d.shape}") from exc
        valid = np.ones(d.shape, bool) if mask is None else np.array(np.broadcast_to(mask, d.shape), dtype=bool)
        gamma = float(gamma)
        if not (np.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma (relative weight of the data term) must be finite and > 0; got {gamma!r}")
        bad = valid & ~np.isfinite(d)
        if bad.any():
            raise ValueError(f"data contain {int(bad.sum())} non-finite values where the mask says valid; pass "
                             "mask=False there (e.g. from the DQ extension) -- xfusion never patches them silently")
        bad = valid & ~(np.isfinite(var) & (var > 0))
        if bad.any():
            raise ValueError(f"variance must be finite and > 0 wherever the data are valid; {int(bad.sum())} voxels "
                             "are not (ERR = 0 or NaN?). Mask them (mask=False) or give their real error")
        self.gamma = gamma
        self.valid = valid
        self.data = np.where(valid, d, 0.0).astype(dtype)
        # precision gamma * w / var (0 where masked)
        self.precision = np.where(valid, gamma / np.where(valid, var, 1.0), 0.0).astype(dtype)
        self.weight = None if mask is None else valid.astype(dtype)
        self.n_valid = int(valid.sum())
        self.background = None  # Gaussian data are taken background-subtracted (a known background: subtract it)

    def value_from_model(self, m):
        """``D`` for a model array ``m`` (float64 accumulation)."""
        r = np.asarray(m, dtype=np.float64) - self.data
        return 0.5 * float(np.sum(self.precision * r * r, dtype=np.float64))

    def residual_factor(self, m):
        """``dD/dm = gamma w (m - d) / var`` (0 where masked)."""
        r = (m - self.data) * self.precision
        return r.astype(np.result_type(m, np.float32), copy=False)

    def ratio(self, m):
        """Refused: the EM update is Poisson-only."""
        raise NotImplementedError(EM_REFUSED)

    def subspace_value_and_grad(self, a, v, grad=True):
        """Value (and coefficient gradient ``residual_factor(a @ v) @ v.T``) for ``m = a @ v``."""
        m = np.asarray(a, dtype=np.float64) @ np.asarray(v, dtype=np.float64)
        val = self.value_from_model(m)
        if not grad:
            return val, None
        return val, (self.residual_factor(m) @ np.asarray(v, dtype=np.float64).T).astype(a.dtype, copy=False)

    def sensitivity(self):
        """``H^T (gamma w / var)``: the diagonal of ``H^T C^-1 H`` for a flat cube (curvature scale per voxel)."""
        return self.model.adjoint(self.precision)

    def chi2_reduced(self, m):
        """``2 D / (gamma n_valid)``: 1 on average at the truth (a goodness-of-fit check)."""
        return 2.0 * self.value_from_model(m) / (self.gamma * max(self.n_valid, 1))


def data_term(model, obs, data=None, mask=None, dtype=np.float32):
    """The data term of one observation, chosen per instrument: Gaussian or Poisson.

    Gaussian (:class:`GaussianTerm`) when the observation Dataset ``obs`` has a ``variance``
    variable (same dims as its data, e.g. ``ERR**2``) or ``attrs["data_term"] == "gaussian"``
    (then ``variance`` is required); Poisson (:class:`xfusion.likelihood.PoissonTerm`)
    otherwise or with ``attrs["data_term"] == "poisson"``. ``data`` defaults to ``obs["counts"]``
    (X-ray schema) or ``obs["data"]`` (JWST layout), ``mask`` to ``obs["mask"]`` if present;
    ``attrs["gamma"]`` (default 1) is the Gaussian term's relative weight. This is the single
    place where a fusion builds its terms from observations.
    """
    from .likelihood import PoissonTerm

    kind = str(obs.attrs.get("data_term", "gaussian" if "variance" in obs else "poisson")).lower()
    if kind not in ("gaussian", "poisson"):
        raise ValueError(f"observation '{obs.attrs.get('name', '?')}': data_term must be 'gaussian' or 'poisson'; "
                         f"got {kind!r}")
    var_name = "counts" if "counts" in obs else "data"
    if data is None:
        data = obs[var_name].values
    if mask is None and "mask" in obs:
        mask = obs["mask"].values
    if kind == "poisson":
        return PoissonTerm(model, data, mask, dtype)
    if "variance" not in obs:
        raise ValueError(f"observation '{obs.attrs.get('name', '?')}' asks for a Gaussian data term but has no "
                         "'variance' variable; add ds['variance'] = (dims, ERR**2) or set data_term='poisson'")
    v, dims = obs["variance"], obs[var_name].dims
    if set(v.dims) - set(dims):
        raise ValueError(f"observation '{obs.attrs.get('name', '?')}': variance has dims {v.dims}, not a subset of the "
                         f"data's {dims}; give it on the data's dims (or a number, or per channel)")
    var = v.broadcast_like(obs[var_name]).transpose(*dims).values  # a number or per channel: broadcast (session 28)
    try:
        return GaussianTerm(model, data, var, mask, float(obs.attrs.get("gamma", 1.0)), dtype)
    except ValueError as exc:  # name the input (several may be Gaussian)
        raise ValueError(f"observation '{obs.attrs.get('name', '?')}': {exc}") from None


# --------------------------------------------------------------------------- helpers (also used by
# xfusion.gaussian_fission, the API-level fission tuning and bootstrap)
def _is_gaussian(obs):
    return "variance" in obs or str(obs.attrs.get("data_term", "poisson")).lower() == "gaussian"


def _data_name(obs):
    return "counts" if "counts" in obs else "data"


def _float_dtype(da):
    """The data's dtype if floating, else float64 (Gaussian draws are never truncated to integer counts)."""
    return da.dtype if np.issubdtype(da.dtype, np.floating) else np.dtype(np.float64)
