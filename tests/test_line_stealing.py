"""benchmarks/line_stealing.py: the truth-free compact-source rule finds point sources on diffuse emission and leaves
smooth blobs and ridges alone, with and without a sharp-spatial PSF."""
import numpy as np
import pytest


@pytest.fixture()
def ls(bench_module):
    return bench_module("line_stealing")


def _sky(psf_sigma, seed):
    n = 48
    X, Y = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    sky = 400.0 * np.exp(-0.5 * ((X - 20) ** 2 + (Y - 26) ** 2) / 12.0 ** 2) + 100.0  # smooth diffuse emission
    sky += 4000.0 * np.exp(-0.5 * ((X - 36) ** 2 + (Y - 12) ** 2) / 3.0 ** 2)     # a blob (not compact)
    sky += 3000.0 * np.exp(-0.5 * ((X + Y - 70) / 2.5) ** 2)                     # a ridge (not compact)
    points = [(8, 8), (14, 30), (25, 20), (40, 40), (10, 40)]
    for k, (i, j) in enumerate(points):
        f = 0.3 + 0.1 * k  # sub-pixel offsets: the flux split over 2x2 pixels as in xfusion.scenes
        amp = 3000.0
        sky[i, j] += amp * (1 - f) * (1 - f)
        sky[i + 1, j] += amp * f * (1 - f)
        sky[i, j + 1] += amp * (1 - f) * f
        sky[i + 1, j + 1] += amp * f * f
    psf = None
    if psf_sigma:
        r = np.arange(-4, 5)
        psf = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / psf_sigma ** 2)
        psf /= psf.sum()
        from scipy import ndimage as ndi

        sky = ndi.convolve(sky, psf, mode="nearest")
    return np.random.default_rng(seed).poisson(sky).astype(float), psf, points


@pytest.mark.parametrize("psf_sigma", [0.0, 1.0])
def test_compact_sources_finds_the_points_and_not_the_blob_or_the_ridge(ls, psf_sigma):
    for seed in range(3):
        img, psf, points = _sky(psf_sigma, seed)
        found = ls.compact_sources(img, psf)
        near = lambda p, q: abs(p[0] - q[0]) <= 1 and abs(p[1] - q[1]) <= 1  # noqa: E731
        assert all(any(near(p, q) for q in found) for p in points), (seed, found)
        assert all(any(near(q, p) for p in points) for q in found), (seed, found)  # nothing else


def test_the_compactness_rule_is_what_rejects_the_blob(ls):
    img, psf, points = _sky(0.0, 0)
    loose = ls.compact_sources(img, psf, compact=0.0)  # significance alone: the blob or ridge peaks come in too
    assert len(loose) > len(points)


def test_footprints_are_3x3_and_clipped_at_the_edge(ls):
    m = ls.footprint_mask([(0, 0), (5, 5)], (8, 8))
    assert m.sum() == 4 + 9 and m[:2, :2].all() and m[4:7, 4:7].all() and not m[3, 3]


def test_summary_counts_per_size_and_in_all(ls, tmp_path, capsys):
    def rec(name, size, d, rl, err, sources=3):
        return {"name": name, "size": "24x24x600" if size == "small" else "45x45x2400", "suite_size": size,
                "sources": sources, "line_flux_ratio_in": d, "rl_line_flux_ratio_in": rl,
                "error_share_in_footprints": err}
    import json

    a = tmp_path / "a.jsonl"
    a.write_text("\n".join(json.dumps(r) for r in (
        rec("s1", "small", 1.2, 1.0, 0.4), rec("s2", "small", 0.9, 1.0, 0.2), rec("f1", "full", 1.3, 1.1, 0.6),
        rec("none", "full", float("nan"), 1.0, 0.0, sources=0))) + "\n")  # no sources: left out
    out = ls.summary([str(a)])
    assert out["small"]["scenes"] == 2 and out["small"]["default_above_rl"] == 1
    assert out["full"]["scenes"] == 1 and out["all"]["scenes"] == 3
    assert abs(out["all"]["default_median"] - 1.2) < 1e-12 and abs(out["all"]["error_share_median"] - 0.4) < 1e-12
    assert "default above RL on 2/3" in capsys.readouterr().out
