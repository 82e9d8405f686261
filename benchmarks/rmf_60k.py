"""Peak memory of a 60,000-channel XRISM-Resolve-format RMF: write, read (sparse by default), apply.

Writes a synthetic RMF with the real Resolve column layout to a temporary directory:
``SPECRESP MATRIX`` with ``ENERG_LO``, ``ENERG_HI`` (E, keV), ``N_GRP`` (J), ``F_CHAN``,
``N_CHAN`` (variable-length PJ, ``TLMIN4 = 0``), ``MATRIX`` (variable-length PE), and
``EBOUNDS`` with 60,000 channels of 0.5 eV (``CHANNEL`` 0..59999, float32 ``E_MIN``/``E_MAX``).
Each true-energy row (0.5 eV bins) has N_GRP = 3 groups: a low-energy tail of 400 channels, a
Gaussian core (4.5 eV FWHM, +-6 sigma) and, above 2 keV, a detached 120-channel bump 1,700
channels below (an escape-like feature), so rows carry ~570 elements (~3.4e7 in all).

Then: ``read_rmf`` with the default ``sparse=None`` (must pick CSR for this size), the model's
row selection ``rmf_on_grid`` for a 2-10 keV fused grid on the Resolve channels,
``ResponseMatrix`` forward / adjoint on a (16, 16, L) cube with a dot test, and
``xfusion.observation(response=<the SparseRMF>)`` for a 6-7 keV band (only that block dense). Prints the timings
and the peak resident memory of the process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``),
which must stay below 4 GB (a dense float64 matrix alone would be 28.8 GB).

Run: ``python benchmarks/rmf_60k.py`` (about a minute on one core).
"""
from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

N_CHAN = 60_000
DE = 0.5e-3  # keV per channel and per true-energy bin


def _peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB -> GB (Linux)


def write_resolve_rmf(path):
    lo = (np.arange(N_CHAN) * DE).astype(np.float32)
    hi = ((np.arange(N_CHAN) + 1) * DE).astype(np.float32)
    lo[0] = np.float32(1e-5)                     # OGIP: ENERG_LO > 0
    sigma = 4.5e-3 / 2.3548 / DE                  # core sigma in channels
    half = int(np.ceil(6 * sigma))
    core_off = np.arange(-half, half + 1)
    core = np.exp(-0.5 * (core_off / sigma) ** 2)
    core /= core.sum()
    n_grp = np.zeros(N_CHAN, np.int32)
    f_chan, n_chan, mats = [], [], []
    for r in range(N_CHAN):
        f, n, m = [], [], []
        e = (r + 0.5) * DE
        if r >= 400 + half:                      # low-energy tail (exponential shoulder), 2% of the row
            t = np.exp(-np.arange(400, 0, -1) / 150.0)
            f.append(r - half - 400)
            n.append(400)
            m.append(0.02 * t / t.sum())
        c0, c1 = max(r - half, 0), min(r + half + 1, N_CHAN)
        f.append(c0)
        n.append(c1 - c0)
        m.append(0.96 * core[c0 - (r - half):c1 - (r - half)])
        if e > 2.0:                              # a detached bump 1,700 channels below, 1% of the row
            b = np.exp(-0.5 * ((np.arange(120) - 60) / 20.0) ** 2)
            f.append(r - 1700 - 60)
            n.append(120)
            m.append(0.01 * b / b.sum())
        n_grp[r] = len(f)
        f_chan.append(np.asarray(f, np.int32))
        n_chan.append(np.asarray(n, np.int32))
        mats.append(np.concatenate(m).astype(np.float32))
    matrix = fits.BinTableHDU.from_columns([
        fits.Column(name="ENERG_LO", format="E", unit="keV", array=lo),
        fits.Column(name="ENERG_HI", format="E", unit="keV", array=hi),
        fits.Column(name="N_GRP", format="J", array=n_grp),
        fits.Column(name="F_CHAN", format="PJ()", array=np.array(f_chan, dtype=object)),
        fits.Column(name="N_CHAN", format="PJ()", array=np.array(n_chan, dtype=object)),
        fits.Column(name="MATRIX", format="PE()", array=np.array(mats, dtype=object)),
    ], name="SPECRESP MATRIX")
    h = matrix.header
    h["TELESCOP"], h["INSTRUME"], h["FILTER"] = "XRISM", "RESOLVE", "OPEN"
    h["HDUCLASS"], h["HDUCLAS1"], h["HDUCLAS2"], h["HDUCLAS3"] = "OGIP", "RESPONSE", "RSP_MATRIX", "REDIST"
    h["HDUVERS"], h["CHANTYPE"], h["DETCHANS"], h["LO_THRES"] = "1.3.0", "PI", N_CHAN, 1e-9
    h["TLMIN4"], h["TLMAX4"] = 0, N_CHAN - 1
    ch = np.arange(N_CHAN, dtype=np.int32)
    eb = fits.BinTableHDU.from_columns([
        fits.Column(name="CHANNEL", format="J", array=ch),
        fits.Column(name="E_MIN", format="E", unit="keV", array=(ch * DE).astype(np.float32)),
        fits.Column(name="E_MAX", format="E", unit="keV", array=((ch + 1) * DE).astype(np.float32)),
    ], name="EBOUNDS")
    e = eb.header
    e["TELESCOP"], e["INSTRUME"], e["FILTER"] = "XRISM", "RESOLVE", "OPEN"
    e["HDUCLASS"], e["HDUCLAS1"], e["HDUCLAS2"] = "OGIP", "RESPONSE", "EBOUNDS"
    e["CHANTYPE"], e["DETCHANS"], e["TLMIN1"], e["TLMAX1"] = "PI", N_CHAN, 0, N_CHAN - 1
    fits.HDUList([fits.PrimaryHDU(), matrix, eb]).writeto(path)
    return int(sum(m.size for m in mats))


def main():
    from xfusion.io.ogip_read import SparseRMF, read_rmf
    from xfusion.operators.response import ResponseMatrix, rmf_on_grid

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "resolve_60k.rmf"
        t0 = time.perf_counter()
        n_elem = write_resolve_rmf(path)
        t_write = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        print(f"wrote {path.name}: {N_CHAN} rows x {N_CHAN} channels, {n_elem:.3e} stored elements, "
              f"{size_mb:.0f} MB, {t_write:.1f} s; peak so far {_peak_gb():.2f} GB")
        t0 = time.perf_counter()
        rmf = read_rmf(path)
        t_read = time.perf_counter() - t0
    assert isinstance(rmf, SparseRMF), "read_rmf(sparse=None) should choose sparse for a 60k x 60k RMF"
    m = rmf.matrix
    print(f"read_rmf (default sparse=None -> {type(m).__name__}): nnz {m.nnz:.3e}, "
          f"{(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes) / 1e6:.0f} MB in memory, {t_read:.1f} s; "
          f"peak so far {_peak_gb():.2f} GB (dense float64 would be {N_CHAN**2 * 8 / 1e9:.1f} GB)")

    # the model's use: rows of the fused 2-10 keV grid (Resolve channels), applied forward / adjoint
    eb = np.append(rmf.energy_edges[:, 0], rmf.energy_edges[-1, 1])
    fine = eb[4000:20001]
    true_edges = np.append(rmf.energy_true_edges[:, 0], rmf.energy_true_edges[-1, 1])
    t0 = time.perf_counter()
    op = ResponseMatrix(rmf_on_grid(m, true_edges, fine))
    t_op = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    z = rng.random((16, 16, fine.size - 1))
    t0 = time.perf_counter()
    y = op.forward(z)
    t_fwd = time.perf_counter() - t0
    u = rng.random(y.shape)
    t0 = time.perf_counter()
    a = op.adjoint(u)
    t_adj = time.perf_counter() - t0
    dot = abs(np.vdot(y, u) - np.vdot(z, a)) / abs(np.vdot(y, u))
    print(f"ResponseMatrix ({op.matrix.shape[0]} fused bins x {op.matrix.shape[1]} channels, sparse={op.sparse}): "
          f"build {t_op:.2f} s, forward {t_fwd:.2f} s, adjoint {t_adj:.2f} s on a (16, 16, {z.shape[-1]}) cube; "
          f"dot test relative error {dot:.1e}")
    peak = _peak_gb()
    # the observation's use: xfusion.observation(response=<SparseRMF>) keeps the band's block only
    import xfusion

    band = eb[12000:14001]                                          # 6-7 keV, 2000 channels
    t0 = time.perf_counter()
    obs = xfusion.observation(np.zeros((2, 2, band.size - 1)), dims=("x", "y", "energy"), energy_edges=band,
                              pixel_size=30.0, exposure=1e4, response=rmf)
    t_obs = time.perf_counter() - t0
    print(f"observation(response=SparseRMF) on 6-7 keV: response block {obs['response'].shape} "
          f"({obs['response'].nbytes / 1e6:.0f} MB dense), {t_obs:.2f} s")
    peak = _peak_gb()
    print(f"PEAK RESIDENT MEMORY (ru_maxrss): {peak:.2f} GB (limit 4 GB)")
    assert dot < 1e-12
    assert peak < 4.0


if __name__ == "__main__":
    main()
