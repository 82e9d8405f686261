"""xfusion.consistency.count_consistency: every input of a result scored against its data, masked voxels left out.

Session 33 (red team s32): the tutorials' check scored masked voxels, ``metrics.consistency`` refused the NaN that
``counts_of`` gives there, and the CLI table printed an SSIM for detector-pixel tiles beyond the first two inputs
(their axis is ``pixel_obsI``)."""
import numpy as np
import pytest

import xfusion
from xfusion import metrics
from xfusion.consistency import count_consistency
from xfusion.fuse import counts_of
from xfusion.scenes_mosaic import make_small


@pytest.fixture(scope="module")
def mosaic_fit():
    obs, _ = make_small(seed=0)
    ins = [obs["tile1"], obs["pn"], obs["tile2"]]  # rows come in this order (the sharp-spatial one second)
    m = np.ones(ins[1]["counts"].shape, bool)
    m[3:6, 4:8, :] = False  # a masked patch of the image
    ins[1] = ins[1].assign(mask=(ins[1]["counts"].dims, m))
    r = xfusion.fuse(*ins, regularization="none", max_iter=3, tol=None, progress=False)
    return r, ins


def test_every_input_scored_with_its_mask_and_no_image_for_detector_pixels(mosaic_fit):
    r, ins = mosaic_fit
    rows = count_consistency(r)
    assert list(rows) == [o.attrs["name"] for o in ins]
    assert rows[ins[1].attrs["name"]]["ssim"] is not None
    assert rows[ins[0].attrs["name"]]["ssim"] is None and rows[ins[2].attrs["name"]]["ssim"] is None
    assert "pixel_obs2" in r["counts_obs2"].dims  # the case the CLI missed
    # the same numbers from counts_of (NaN where masked) through metrics.consistency
    model, counts = counts_of(r, 1)
    assert int(np.isnan(counts.values).sum()) == 3 * 4 * counts.sizes[counts.dims[-1]]
    row = metrics.consistency(counts.transpose("x", "y", ...).values, model.transpose("x", "y", ...).values)
    assert row == rows[ins[1].attrs["name"]]
    # what is under the mask changes nothing
    hot = r.copy(deep=True)
    hot["counts_spatial"][3:6, 4:8, :] = 1e6
    assert count_consistency(hot)[ins[1].attrs["name"]] == rows[ins[1].attrs["name"]]


def test_nan_in_one_side_only_is_still_refused(mosaic_fit):
    r, _ = mosaic_fit
    model, counts = counts_of(r, 1)
    o = np.nan_to_num(counts.values)
    with pytest.raises(ValueError, match="the predicted contains 48 NaN"):
        metrics.consistency(o, model.values)
