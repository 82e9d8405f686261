"""Starlet sparsity: soft thresholding in the 2D-1D (or 2D) starlet domain (paper eq. 11, 14, 16, 21).

Threshold rule (paper Alg. 2): ``rho = k * sigma``, with ``sigma`` a robust (MAD) noise
estimate. The paper uses the MAD of the finest 2D-1D band for every band; we estimate it
per band (each band has its own noise level; ``per_band=False`` gives the paper's rule). ``k``
is constant or the sigmoid of eq. 21 of the coarse-scale brightness,
``k = (k_max - k_min) / (1 + exp(-C~)) + k_min`` with ``C~ = (|C| - mean|C|) / std|C|``
(bright voxels get k_max; we standardize C~, the paper leaves its scale implicit -- note the
paper's sign convention as printed, ``1 + e^{C~}``, would give bright voxels the SMALL k
contrary to its own text; we follow the text).

Null space of the joint model. A 2D-1D band that is fine in space (finer than the
sharp-spectral instrument sees) and fine in energy (finer than the sharp-spatial instrument
sees) is invisible to both instruments: the data cannot pin it and an l1 penalty at noise
level lets it grow with the iterations (measured: NMSE falls from 16 dB to 10 dB between
iterations 5 and 40 on ``gaussian_rebin``). With ``null_space="zero"`` (default) those
bands (2D scale < ``n_scales_2d`` and 1D scale < ``n_scales_1d``) are set to zero: an
infinite l1 weight on them. With ``null_space="threshold"`` they are thresholded at ``null_factor`` times the rule
of the other bands (``rho_b = null_factor * k * sigma_b``; 1: every band alike, the paper): a large factor keeps only
null-band coefficients far above their band's noise, such as a bright narrow line confined to a few pixels, which
EM's positivity recovers from the two instruments together and zeroing would remove.

The bands coarsest in space and fine in energy (2D scale ``n_scales_2d``, 1D scale < ``n_scales_1d``): the line
structure on the scales the sharp-spectral instrument resolves. ``spectral_band_factor`` (default 1: the paper) thresholds
them at that factor times the rule of the other bands (session 60; ``regularization="auto"`` uses 8 on skies whose
sharp-spectral counts read as a continuum, where those bands hold noise only: :data:`xfusion.tuning.SPECTRAL_BAND_FACTOR`).

Noise model "propagated" (``noise="propagated"``; EM solver only, :class:`xfusion.solvers.em.EMProx`)
---------------------------------------------------------------------------------------------------
The prox acts on the EM step ``z_half = (z / s) sum_i H_i^T(w_i d_i / m_i)`` with ``m_i = H_i z + B_i`` the
expected counts of input ``i``, ``w_i`` its mask (0/1) and ``s = sum_i H_i^T w_i`` the sensitivity, summed over
EVERY input (internal units of the solver: z is the fused cube in the models' units, s in counts per unit of z).
Linearized at ``d_i ~ Poisson(m_i)`` (all data voxels independent), ``z_half`` has the covariance

    Cov(z_half) = D (sum_i H_i^T diag(w_i / m_i) H_i) D,      D = diag(z / s),

whose diagonal is at most ``z / s``: ``Var(z_half_v) = (z_v / s_v)^2 sum_ij w_ij H_ijv^2 / m_ij <= z_v / s_v``
because ``H_ijv z_v <= m_ij`` (equality when every data voxel sees one fused voxel: the variance of the counts
attributed to v, ``s_v z_v`` expected). More data (a larger s) lowers it as 1 / s; a brighter voxel raises it.

*Independent-voxel part.* A band ``W_b z_half`` is the linear filter ``g_b`` (2D filter of band a times 1D
filter of band b) of ``z_half``; for independent voxels of variance ``v = z / s`` its variance per coefficient is
``g_b^2 * v`` (squared taps). We use ``V_b = ||g_b||^2 (phi_a (x) phi_b) * v``: the squared l2 norm of the
filter times ``v`` smoothed by the starlet scaling functions of 2D level ``min(a, n2 - 1)`` and 1D level
``min(b, n1 - 1)`` (one smoothing cascade of ``v``: the cost of one 1D transform of a cube for ``n2 = 1``). It
is exact where ``v`` is locally constant; the scaling functions are 0.6-1x as wide as the normalized squared
filters (standard deviation along an axis 0.55, 1.6, 3.5, 7.0, 14 samples for wavelet bands 1-5 against 0, 1,
2.2, 4.6, 9.2), so sharp variance features are smoothed a little less than exactly (the reflected edges are
also approximate). tests/test_noise_model.py: bands of independent Poisson noise match ``V_b`` within 4%.

*Correlations.* The EM step is NOT independent between voxels: ``H^T`` spreads each data voxel's correction over
the PSF and the line spread, so the bands of ``z_half`` carry much less noise than ``V_b``. Measured on 5 small
tuning scenes (z = 30 RL iterations, 12 Poisson draws of the data at ``H z``): true std / ``sqrt(V_b)`` 0.21-0.33
in band (0, n1) (fine in space), 0.17-0.49 in the coarse-space bands, 0.01-0.09 in the null bands -- band- and
scene-dependent, while the spatial pattern of ``V_b`` matched the true one (correlation 0.88-0.94 of the std maps
in the kept bands). So every band gets a factor ``c_b`` from a noise probe: ``probe = (z / s) sum_i H_i^T(w_i
eps_i / sqrt(m_i))``, with fixed standard-normal draws ``eps_i`` on each input's data, has exactly the covariance
above; ``c_b = MAD(W_b probe / sqrt(V_b))`` over the lattice sample (a robust scale of the probe's band in units
of the independent-voxel sigma; 1 for independent voxels). The threshold map is ``rho_b(u) = k c_b
sqrt(max(V_b(u), f_b))``, ``f_b`` = :data:`NOISE_FLOOR` x the lattice mean of ``V_b`` (voxels at z = 0 keep a
threshold). The signal never enters the noise estimate (the "mad" MAD is signal-dominated at high counts), and
the thresholds follow z / s from voxel to voxel (brightness, exposure, mosaic overlaps, extra inputs).
``per_band`` is ignored (every band has its own filter). Cost per statistics step: one more adjoint per input
(the probe), the 2D-1D transform of the probe (1D part at the lattice pixels only) and the smoothing cascade of
``v``; the apply smooths ``v`` again (per block on Dask). The probe's draws differ between backends (same
distribution): Dask and in-memory fits agree statistically, not to round-off. The solver refreshes the probe and
these statistics at its first 4 states and then every 8th (:attr:`xfusion.solvers.em.EMProx.probe_every`).

Measured (session 7; logs s7_prior_*.log of the session notes). Noise: against 12 Poisson redraws of the data at
a fixed z (6 small tuning scenes), the true band noise is 0.93-1.5x ``c_b sqrt(V_b)`` in the kept bands (most
in bright regions: the correlation factor is larger where a voxel outshines its PSF neighbourhood); a
variant with ``var = (z / s)^2 sum_i H_i^T(w_i / m_i)`` and an RMS factor matched the noise better (0.75-1.17x)
but fused worse (``regularization="auto"``, 24 small tuning scenes: same mean NMSE, mean velocity error 133 vs
122 km/s), so it is not used. Quality, 72x72x200 mosaic of benchmarks/mosaic.py at 3e6 pn counts, k=1 for 150
iterations: pn + Resolve 24.28 dB / 43 km/s ("mad": 23.37 / 71), pn + MOS1 + MOS2 + Resolve 23.87 / 49 (22.61 /
86). ``regularization="auto"`` (benchmarks/suite.py --select, 24 small scenes): tuning seeds 19.68 vs 19.53 dB
mean NMSE (better on 18), held-out seeds 19.74 vs 19.57 (better on 12, RL oracle 19.61); mean velocity error
+1.5 and +3 km/s; single-scene losses up to -2.2 (tuning) and -2.3 dB (held-out), mostly synchrotron and very
bright scenes where "auto" no longer picks plain RL (0 of 48 with this model) or picks the zeroed prior.
"""
from __future__ import annotations

import numpy as np

from ..threads import run as _run_tasks
from ..threads import spans
from . import starlet_kernels as _kernels
from .starlet import mad_sigma, reach, soft_threshold, starlet1d, starlet2d

#: default number of coefficients per band used for the MAD noise estimate
MAD_SAMPLE = 2 ** 18
#: noise model of the thresholds: "mad" (one robust sigma per band), "propagated" (module notes) or "poisson" (per
#: voxel: the band's MAD of the coefficients divided by sqrt(intensity), times sqrt(intensity); intensity = the
#: coarse-coarse band,
#: floored at NOISE_FLOOR x its mean). Poisson noise grows like sqrt(intensity): one sigma per band
#: over-smooths bright regions and under-smooths faint ones.
NOISE_DEFAULT = "mad"
NOISE_FLOOR = 0.05
#: the noise models :class:`Wavelet2D1D` accepts
NOISE_MODELS = ("mad", "poisson", "propagated")
#: the line step's threshold at line-free sources, in units of ``k`` times the MAD of the line part of the fine
#: 2D band (class notes of :class:`Wavelet2D1D`, "Line-free sources"); chosen on tuning seeds in session 50
LINE_FACTOR = 3.0
#: rows (axis 0) per block of the thresholding step (:meth:`Wavelet2D1D._apply`, one task each on the thread pool,
#: :mod:`xfusion.threads`)
APPLY_ROWS = 2


#: ``np.pad`` arguments of the 2D-1D prior's extension beyond the field (``boundary = "odd"``, class notes of
#: :class:`Wavelet2D1D`): point-symmetric about the edge pixel, ``z[-k] = 2 z[0] - z[k]``
FIELD_EDGE = {"mode": "reflect", "reflect_type": "odd"}


def gaussian_nearest(a, sigma):
    """``a`` smoothed along its last axis by a Gaussian of standard deviation ``sigma`` samples, the edge values
    repeated beyond both ends (scipy's ``mode="nearest"``). In Fourier space on the signal padded by ``5 sigma``
    edge samples at each end: O(L log L) per spectrum whatever ``sigma`` (a direct convolution costs ``8 sigma``
    taps per sample: 1300 for the line step's 160-channel scale). Against ``scipy.ndimage.gaussian_filter1d``
    (truncated at 4 sigma) it differs by the tails beyond 4 sigma: about 1e-5 of the values (tested). Blocks of
    rows (axis 0) of about 2 MiB run on the thread pool (:mod:`xfusion.threads`; every spectrum is transformed
    alone, so the result is the same to the bit whatever the threads)."""
    a = np.asarray(a)
    return _by_rows(a, lambda b: _gaussian_nearest(b, sigma), a.shape[-1])


def _by_rows(a, fn, n_out):
    """``fn`` (spectra -> spectra of ``n_out`` samples, along the last axis) applied to blocks of rows (axis 0) of
    about 2 MiB of ``a`` on the thread pool (one call for a 1D ``a`` or a single row)."""
    if a.ndim < 2 or a.shape[0] < 2:
        return fn(a)
    out = np.empty(a.shape[:-1] + (n_out,), dtype=a.dtype)
    rows = max(1, (1 << 21) // max(a[0].nbytes, 1))

    def task(r0, r1):
        out[r0:r1] = fn(a[r0:r1])

    _run_tasks([lambda r0=r0, r1=r1: task(r0, r1) for r0, r1 in spans(0, a.shape[0], rows)], a.nbytes)
    return out


def _padding(n, sigma):
    """``(pad, m)`` of :func:`_fourier_nearest` for ``n`` samples: ``ceil(5 sigma)`` edge samples at each end, and the
    fast real-FFT length of the padded spectrum."""
    import scipy.fft as sfft

    pad = int(np.ceil(5.0 * sigma))
    return pad, sfft.next_fast_len(n + 2 * pad, real=True)


def _fourier_nearest(a, sigma):
    """``(padded transform, pad, m)``: ``a`` padded by ``pad`` edge samples at each end, its real FFT of the fast
    length ``m`` along the last axis (:func:`_padding`; the first step of :func:`gaussian_nearest`)."""
    import scipy.fft as sfft

    pad, m = _padding(a.shape[-1], sigma)
    ap = np.concatenate([np.repeat(a[..., :1], pad, axis=-1), a, np.repeat(a[..., -1:], pad, axis=-1)], axis=-1)
    return sfft.rfft(ap, m, axis=-1), pad, m


def _gaussian_nearest(a, sigma):
    import scipy.fft as sfft

    f, pad, m = _fourier_nearest(a, sigma)
    f *= np.exp(-2.0 * (np.pi * float(sigma) * np.fft.rfftfreq(m)) ** 2).astype(f.real.dtype)
    return sfft.irfft(f, m, axis=-1)[..., pad:pad + a.shape[-1]].astype(a.dtype, copy=False)


def gaussian_nearest_every(a, sigma, step):
    """``gaussian_nearest(a, sigma)[..., ::step]``: the same smoothing at channels ``0, step, 2 step, ...`` only. The
    transform of each padded spectrum is the same; the inverse is summed at those channels alone, from the bins where
    the Gaussian's transfer ``exp(-2 (pi sigma k / m)^2)`` is at least the square of the dtype's epsilon (the rest
    cannot change a value beyond its rounding): about ``1.3 m / sigma`` bins in float32 (37 for the line step's
    133-channel scale, against the ``m`` ~ 3750 of a full inverse). Equal to the full smoothing within rounding
    (tested), so a statistic sampled every ``step`` channels (the line part's MAD, :meth:`Wavelet2D1D._parts`) need
    not smooth every channel (session 69: 45x45x2400 float32, ``step`` 19, the line part's sample 41 -> 19 ms on two
    threads). Falls back to the full smoothing where the sum would cost more than the inverse it replaces. Blocks of
    rows on the thread pool, as :func:`gaussian_nearest`."""
    a = np.asarray(a)
    step = int(step)
    n = a.shape[-1]
    pad, m = _padding(n, sigma)
    tiny = float(np.finfo(a.dtype if a.dtype.kind == "f" else np.float64).eps) ** 2
    keep = int(np.ceil(m * np.sqrt(np.log(1.0 / tiny) / 2.0) / (np.pi * float(sigma)))) + 1
    at = np.arange(0, n, step)
    if step < 2 or keep >= m // 2 or keep * at.size > 4 * m:
        return gaussian_nearest(a, sigma)[..., ::step]
    k = np.arange(keep)
    basis = np.exp(2j * np.pi * np.outer(k, at + pad) / m)  # (keep, channels): e^{2 pi i k t / m}
    basis *= (np.where(k == 0, 1.0, 2.0) * np.exp(-2.0 * (np.pi * float(sigma) * k / m) ** 2) / m)[:, None]

    def smooth(b):
        f = _fourier_nearest(b, sigma)[0][..., :keep]
        return (f.astype(np.complex128) @ basis).real.astype(a.dtype, copy=False)

    return _by_rows(a, smooth, at.size)


def _extend(a, h):
    """``a`` (x, y, ...) extended by ``h`` pixels of :data:`FIELD_EDGE` on both sides of its two spatial axes."""
    return np.pad(a, ((h, h), (h, h)) + ((0, 0),) * (a.ndim - 2), **FIELD_EDGE)


def lattice_strides(shape, sample):
    """Strides ``(s_0, s_1, ...)`` of the MAD subsample lattice of a band of ``shape``.

    The subsample is the lattice of GLOBAL indices ``i_k % s_k == 0`` on every axis, so it
    does not depend on how the cube is split into blocks (the Dask path gathers exactly the
    same values; see :mod:`xfusion.backends.blockwise`). Greedy and deterministic: while the
    lattice holds more than ``sample`` points, the axis with the most lattice points (the
    last on ties) gets the smallest stride that removes at least one of its points. The
    count ends at most ``sample`` (typically 0.5-1 x ``sample``); all ones (exact) when the
    band has at most ``sample`` elements or ``sample`` is None.
    """
    s = [1] * len(shape)
    if sample is None:
        return tuple(s)
    sample = int(sample)
    if sample < 1:
        raise ValueError("sample must be a positive integer")
    counts = [int(n) for n in shape]
    while int(np.prod(counts, dtype=np.int64)) > sample:
        k = max(range(len(shape)), key=lambda i: (counts[i], i))
        s[k] = -(-int(shape[k]) // (counts[k] - 1))
        counts[k] = -(-int(shape[k]) // s[k])
    return tuple(s)


def _mad(band, sample):
    """MAD noise estimate of a band from the lattice subsample of :func:`lattice_strides`.

    Chunk-independent (global indices), so the NumPy and Dask paths give the same value; with
    ``sample=None`` or a band of at most ``sample`` elements it is exact.
    """
    st = lattice_strides(band.shape, sample)
    return mad_sigma(band[tuple(slice(None, None, k) for k in st)])


def _shrink(band, th, tmp=None):
    """Soft thresholding of ``band`` IN PLACE as ``band - clip(band, -th, th)`` (``th`` >= 0, a number or an array
    broadcastable to the band): the values of :func:`~xfusion.regularizers.starlet.soft_threshold` to the bit (the
    same subtraction ``|x| - th`` with the sign of ``x``; zeros may differ in sign) in two passes instead of four.
    ``tmp``: a scratch array shaped like ``band`` (made when None). Returns ``(band, tmp)``."""
    t = np.asarray(th, dtype=band.dtype)
    if np.any(t < 0):
        raise ValueError("thresh must be non-negative")
    if tmp is None or tmp.shape != band.shape or tmp.dtype != band.dtype:
        tmp = np.empty(band.shape, dtype=band.dtype)
    np.clip(band, -t, t, out=tmp)
    band -= tmp
    return band, tmp


def _crop2(c, halo):
    """Coefficients ``c`` (n, bx + 2h, by + 2h, L) without the halo ``h`` on the two spatial axes."""
    return c if halo == 0 else c[:, halo:c.shape[1] - halo, halo:c.shape[2] - halo]


def _level(j, n):
    """Starlet scaling-function level whose smoothing stands for the squared filter of band ``j`` of an
    ``n``-scale transform (module notes): ``min(j, n - 1)`` (0: no smoothing)."""
    return max(min(j, n - 1), 0)


_NORMS = {}


def _band_norms(n2, n1):
    """``(||g_a||^2 for a in 0..n2, ||g_b||^2 for b in 0..n1)``: squared l2 norms of the filters of the 2D bands (2D
    impulse response) and of the 1D bands (1D impulse response), away from the edges."""
    key = (int(n2), int(n1))
    if key not in _NORMS:
        def norms(n, ndim):
            half = 4 * 2 ** max(n, 1) + 1
            e = np.zeros((2 * half + 1,) * ndim + ((1,) if ndim == 2 else ()))
            e[(half,) * ndim] = 1.0
            c = starlet2d(e, n) if ndim == 2 else starlet1d(e, n)
            return [float(np.sum(c[j] ** 2)) for j in range(n + 1)]
        _NORMS[key] = (norms(n2, 2), norms(n1, 1))
    return _NORMS[key]


class Wavelet2D1D:
    """Soft thresholding of 2D-1D starlet coefficients; the coarse-coarse band is untouched.

    ``prox(z)`` returns ``sum_b S_{rho_b}(W_b z)`` (synthesis by summation), and ``value(z)``
    the weighted l1 norm ``sum_b rho_b ||W_b z||_1`` with the current thresholds.
    ``sample``: estimate MADs from at most this many coefficients per band, on a lattice of
    global indices (:func:`lattice_strides`; default 2**18; a documented approximation for
    large cubes; exact when None or when the band is smaller). ``noise``: the threshold's noise model,
    "mad", "poisson" or "propagated" (module notes; the EM solver passes the noise maps it needs: ``statistics``,
    ``prox``, ``block_statistics`` and ``block_apply`` then take ``noise=(var, probe)``, resp. ``(var,)``); None:
    :data:`NOISE_DEFAULT` at construction.

    Split for block backends: the prox is ``apply(z, statistics(z))``. ``statistics`` is global
    (per-band MADs of the lattice sample; for ``k_rule="sigmoid"`` the mean and standard
    deviation of ``|C|``, the coarse-coarse band, from float64 sums); it combines
    (:meth:`combine`) per-block parts (:meth:`block_statistics`). ``apply`` is local
    (:meth:`block_apply`). Both block forms take a block with a halo of ``depth =
    2 (2**n_scales_2d - 1)`` pixels (the 2D starlet's reach) filled, beyond the field, with the
    point-symmetric extension ``z[-k] = 2 z[0] - z[k]`` (``boundary = "odd"``, :data:`FIELD_EDGE`);
    a block passed with halo 0 is the whole field and is extended here. The interior coefficients
    are then bitwise those of the extended field's transform on every backend. The NumPy prox
    shares the 2D transform between statistics and apply. ``conserve_flux`` needs the global total
    of the result: in-memory only.

    Field edge (session 34). The starlet's own rule, the half-sample mirror, turns the edge of a
    source that brightens inward into a valley: a negative fine-scale coefficient at the edge pixels
    (-0.44 times the slope for a linear ramp), which the thresholding shrinks, so the edge pixels
    gained flux: the ring of edge pixels +12 % on average over 23 small tuning scenes (up to +52 %),
    +29 % on held-out cluster_core/500009 (red team, session 33). The point-symmetric extension
    continues a linear trend, whose fine-scale coefficients are then 0: mean |bias| of the ring 1.2 %
    (at most 3.6 %), NMSE +0.17 dB on average (-0.35 to +1.15), velocity-map RMS unchanged (120 vs 121
    km/s; ``s34/edge/`` of the session notes).

    Line-free sources (session 51; ``line_peaks``, found by :mod:`xfusion.sources`). In the 3x3 footprint of each
    peak (global (x, y) pixel indices; footprints clipped at the field's edge), after the thresholding, the fine 2D
    part of the synthesis ``r = sum_b S(w_0b)`` (the kept bands of 2D scale 0) has its line part along energy
    ``l = r - G_s * r`` (``G_s`` a Gaussian of ``line_sigma`` channels, nearest-edge) soft-thresholded at
    ``step * line_factor * k * sigma_l``: the output there gains ``S(l) - l``. ``sigma_l`` (statistic ``line_mad``)
    is the MAD of the same line part of the input's fine 2D band over the lattice sample (a statistic like the
    bands', so both backends compute it alike). It adds ``sum rho_l |S(l)|`` to the penalty. Why: in the band fine in space and coarse in
    energy a gas line that shifts from pixel to pixel is thresholded away while a bright source's large
    coefficients keep line structure, so the EM steps put the gas's line counts on the sources (the instruments
    cannot see the swap; :mod:`xfusion.sources`). Noise models "mad" and "poisson" (the line threshold is one
    MAD either way).
    """

    boundary = "odd"

    def __init__(self, n_scales_2d=1, n_scales_1d=5, k=1.0, k_rule="constant", k_min=0.5, k_max=3.0,
                 null_space="zero", per_band=True, sample=MAD_SAMPLE, conserve_flux=False, noise=None, null_factor=1.0,
                 line_peaks=None, line_sigma=None, line_factor=LINE_FACTOR, spectral_band_factor=1.0):
        if null_space not in ("zero", "threshold"):
            raise ValueError("null_space must be 'zero' or 'threshold'")
        if not (np.isfinite(null_factor) and null_factor > 0):
            raise ValueError(f"null_factor must be a finite number > 0 (the null bands' threshold over the others'); "
                             f"got {null_factor!r}")
        #: factor of the null bands' thresholds when ``null_space="threshold"`` (1: the paper, every band alike)
        self.null_factor = float(null_factor)
        if not (np.isfinite(spectral_band_factor) and spectral_band_factor > 0):
            raise ValueError(f"spectral_band_factor must be a finite number > 0 (the threshold of the bands coarse in space "
                             f"and fine in energy over the others'); got {spectral_band_factor!r}")
        #: factor of the thresholds of the bands coarse in space and fine in energy (:meth:`_is_spectral`)
        self.spectral_band_factor = float(spectral_band_factor)
        noise = NOISE_DEFAULT if noise is None else noise
        if noise not in NOISE_MODELS:
            raise ValueError(f"noise must be 'mad' (one MAD per band), 'poisson' (MAD of the coefficients over "
                             f"sqrt(intensity), times sqrt(intensity)) or 'propagated' (the EM step's Poisson "
                             f"variance z / s through each band's filter; needs the EM solver); got {noise!r}")
        self.noise = noise
        if k_rule not in ("constant", "sigmoid"):
            raise ValueError("k_rule must be 'constant' or 'sigmoid'")
        self.n2, self.n1 = int(n_scales_2d), int(n_scales_1d)
        # k: the constant rule's threshold (None, unused, with the sigmoid rule)
        self.k = None if k is None and k_rule == "sigmoid" else float(k)
        self.k_rule, self.k_min, self.k_max = k_rule, float(k_min), float(k_max)
        self.null_space, self.per_band, self.sample = null_space, bool(per_band), sample
        self.conserve_flux = bool(conserve_flux)
        self.depth = reach(self.n2)
        #: factors of the thresholds of some bands, ``{(a, b): f}`` (:meth:`with_band_scale`)
        self.band_scale = {}
        #: peaks (global (x, y) pixels) of the line-free sources, their line scale (channels) and factor (class notes)
        self.line_peaks = tuple((int(i), int(j)) for i, j in (line_peaks or ()))
        if self.line_peaks:
            if noise == "propagated":
                raise ValueError("line_peaks (the line step at line-free sources) works with noise='mad' or "
                                 "'poisson', not 'propagated'; drop line_peaks (source_lines='none') or change noise")
            if not (line_sigma is not None and np.isfinite(line_sigma) and line_sigma > 0):
                raise ValueError(f"line_sigma must be a finite number of channels > 0 with line_peaks; got "
                                 f"{line_sigma!r}")
            if not (np.isfinite(line_factor) and line_factor > 0):
                raise ValueError(f"line_factor must be a finite number > 0; got {line_factor!r}")
        self.line_sigma = None if not self.line_peaks else float(line_sigma)
        self.line_factor = float(line_factor)

    def spatial_bands(self):
        """The kept bands that are fine in space and coarsest in energy, ``(a, n1)`` for ``a < n2``: structure only
        a sharp-spatial instrument constrains."""
        return [(a, self.n1) for a in range(self.n2)]

    def with_band_scale(self, scale):
        """A copy whose thresholds of the bands in ``scale`` (``{(a, b): f}``, f > 0) are multiplied by ``f`` (noise
        models "mad" and "poisson"; "propagated" thresholds follow the EM step's noise and are not scaled). Used by
        the balanced EM step of several sharp-spatial inputs (:mod:`xfusion.solvers.em`); ``self`` is unchanged."""
        import copy

        bad = [ab for ab, f in scale.items() if not (np.isfinite(f) and f > 0)]
        if bad:
            raise ValueError(f"band threshold factors must be finite and > 0; got {[scale[ab] for ab in bad]}")
        out = copy.copy(self)
        out.band_scale = {**self.band_scale, **{(int(a), int(b)): float(f) for (a, b), f in scale.items()}}
        return out

    def _bands(self):
        """(a, b, null) for every band but the coarse-coarse one; null = invisible to both instruments."""
        for a in range(self.n2 + 1):
            for b in range(self.n1 + 1):
                if a == self.n2 and b == self.n1:
                    continue
                yield a, b, self._is_null(a, b)

    def _is_null(self, a, b):
        """Band (a, b) is fine in space and fine in energy: invisible to both instruments."""
        return a < self.n2 and b < self.n1

    def _is_spectral(self, a, b):
        """Band (a, b) is coarsest in space and fine in energy, ``(n2, b)`` for ``b < n1``: line structure (centroids,
        widths) on scales the sharp-spectral instrument resolves; thresholded at ``spectral_band_factor`` times the
        rule of the other bands (session 60)."""
        return a == self.n2 and b < self.n1

    def _kept(self):
        return [(a, b) for a, b, null in self._bands() if not (null and self.null_space == "zero")]

    def _needed(self):
        """Bands whose MAD is needed: every kept band (per band) or the finest one (the paper's rule)."""
        return self._kept() if self.per_band or self.noise == "propagated" else [(0, 0)]

    @property
    def wants_noise(self):
        """True when the prox needs the EM step's noise maps (``noise="propagated"``): the solver then passes
        ``noise=(var, probe)`` to the statistics and ``noise=(var,)`` to the apply (module notes)."""
        return self.noise == "propagated"

    def _no_noise(self, what):
        return ValueError(f"Wavelet2D1D(noise='propagated').{what} needs the EM step's noise maps (noise=(var, "
                          "probe)); they come from the EM solver (xfusion.solvers.em.EMProx, method='em'): use "
                          "noise='mad' with other solvers")

    def _field(self, z, noise, halo):
        """``(z, noise, halo)`` as a haloed block: a block given with halo 0 is the whole field, extended here by
        ``depth`` pixels of :data:`FIELD_EDGE` on both spatial axes (``noise``: the tuple of cubes shaped like
        ``z``, extended alike), so that every backend transforms the same extended field."""
        if halo or not self.depth:
            return z, noise, halo
        h = self.depth
        return _extend(z, h), None if noise is None else tuple(_extend(a, h) for a in noise), h

    # -- propagated noise: variance of each band --------------------------------------------------
    def _variance_bands(self, vo, halo, lattice=None):
        """``{(a, b): (level, norm)}`` with ``V_ab = norm * level`` the variance of band (a, b) of a cube of
        independent voxels of variance ``vo`` (a block with ``halo`` pixels), on the block's interior or at its
        ``lattice`` pixels: ``norm = ||g_a||^2 ||g_b||^2`` and ``level`` = ``vo`` smoothed by the starlet scaling
        functions of 2D level ``min(a, n2 - 1)`` and 1D level ``min(b, n1 - 1)`` (module notes; bands on the same
        levels share the array)."""
        n2a, n1b = _band_norms(self.n2, self.n1)
        lev2 = {a: _level(a, self.n2) for a, _ in self._needed()}
        top2 = max(lev2.values())
        if top2 > 0:
            w = starlet2d(vo, top2)
            c2 = [vo]
            for j in range(top2):  # c_{j+1} = c_j - w_{j+1}
                c2.append(c2[-1] - w[j])
        else:
            c2 = [vo]
        out, cache = {}, {}
        top1 = max(_level(b, self.n1) for _, b in self._needed())
        for a, b in self._needed():
            la = lev2[a]
            if la not in cache:
                x = _crop2(c2[la][None], halo)[0]
                if lattice is not None:
                    x = x[lattice]
                levels = [x]
                if top1 > 0:
                    w1 = starlet1d(x, top1, axis=-1)
                    for j in range(top1):
                        levels.append(levels[-1] - w1[j])
                cache[la] = levels
            out[(a, b)] = (cache[la][_level(b, self.n1)], float(n2a[a] * n1b[b]))
        return out

    # -- statistics (global) -----------------------------------------------------------------
    def _parts(self, stack, coarse, shape, origin, vbands=None):
        """Lattice samples of the needed bands and |C| moments of a block whose interior starts at global
        pixel ``origin`` of a cube of ``shape``. ``stack(a, lattice)``: the 1D transform (along energy) of
        2D band ``a`` at the lattice pixels (for ``noise="propagated"``: of the noise probe's band);
        ``coarse()``: the coarse-coarse band of the block; ``vbands(lattice)``: the band variances
        (:meth:`_variance_bands`) at the lattice pixels (``noise="propagated"``)."""
        sx, sy, se = lattice_strides(shape, self.sample)
        lattice = (slice((-origin[0]) % sx, None, sx), slice((-origin[1]) % sy, None, sy))
        cache, samples = {}, {}
        for a, b in self._needed():
            if a not in cache:
                cache[a] = stack(a, lattice)
            samples[(a, b)] = np.ascontiguousarray(cache[a][b][:, :, ::se])
        if self.line_peaks:  # the line part of the fine 2D band (the sum of its 1D bands) at the lattice voxels
            if 0 not in cache:
                cache[0] = stack(0, lattice)
            r = np.sum(cache[0], axis=0)
            samples["line"] = r[:, :, ::se] - gaussian_nearest_every(r, self.line_sigma, se)
        if self.noise == "poisson":  # the intensity (coarse-coarse band) at the same lattice voxels
            if self.n2 not in cache:
                cache[self.n2] = stack(self.n2, lattice)
            samples["intensity"] = np.ascontiguousarray(cache[self.n2][self.n1][:, :, ::se])
        if self.noise == "propagated":  # the independent-voxel band variances at the same lattice voxels
            for ab, (level, norm) in vbands(lattice).items():
                samples[("var",) + ab] = np.ascontiguousarray(level[:, :, ::se]) * level.dtype.type(norm)
        moments = None
        if self.k_rule == "sigmoid":
            c = np.abs(coarse()).astype(np.float64)
            moments = np.array([c.sum(), np.sum(c * c), c.size])
        return samples, moments

    def block_statistics(self, zo, halo, shape, origin, noise=None):
        """Per-block part of :meth:`statistics`: ``zo`` a block with ``halo`` pixels (class notes),
        ``shape`` the cube's, ``origin`` the global (x, y) index of the block's first interior pixel.
        Only the lattice pixels get the 1D transform (and the coarse 2D band for the sigmoid rule).
        ``noise`` (``noise="propagated"`` only): the blocks ``(var, probe)`` with the same halo."""
        zo, noise, halo = self._field(zo, noise, halo)
        if self.noise == "propagated":  # the coarse band of z only for the sigmoid rule's moments
            return self._probe_parts(noise, halo, shape, origin, lambda: starlet1d(
                _crop2(starlet2d(zo, self.n2), halo)[self.n2], self.n1, axis=-1)[self.n1], "block_statistics")
        c2 = _crop2(starlet2d(zo, self.n2), halo)
        return self._parts(lambda a, lat: starlet1d(c2[a][lat], self.n1, axis=-1),
                           lambda: starlet1d(c2[self.n2], self.n1, axis=-1)[self.n1], shape, origin)

    def _probe_parts(self, noise, halo, shape, origin, coarse, what):
        """:meth:`_parts` for ``noise="propagated"``: the noise probe's bands (1D transforms at the lattice pixels
        only) and the band variances of ``var``, from ``noise=(var, probe)`` blocks with ``halo`` pixels."""
        if noise is None:
            raise self._no_noise(what)
        p2 = _crop2(starlet2d(noise[1], self.n2), halo)
        return self._parts(lambda a, lat: starlet1d(p2[a][lat], self.n1, axis=-1), coarse, shape, origin,
                           lambda lat: self._variance_bands(noise[0], halo, lat))

    def _statistics(self, c1, shape, noise=None, halo=0):
        """:meth:`statistics` from the coefficients of the whole cube (no second transform); ``noise``: the
        extended field's (``halo`` pixels, :meth:`_field`)."""
        if self.noise == "propagated":
            return self.combine([self._probe_parts(noise, halo, shape, (0, 0), lambda: c1[self.n2][self.n1],
                                                   "statistics")])
        return self.combine([self._parts(lambda a, lat: c1[a][(slice(None),) + lat], lambda: c1[self.n2][self.n1],
                                         shape, (0, 0))])

    def combine(self, parts):
        """Global statistics from the per-block parts: ``{"sigma": {(a, b): MAD / 0.6745}, "k_mean", "k_std"}``.
        The MADs are medians over the union of the lattice samples (order-free), so they do not
        depend on the blocks. ``noise="propagated"``: ``sigma[(a, b)]`` is the band's correlation factor
        ``c_ab`` (MAD of the probe's band over the square root of its floored independent-voxel variance)
        and ``vfloor[(a, b)]`` the floor of that variance (:data:`NOISE_FLOOR` x its lattice mean)."""
        parts = list(parts)
        stats = {}

        def cat(key):
            return np.concatenate([p[0][key].ravel() for p in parts])

        needed = list(self._needed())
        if self.noise == "poisson":
            inten = np.maximum(cat("intensity").astype(np.float64), 0)
            floor = max(NOISE_FLOOR * float(inten.mean()) if inten.size else 0.0, 1e-30)
            stats["floor"] = floor
            mod = np.sqrt(np.maximum(inten, floor))

            def band_sigma(ab):
                return mad_sigma(cat(ab) / mod), None
        elif self.noise == "propagated":
            def band_sigma(ab):
                var = np.maximum(cat(("var",) + ab).astype(np.float64), 0)
                vf = max(NOISE_FLOOR * float(var.mean()) if var.size else 0.0, 1e-30)
                return mad_sigma(cat(ab) / np.sqrt(np.maximum(var, vf))), vf
        else:
            def band_sigma(ab):
                return mad_sigma(cat(ab)), None
        # one task per band on the thread pool (the medians are most of the work; each band's alone: same numbers)
        res = [None] * len(needed)

        def task(i):
            res[i] = band_sigma(needed[i])

        _run_tasks([lambda i=i: task(i) for i in range(len(needed))],
                   sum(int(p[0][ab].nbytes) for p in parts for ab in needed))
        sig = {ab: r[0] for ab, r in zip(needed, res)}
        if self.noise == "propagated":
            stats["vfloor"] = {ab: r[1] for ab, r in zip(needed, res)}
        stats["sigma"] = sig
        if self.line_peaks:
            stats["line_mad"] = mad_sigma(cat("line"))
        if self.k_rule == "sigmoid":
            s1, s2, n = np.sum([p[1] for p in parts], axis=0)
            mean = s1 / n
            stats.update(k_mean=float(mean), k_std=float(np.sqrt(max(s2 / n - mean * mean, 0.0))))
        return stats

    def _coefficients(self, zo, halo):
        """The 1D transforms (along energy) of the 2D bands of a block's interior: [(n1 + 1, bx, by, L)] * (n2 + 1)."""
        c2 = _crop2(starlet2d(zo, self.n2), halo)
        return [starlet1d(c2[a], self.n1, axis=-1) for a in range(self.n2 + 1)]

    def statistics(self, z, noise=None):
        return self.combine([self.block_statistics(z, 0, z.shape, (0, 0), noise)])

    def stats_scalars(self, stats):
        """The statistics as named floats (``sigma_a_b``, ``vfloor_a_b``, ``k_mean``, ``k_std``): what a solver state
        (and its checkpoint) holds; :meth:`stats_from_scalars` reads them back."""
        out = {f"sigma_{a}_{b}": float(v) for (a, b), v in stats["sigma"].items()}
        out.update({f"vfloor_{a}_{b}": float(v) for (a, b), v in stats.get("vfloor", {}).items()})
        out.update({k: float(stats[k]) for k in ("k_mean", "k_std", "floor", "line_mad") if k in stats})
        return out

    def stats_from_scalars(self, state):
        """Statistics from :meth:`stats_scalars`' names in ``state``, or None if it holds none."""
        if not all(f"sigma_{a}_{b}" in state for a, b in self._needed()):
            return None
        if self.noise == "propagated" and not all(f"vfloor_{a}_{b}" in state for a, b in self._needed()):
            return None
        if self.line_peaks and "line_mad" not in state:
            return None
        stats = {"sigma": {(a, b): float(state[f"sigma_{a}_{b}"]) for a, b in self._needed()}}
        if self.noise == "propagated":
            stats["vfloor"] = {(a, b): float(state[f"vfloor_{a}_{b}"]) for a, b in self._needed()}
        stats.update({k: float(state[k]) for k in ("k_mean", "k_std", "floor", "line_mad") if k in state})
        return stats

    # -- apply (local) ---------------------------------------------------------------------------
    def _k_map(self, coarse, stats):
        """``k`` per voxel: constant, or the sigmoid of eq. 21 of the standardized |C| (global moments)."""
        if self.k_rule == "constant":
            return self.k
        a = np.abs(coarse)
        c = (a - a.dtype.type(stats["k_mean"])) / max(stats["k_std"], 1e-30)
        return ((self.k_max - self.k_min) / (1.0 + np.exp(-c)) + self.k_min).astype(coarse.dtype)

    def _thresholds(self, c1, stats, step, vbands=None):
        """(band coefficients, threshold ``step k sigma_b``) of every kept band; ``noise="propagated"``: the
        threshold map ``step k c_b sqrt(max(V_b, vfloor_b))`` with ``vbands`` the band variances V_b."""
        k = self._k_map(c1[self.n2][self.n1], stats)
        sig = stats["sigma"]
        if self.noise == "poisson":  # Poisson noise: sigma_b(v) = sigma_b sqrt(max(C(v), floor)), C the intensity
            c = c1[self.n2][self.n1]
            k = k * np.sqrt(np.maximum(c, c.dtype.type(stats["floor"])))
        sds = {}
        for a, b in self._kept():
            null = self.null_factor if self._is_null(a, b) else (
                self.spectral_band_factor if self._is_spectral(a, b) else 1.0)
            if self.noise == "propagated":  # V_b = ||g_b||^2 x a smoothed level shared by several bands: one sqrt each
                level, norm = vbands[(a, b)]
                key = (id(level), stats["vfloor"][(a, b)] / norm)
                if key not in sds:
                    sds[key] = np.sqrt(np.maximum(level, level.dtype.type(key[1])))
                yield c1[a][b], float(step * sig[(a, b)] * norm ** 0.5 * null) * k * sds[key]
            else:
                th = step * k * (sig[(a, b)] if self.per_band else sig[(0, 0)]) * null
                f = self.band_scale.get((a, b))
                yield c1[a][b], th if f is None else th * f

    # -- line-free sources (class notes) --------------------------------------------------------
    def _line_part(self, a):
        """``a - G_s * a`` along the last axis (energy): ``G_s`` a Gaussian of ``line_sigma`` channels, nearest edge
        (:func:`gaussian_nearest`)."""
        return a - gaussian_nearest(a, self.line_sigma)

    def _footprint(self, shape, origin):
        """Local (x, y) index arrays of the footprint pixels inside a block interior of ``shape`` whose first pixel
        is the global ``origin``, or None when the block holds none."""
        from ..sources import footprint_mask  # the one definition of a footprint (here: lazily, no import cycle)

        m = footprint_mask([(i - origin[0], j - origin[1]) for i, j in self.line_peaks], (int(shape[0]), int(shape[1])))
        return np.nonzero(m) if m.any() else None

    def _line_step(self, c1, stats, step, bands, origin):
        """``(footprint pixels, delta (n, L), penalty)`` of the line step (class notes) from the coefficients ``c1``
        BEFORE they are thresholded in place and the thresholds ``bands`` (:meth:`_thresholds`, in
        :meth:`_kept` order), or None when the block holds no footprint pixel."""
        pix = self._footprint(c1[0][0].shape[:2], origin)
        if pix is None:
            return None
        r = None
        for (a, _), (band, th) in zip(self._kept(), bands):
            if a == 0:
                x = band[pix].astype(np.float64)
                t = np.asarray(th[pix] if np.ndim(th) else th, dtype=np.float64)
                kept = np.sign(x) * np.maximum(np.abs(x) - t, 0.0)
                r = kept if r is None else r + kept
        if r is None:
            return None
        line = self._line_part(r)
        k = np.asarray(self._k_map(c1[self.n2][self.n1][pix].astype(np.float64), stats), dtype=np.float64)
        th = step * self.line_factor * k * float(stats["line_mad"])
        shrunk = np.sign(line) * np.maximum(np.abs(line) - th, 0.0)
        return pix, shrunk - line, float(np.sum(np.abs(shrunk) * th))

    def _apply(self, c1, stats, step=1.0, vbands=None, origin=(0, 0)):
        """:meth:`_apply_bands`, then the line step at line-free sources (class notes) for a block whose first
        interior pixel is the global ``origin``."""
        bands = list(self._thresholds(c1, stats, step, vbands))
        line = self._line_step(c1, stats, step, bands, origin) if self.line_peaks else None
        out, pen = self._apply_bands(c1, bands)
        if line is not None:
            pix, delta, lpen = line
            out[pix] += delta.astype(out.dtype)
            pen += lpen
        return out, pen

    def _apply_bands(self, c1, bands):
        """``(coarse-coarse band + sum_b S_rho_b(w_b), sum_b sum |rho_b S_rho_b(w_b)|)`` of the coefficients ``c1``
        (the caller's scratch: the kept bands are thresholded in place, :func:`_shrink`). With one threshold per band
        (noise "mad", constant ``k``) the work runs on blocks of :data:`APPLY_ROWS` rows (axis 0) on the thread pool
        (:mod:`xfusion.threads`): every voxel gets the same operations in the same order (the cube is the same to the
        bit), the penalty is summed per block (float64 round-off). ``bands``: :meth:`_thresholds`' (coefficients,
        threshold) pairs."""
        out = c1[self.n2][self.n1].copy()
        if out.ndim < 2 or any(np.ndim(th) for _, th in bands):
            pen, tmp = 0.0, None
            for band, th in bands:
                kept, tmp = _shrink(band, th, tmp)
                pen += float(np.sum(np.abs(kept) * th, dtype=np.float64))
                out += kept
            return out, pen
        n = out.shape[0]
        starts = range(0, n, APPLY_ROWS)
        pens = [0.0] * len(starts)  # per block, summed in block order (deterministic whatever the threads do)

        fast = _kernels.takes(out, *(b for b, _ in bands))

        def task(i, rows):
            o, tmp, pen = out[rows], None, 0.0
            for band, th in bands:
                if fast:  # the same numbers in one pass (starlet_kernels.shrink_add)
                    tmp = np.empty(o.shape, o.dtype) if tmp is None else tmp
                    _kernels.shrink_add(band[rows], th, o, tmp)
                else:
                    kept, tmp = _shrink(band[rows], th, tmp)
                    np.abs(kept, out=tmp)
                    o += kept
                # |S(w_b)| summed along the last axis in the band's dtype, then in float64
                pen += float(th) * float(np.add.reduce(tmp, axis=-1).sum(dtype=np.float64))
            pens[i] = pen

        _run_tasks([lambda i=i, r=slice(r0, min(r0 + APPLY_ROWS, n)): task(i, r) for i, r0 in enumerate(starts)],
                   out.nbytes * (len(bands) + 1))
        return out, float(sum(pens))

    def _vbands_of(self, noise, halo, what):
        if self.noise != "propagated":
            return None
        if noise is None:
            raise self._no_noise(what)
        return self._variance_bands(noise[0], halo)

    @property
    def uses_origin(self):
        """True when :meth:`block_apply` needs its block's global ``origin`` (the line step's footprints)."""
        return bool(self.line_peaks)

    def block_apply(self, zo, halo, stats, noise=None, origin=(0, 0)):
        """Thresholded synthesis of a block's interior and its part of the penalty (class notes); ``noise``
        (``noise="propagated"`` only): ``(var, ...)`` blocks with the same halo (only ``var`` is read); ``origin``:
        the global (x, y) index of the block's first interior pixel (read by the line step only)."""
        zo, noise, halo = self._field(zo, noise, halo)
        return self._apply(self._coefficients(zo, halo), stats, 1.0, self._vbands_of(noise, halo, "block_apply"),
                           origin)

    def apply(self, z, stats, noise=None):
        return self.block_apply(z, 0, stats, noise)[0]

    def prox(self, z, step=1.0, with_penalty=False, noise=None):
        """Thresholded synthesis ``apply(z, statistics(z))`` (the coefficients computed once); with
        ``with_penalty`` also the weighted l1 norm of the kept coefficients. ``noise``: the EM step's
        ``(var, probe)`` maps (``noise="propagated"`` only; module notes)."""
        zo, no, h = self._field(z, noise, 0)
        c1 = self._coefficients(zo, h)
        out, pen = self._apply(c1, self._statistics(c1, z.shape, no, h), step, self._vbands_of(no, h, "prox"))
        if self.conserve_flux:
            # clip here and rescale so the total equals the input's: clipping the negative lobes of
            # thresholded coefficients otherwise adds flux (measured +1.3% on gaussian_rebin)
            np.maximum(out, 0, out=out)
            tot = float(np.sum(out, dtype=np.float64))
            if tot > 0:
                out *= np.float64(np.sum(z, dtype=np.float64) / tot).astype(out.dtype)
        return (out, pen) if with_penalty else out

    def value(self, z, noise=None):
        """Weighted l1 norm ``sum_b rho_b ||W_b z||_1`` of the (non-null) bands, current thresholds."""
        zo, no, h = self._field(z, noise, 0)
        c1 = self._coefficients(zo, h)
        stats = self._statistics(c1, z.shape, no, h)
        bands = list(self._thresholds(c1, stats, 1.0, self._vbands_of(no, h, "value")))
        pen = sum(float(np.sum(np.abs(band) * th, dtype=np.float64)) for band, th in bands)
        pix = self._footprint(z.shape[:2], (0, 0)) if self.line_peaks else None
        if pix is not None:  # the line term: rho_l |l| of the fine 2D band's line part at the footprints
            k = np.asarray(self._k_map(c1[self.n2][self.n1][pix].astype(np.float64), stats), dtype=np.float64)
            line = self._line_part(np.sum(c1[0], axis=0)[pix].astype(np.float64))
            pen += float(np.sum(np.abs(line) * self.line_factor * k * float(stats["line_mad"])))
        return pen


class Wavelet2D:
    """Soft thresholding of the 2D starlet coefficients of every slice (e.g. of low-rank maps W).

    Thresholds ``k * MAD`` per scale and per slice (each subspace component has its own scale). Beyond the field
    the maps are extended point-symmetrically (:data:`FIELD_EDGE`, as :class:`Wavelet2D1D`): the mirror made the
    edge of a map that brightens inward a valley, which the thresholding filled.
    """

    def __init__(self, n_scales=2, k=1.0):
        self.n, self.k = int(n_scales), float(k)
        self.depth = reach(self.n)

    def _coefficients(self, w):
        return _crop2(starlet2d(_extend(w, self.depth), self.n), self.depth)

    def _sigmas(self, c):
        # robust noise per scale and component: (n_scales, r)
        return np.array([[mad_sigma(c[j, :, :, i]) for i in range(c.shape[-1])] for j in range(self.n)],
                        dtype=c.dtype)

    def prox(self, w, step=1.0):
        c = self._coefficients(w)
        sig = self._sigmas(c)
        out = c[self.n].copy()
        for j in range(self.n):
            out += soft_threshold(c[j], step * self.k * sig[j])
        return out

    def value(self, w):
        c = self._coefficients(w)
        sig = self._sigmas(c)
        return float(sum(np.sum(np.abs(c[j]) * self.k * sig[j], dtype=np.float64) for j in range(self.n)))
