"""Truth-free choice of fusion settings by Poisson thinning (data fission).

Thinning
--------
If ``d ~ Poisson(lambda)`` and ``d_A | d ~ Binomial(d, f)``, then ``d_A ~ Poisson(f lambda)`` and
``d_B = d - d_A ~ Poisson((1 - f) lambda)`` are *independent*. :func:`thin` splits every voxel
of an observation this way and scales the exposure of each part by its fraction
(``t_A = f t``, ``t_B = (1 - f) t``), so a flux cube (ph cm-2 s-1) means the same thing for the
parts and for the whole: a cube fitted on part A predicts ``(1 - f) / f`` times part A's
model counts for part B.

Selection
---------
:func:`tune` fits candidate settings on part A of BOTH instruments and scores each by the
Poisson deviance of part B of every instrument under the fitted model (scaled to part B's
exposure)::

    D = 2 sum_i sum_v [ m_iv - d_iv + d_iv log(d_iv / m_iv) ]      (0 log 0 = 0)

summed over the instruments i (the joint held-out log-likelihood up to a constant; two or more
inputs, each thinned with its own seed).
The setting with the smallest mean deviance over ``n_splits`` splits is chosen, and the
caller refits on all counts with it (:func:`xfusion.fuse` does this for ``k="auto"``,
``mu="auto"``, ``rank="auto"``, ``max_iter="auto"``).

What is selected, per regularization:

* ``wavelet2d1d``: the threshold ``k`` (in noise sigmas), walking the ladder :data:`K_LADDER`
  from 1 down while the held-out deviance improves (else up; above k = 8 only while the
  sharp-spectral held-out squared error improves too, :data:`K_GUARDED_ABOVE`). Every candidate starts from
  the same warm start (3 EM iterations on part A) and runs at most :data:`CANDIDATE_ITER`
  iterations (the ranking at 12 iterations matched the ranking at convergence on the scenes
  we checked); it is scored by its least held-out deviance over those iterations
  (:data:`LADDER_SCORE`, session 47; its last until then), and a candidate whose held-out deviance rose twice in a
  row (after >= 3 iterations) while its least value stays above the best finished candidate's score is abandoned.
  The threshold ``k * sigma`` is relative to the noise of each band, so ``k`` transfers from half to full counts
  without rescaling.
* The null-space treatment (``null_space``, ``n_scales_1d``) of the k ladder is fixed
  (:data:`NULL_SPACE_DEFAULT`, from the scene suite): a component that neither instrument sees
  changes no linear prediction. ``select_null_space=True`` compares treatments at k = 1 and 12
  iterations anyway (session 5: on a cluster-core scene it preferred zeroing by 800 deviance
  units while the truth preferred thresholding by 6 dB). But EM's positivity does recover
  fine-in-space-and-energy structure from the two instruments together (narrow lines that move
  from pixel to pixel), and a thresholded null space then needs early stopping like plain RL:
  so ``regularization="auto"`` adds ONE candidate, the ladder's best k with
  ``null_space="threshold"``, scored at its best half-data iteration (:func:`_tune_threshold`).
  Compared that way (each family at its own best iteration) the held-out deviance ranked
  zero / threshold / RL rightly on most tuning scenes (session 6, benchmarks/tuning.py
  null_iters on 18 small tuning scenes: wrong by > 1 dB on cluster_core/1001 and
  point_sources/1008 only). Its iteration count goes from half to all counts by
  :func:`sq_transfer` (session 10: :data:`RL_SQ_FACTOR` times the best half-data iterate of the sharp-spectral
  instrument's held-out squared error, which weighs residuals like the NMSE; until session 9
  :func:`threshold_transfer`, RL's line factor reduced to 2 and not applied when the sharp-spatial held-out minimum
  is the first iterate after the warm start). Since session 14 this candidate thresholds its null bands at
  :data:`NULL_FACTOR` (20) times the rule of the other bands (option ``null_factor``): only a null-band coefficient
  far above the noise survives (a bright, narrow line in a few pixels), the rest is zeroed as by the ladder's prior.
  Fitted on suite("tune", n=48) at 24x24x600 (one fit per factor at the ladder's k, NMSE at each fit's best
  iterate; ``benchmarks/tuning.py null_factor``): against the best of (factor 1, 2, 3, 5, 8, 12, 20, 40, zeroed)
  the mean loss was 0.72 dB for factor 1 (the paper's thresholded prior), 0.20 for 20, 0.26 for 40, 2.99 for
  the zeroed prior; within 0.5 dB on 17, 36, 33 and 15 of 42 scenes. The default ``fuse`` on those tuning scenes:
  mean NMSE +0.40 dB, NMSE >= RL's oracle 36 -> 39/43. Held out: see the README and benchmarks/MEASUREMENTS.md.
* The zeroed candidate's iteration count (session 8; ``regularization="auto"`` when it wins, :func:`_zero_iterations`):
  EM with a prior stops on the change of the iterate (tol 1e-4), which rarely fires, so the zeroed prior ran to
  ``max_iter=50`` although its NMSE peaks after 3-30 iterations on many scenes and then falls (synchrotron/1007 of
  the tuning suite: 26.00 dB at 7 iterations, 22.52 at 50). The ladder's winning run on part A is continued (no new
  warm start) until its held-out minimum is well behind, and its best iterate ``n_half`` (warm start included) goes
  to all counts as ``round(1.25 n_half)`` (:func:`zero_transfer`, :data:`ZERO_FACTOR`), at most 50. Against the
  families stopped early the zeroed candidate is scored at the best iterate of its ladder run (free), not its last.
  Measured on suite("tune", n=48) indices 0-23 (24x24x600; the split ``select`` uses; the zeroed ladder fit of every
  scene, NMSE at every full-data iteration; benchmarks/tuning.py zero_data / zero_rules, s8_quality_zero_*.log): NMSE
  lost against the scene's best iteration <= 50 in hindsight: fuse's stop (50 iterations) mean 0.56 dB, worst 3.48,
  within 0.5 dB on 14/24; this rule 0.10 / 0.44 / 24/24 (factor 1: 0.14/0.75/22, 1.5: 0.12/0.75/23, 2: 0.20/1.28/21;
  the best single fixed count, 20: 0.32/1.70/20). Fresh tuning seeds 24-47, checked after freezing: 0.55/2.77/16 ->
  0.15/1.51/22 (worst synchrotron/1037, best at 3 iterations, the rule 10). Against the best of 10/20/30/50/100
  iterations: 0.49 -> 0.03 dB (0-23), 0.41 -> 0.01 (24-47). With the family choice (offline, full-data curves of
  all three candidates; benchmarks/tuning.py zero_family): "auto" mean NMSE 20.63 -> 20.73 dB on 0-23 (RL oracle
  20.58; scoring the zeroed candidate at its best iterate flips synchrotron/1002, /1007, /1012 from the thresholded
  candidate to it, +0.33, +0.53, +0.44 dB, and point_sources/1018, -0.10), 20.42 -> 20.51 on 24-47. Held out,
  measured after freezing (benchmarks/suite.py --heldout --select; s8_quality_heldout_*.log): 24 small scenes mean
  NMSE 19.73 -> 19.89 dB (per scene -0.14 to +1.55), NMSE >= RL oracle 15 -> 18/24; 8 full-size scenes 17.20 ->
  17.96 dB, point_sources/500008 16.64 -> 18.87 (RL oracle 17.99). With the spectral-shape prior of the delivered
  cube (``shape_prior``, commit 4e45484) both ways: small 20.16 -> 20.30 dB, NMSE >= RL oracle 17 -> 19/24. Cost: the
  continuation runs only when the zeroed candidate wins, and the final fit then runs ``n_full`` iterations instead
  of 50: the demo (gaussian_rebin, "auto", with shape_prior) took 23.8 s CPU instead of 32.6 (12 iterations, 18.02
  dB instead of 17.65); worst case, a half-data curve still falling at the cap (held-out mixed/500004, full size):
  ``select`` 12.4 -> 18.4 s CPU (final fit unchanged, 50 iterations). Session 61 (:func:`bottom_rung_count`): on a
  continuum sky whose walk keeps the zeroed prior at the ladder's lowest rung with ``n_half >= 8``, the count is 50
  (an early stop there adds regularization the walk did not want; small never-run rows +0.56 and +0.84 dB on
  average over 3 and 5 touched; the one full-size row it touches anywhere -1.02 dB). Session 71 (:data:`SHAPE_STEP`):
  on a continuum sky the walk's k moves half-way toward the rung that predicts the held-out counts best through the
  spectral-shape prior (never-run continuum rows: small 8 of 77 changed, +0.65 to +2.71 dB; full size 5 of 19, +0.47
  to +1.17 dB; all gaining).
* What cannot change the choice is not run (session 12, ``tune(complete=False)``, the default of ``select``): without
  lines the thresholded candidate and plain RL (the family prior takes the zeroed ladder whatever they score); with
  one split the thresholded run stops at its own deviance minimum when plain RL (now run first) or the zeroed
  ladder's margin already beats it, instead of waiting for its squared error's later minimum. Same choice and
  bit-identical fits on 24 held-out full-size, 48 small and 9 small-mosaic scenes; tuning EM steps -10% at full size.
  Cost then (24 held-out full-size scenes, CPU): tuning + final fit = median 2.5x (max 4.5x, within 3x on 16/24) one
  fit with fixed settings (k=1, zeroed null space, 50 iterations); median 6.4x the chosen fit, often 5-16 iterations.
* Plain RL's run needs nothing from the ladder's, so where the prior is sure to want it (lines) it runs on its own
  thread (:func:`xfusion.threads.background`) beside the ladder and the thresholded run, which asks for its score
  only when its own minimum is behind (session 62). Both submit their parallel work to one pool: the serial parts
  of each (memory-bound maps and sums) overlap the other's. Every score, the choice and the cube are those of the
  runs in turn; ``select`` on the slowest held-out full-size scene 43.1 -> 40.1 s wall. A failure under it cancels
  the RL run (:func:`xfusion.threads.check_cancelled` at each of its iterations).
* ``none`` (plain two-instrument Richardson-Lucy): one EM run on part A, scored at every
  iteration (the forward models are computed by EM anyway: nearly free) until the minimum
  is well behind; the best half-data iteration ``n_half`` is transferred to all counts by
  :func:`rl_transfer`: ``n_half`` itself, or :data:`RL_LINE_FACTOR` times it when the held-out
  deviance of the sharp-spectral instrument(s) alone is still falling after the sharp-spatial
  one's minimum (lines being sharpened, which the joint deviance undervalues; see
  :data:`RL_LINE_FACTOR` for the measurements), or when the summed sharp-spectral spectrum shows
  resolved lines (:func:`line_roughness` >= :data:`RL_LINE_ROUGHNESS`, session 8: the order of the
  two minima is decided by one or two iterations when ``n_half`` is small); since session 10 at least
  :data:`RL_SQ_FACTOR` times the best half-data iterate of the sharp-spectral held-out SQUARED error
  (:func:`sq_transfer`; the deviance's minimum comes where the faint voxels start to fit noise, the squared error's
  where the bright lines, which the NMSE weighs, stop improving; the run goes on until both minima are behind).
* ``lowrank`` family: ``rank`` (:data:`RANK_LADDER`), then ``mu`` (``lowrank_sobolev``,
  :data:`MU_LADDER`) by separate fits of part A through :func:`xfusion.fuse`, scored with
  the delivered (clipped) flux cube; for plain ``lowrank`` the iteration count at a ladder
  of iteration counts, transferred like RL. These are NOT cheap (one fit per candidate).

* ``regularization="auto"`` (:func:`select`, :func:`resolve_auto`): the wavelet candidates above,
  the ladder's best k with a thresholded null space stopped early, and plain RL at its best
  half-data iteration, scored on the same split; the smallest held-out deviance picks (plain RL
  or the thresholded prior stopped early keep Doppler-split lines on bright line-rich scenes;
  the zeroed starlet prior wins on faint or continuum-dominated ones). On 18 small tuning scenes
  (24x24x600, seeds 1001-1017, session 6) this three-way choice gave mean NMSE 19.80 dB against
  19.58 dB for the two-way one (RL oracle 19.80 dB): +2.2 dB on synchrotron/1007, +1.4 on
  point_sources/1003, +1.1 on synchrotron/1012, -1.0 on cluster_core/1006.
* The family prior of ``regularization="auto"`` (sessions 9-10, :func:`_family_prior`, :data:`LINE_RICHNESS`,
  :data:`FAMILY_MARGIN`, :data:`FAMILY_MARGIN_BRIGHT`, :data:`FAMILY_COUNTS_SPLIT`): a prior fitted on the tuning
  suite, NOT a likelihood. The zeroed and thresholded candidates differ in the bands fine in space and in energy,
  which neither instrument sees linearly, so the held-out deviance cannot rank them there (session 7: it preferred the
  worse candidate by 5-29 paired standard errors on 12 of the 14 misses of suite("tune", n=48)). Whether those bands
  hold signal is read from the data: the summed sharp-spectral counts (lines, :func:`line_richness` >=
  :data:`LINE_RICHNESS`: they move from pixel to pixel and live exactly there; or a continuum only, smooth in energy)
  and the counts per fused voxel (all inputs; few: those bands are noise). Without lines the zeroed ladder is chosen.
  With lines it is chosen only if its held-out deviance beats the thresholded candidate's by more than
  :data:`FAMILY_MARGIN` (9) Poisson standard errors of the paired difference (:func:`_paired_difference`, both at
  their best half-data iterates), :data:`FAMILY_MARGIN_BRIGHT` (18) with at least :data:`FAMILY_COUNTS_SPLIT` (1.7)
  counts per fused voxel. Session 9 had the 9-SE margin with lines and the deviance alone without; it was fitted at
  24x24x600 only, where the thresholded prior wins many line scenes, whereas at full size (45x45, Table 1 geometry;
  the same spec has ~14x fewer counts per voxel) the zeroed prior was the better family on 9 of the 10 tuning scenes,
  lines included (so the discriminator is counts per voxel, not lines alone). Measured offline (benchmarks/tuning.py
  family_data: every candidate's NMSE and velocity at every full-data iteration, delivered through the shape prior;
  replay of "auto" with the current iteration transfers: benchmarks/tuning.py family_rules; RL oracle = best RL
  iterate <= 100), session 9 -> 10: fitted on suite("tune", n=48) 0-23 at 24x24x600: mean NMSE 21.35 -> 21.69 dB (RL
  oracle 20.56), NMSE >= RL oracle 16 -> 20/24, velocity RMS <= RL oracle's 16/19 both, within 0.5 dB of the best of
  the three families 18 -> 23/24; and on 0-9 at full size: unchanged (19.58 dB, zeroed on all 10, 9/10 within 0.5 dB;
  point_sources/1008 -0.69). Not fitted on: 24-47 at 24x24x600: 21.17 -> 21.32 dB (RL oracle 20.34), 18 -> 19/24,
  velocity 16/19 both, 18 -> 20/24 (the gain all from the continuum rule: synchrotron/1027 +1.82, /1047 +1.71 dB; no
  line scene changed; these numbers were printed next to the fitted ones while the values were chosen inside the
  fitted plateau); full size 10-22 (13 scenes, recorded after freezing but for 1010, which changed nothing): 21.72 ->
  22.03 dB (RL oracle 19.13), NMSE >= RL oracle 12/13 and velocity 10/10 both, within 0.5 dB of the best family 12 ->
  13/13 (point_sources/1013, 33 counts per fused voxel: thresholded instead of zeroed, 15.59 -> 19.46 dB;
  synchrotron/1017: zeroed instead of RL, +0.17). The gain on the fitted small scenes: the continuum rule
  (synchrotron/1017 +2.33, /1022 +1.26 dB, plain RL had won the deviance by 19 and 13 SE) and the bright margin
  (snr_shell/1000 +0.94, cluster_core/1006 +2.11, point_sources/1018 +1.15, snr_shell/1020 +0.50 dB: thresholded
  instead of zeroed, 10-17 SE). Disclosure: the continuum rule is the no-lines half of session 9's first version,
  whose line half (never the zeroed prior with lines) lost 0.9-2.5 dB on 9 of 10 full-size line tuning scenes and 0.83
  dB on the held-out full-size scenes; session 9's held-out results (which scenes lost, not their data) were known
  when this rule was fitted. Held out, measured after freezing: see :data:`FAMILY_MARGIN_BRIGHT`.

* The spectral-shape prior of the delivered cube (session 20, :func:`tune_shape`): after the family, its
  pseudo-counts ``n0`` among :data:`SHAPE_LADDER` (1e3-3e7) by the held-out deviance of the chosen fit on half the
  counts, kept at 1e4 unless another rung is better by more than one paired standard error. Since session 21 the
  half-data cube is the tuning's own iterate of the chosen candidate (the one its count was transferred from), so the
  stage costs no fit and long fits are scored too. Since session 37 a second stage (:func:`_tune_pixel_level`) gives
  level 0 (each pixel against its neighbourhood) its own pseudo-counts from :data:`PIXEL_LADDER` when they predict the
  held-out half better than ``n0`` by more than one paired standard error: ``shape_prior=[n0, N]``. Since session 44
  ``fuse`` then raises level 0 to at least :data:`PIXEL_FLOOR` (1e5; :func:`with_pixel_floor`), a fixed prior on the
  pixel-scale line-centroid scatter that no held-out count can score (adopted on fresh seeds, criteria frozen first).

Everything runs in memory (NumPy); :func:`tune` and :func:`select` refuse Dask-backed observations with a message.
:func:`xfusion.fuse` given Dask-backed observations tunes on in-memory copies of them when the tuning fits
:data:`IN_MEMORY_BYTES` (:func:`in_memory_copies`) and runs the final fit on Dask; only larger problems take the
pre-thinning fallbacks (recorded).
"""
from __future__ import annotations

import json
import numbers
import math
import time
import warnings

import numpy as np
import xarray as xr

from .grid import SPATIAL, SPECTRAL, assign_roles, fusion_grid, input_positions, require_datasets
from .likelihood import PoissonLikelihood, PoissonTerm
from .observation import validate
from .operators.model import build_model
from .regularizers.shape import AUTO_PSEUDO_COUNTS
from .regularizers.sparsity import Wavelet2D1D
from .solvers.backend import fitting
from .solvers.em import EMProx
from .solvers.loop import stopping_rule
from .threads import background, check_cancelled

#: Transfer of the plain-RL iteration count from a half (f = 0.5) to all counts:
#: ``n_full = round(RL_TRANSFER[0] * n_half ** RL_TRANSFER[1])``, clipped to [1, RL_MAX_ITER].
#: Since session 5 used only for plain low rank (plain RL: :data:`RL_LINE_FACTOR`).
#: A fitted rule, not a law. Measured (benchmarks/tuning.py rl_suite tune 10 small; 10 suite scenes of
#: 24x24x600, all five kinds): (n_half -> oracle full-data iteration) 53->141, 5->26, 2->2, 2->3,
#: 90->150+, 15->29, 61->150+, 6->6, 8->25, 4->10 (median ratio 2.2); NMSE lost against the oracle
#: iteration: ratio 1: mean 1.39 dB, worst 5.2 dB; ratio 1.41: mean 0.89, worst 3.5; ratio 2: mean
#: 0.83 dB, worst 3.1 dB (synchrotron scenes, whose RL optimum does not move with the counts), within
#: 0.5 dB in 6 of 10. On the toys (small, small x0.1, gaussian_rebin): 5->16, 5->20, 3->3, 3->4, 4->4.
RL_TRANSFER = (2.0, 1.0)
RL_MAX_ITER = 200
#: Plain RL (session 5): the held-out deviance's best half-data iteration ``n_half`` comes EARLIER than the
#: truth's (NMSE) best full-data iteration on scenes with lines (ratio 1.5-5) but not on continuum scenes (ratio
#: 1): not a counts effect (at fraction 0.8 the best iteration barely moves: 8 vs 7 at 0.5, oracle 25), but the
#: data-space deviance weighting spatial noise more than the sharpening of lines. A truth-free sign of the
#: difference: the sharp-spectral instrument's own held-out deviance keeps improving after the sharp-spatial
#: one's (n_spectral > n_spatial on all 8 line scenes measured, <= on all 4 continuum ones). Rule:
#: ``n_full = n_half`` if ``n_spectral <= n_spatial`` else ``RL_LINE_FACTOR * n_half``. On 12 small suite scenes
#: (24x24x600, tune seeds 1000-1013) the NMSE lost against the oracle iteration: mean 0.14 dB, worst 0.72, within
#: 0.5 dB in 11/12 (old rule n_full = 2 n_half: mean 1.07, worst 3.08, 5/12; factor 2.5: 0.19/1.37/11; 4:
#: 0.19/1.04/10). Fitted on those scenes: the held-out seeds check it (benchmarks/suite.py --heldout).
RL_LINE_FACTOR = 3.0
#: diagnostics in a plain-RL choice (not fuse options)
DIAG_KEYS = ("half_data_iteration", "spatial_iteration", "spectral_iteration", "line_roughness",
             "sq_error_iteration", "stopped_hopeless")
#: Session 10: factor from the best half-data iterate of the sharp-spectral instrument(s)' held-out SQUARED ERROR
#: (``n_sq``; :meth:`_Split.sq_error_parts`) to all counts, for plain RL (``n_full = max(rl_transfer(...),
#: round(RL_SQ_FACTOR n_sq))``, :func:`sq_transfer`) and for the thresholded candidate (``n_full = round(RL_SQ_FACTOR
#: n_sq)``, warm start included; replaces :func:`threshold_transfer`). Why: the Poisson deviance divides each residual
#: by its counts, so its minimum comes where the FAINT voxels start to fit noise, while the NMSE of the fused cube
#: weighs every voxel's error alike and keeps improving while bright lines are sharpened; the squared error of the
#: held-out sharp-spectral counts weighs residuals like the NMSE (and sees the lines), and is, like the deviance, a
#: proper score of the predicted mean (its minimum is unbiased). Its minimum comes later than the deviance's on line
#: scenes (suite("tune", n=48) at 24x24x600: RL 2x on cluster_core/1001, 1006, mixed/1009, snr_shell/1010) and at the
#: same iterate on continuum scenes (synchrotron), so one factor serves both. Fitted on suite("tune", n=48) indices
#: 0-23 (24x24x600, benchmarks/iterations.py curves + replay on benchmarks/tuning.py family_data rows: every
#: candidate's NMSE through the shape prior at every full-data iteration): factors 1 / 1.25 / 1.5 / 2 for RL and 1 /
#: 1.25 / 1.5 for the thresholded candidate compared by the mean NMSE "auto" delivers; 1.25 for both was best.
#: See :data:`SQ_RULE` for the measured effect (fitted and not fitted on).
RL_SQ_FACTOR = 1.25
#: Line-richness threshold of :func:`line_roughness` (session 8): at or above it plain RL's iteration count is
#: multiplied by :data:`RL_LINE_FACTOR` even when the sharp-spectral held-out deviance is best no later than the
#: sharp-spatial one's. Why: on small n_half (<= 9) the order of the two minima is decided by one or two iterations
#: and misses lines that the summed spectrum shows plainly (suite("tune", n=48), 24x24x600: point_sources/1008
#: roughness 64, n_half 6, oracle 12; point_sources/1023: 150, 8, oracle 24); smooth-continuum scenes read
#: 0.9-1.4 (synchrotron, the expectation for pure noise is 1), and no scene with n_spectral <= n_spatial read
#: between 2.3 and 64. 10 is a round value in that gap, not a fitted optimum. Measured (benchmarks/suite.py
#: --select, small): tuning 0-23 truth-free RL pick within 0.5 dB of the RL oracle 17 -> 19/24 (1008: 6 -> 18
#: iterations, oracle 12; 1023: 8 -> 24, oracle 24, "auto" 20.70 -> 21.46 dB); fresh tuning 24-47 unchanged (21/24;
#: no scene there has the minima in that order and a roughness >= 10). Held out after freezing (24 small scenes):
#: RL pick within 0.5 dB 19 -> 21/24 (point_sources/500023: 11 -> 33 iterations, oracle 60, "auto" 22.25 -> 24.39
#: dB; point_sources/500013: 8 -> 24, oracle 41), mean "auto" NMSE 20.30 -> 20.39 dB, NMSE >= RL oracle 19/24 both.
#: Full size held out (8 scenes, none chose RL): unchanged, mean 18.55 dB. A power-law continuum through the shared
#: microcalorimeter ARF (1 eV channels, 0.5-8 keV) reads 0.92-1.08 up to 1e8 counts (no false trigger there); coarse
#: CCD channels would read higher, but the roughness is taken on the sharp-spectral instrument only.
RL_LINE_ROUGHNESS = 10.0
#: :func:`line_richness`: the coarsest binning keeps at least this many bins of the spectrum (b <= 16 of 600 channels,
#: <= 64 of 2400)
LINE_MIN_BINS = 32
#: Family prior of ``regularization="auto"`` (sessions 9-10, :func:`select`, :func:`_family_prior`; a prior fitted on
#: the tuning suite, not a likelihood): the held-out deviance cannot see the bands neither instrument constrains (fine
#: in space AND in energy), and on suite("tune", n=48) it preferred the worse family by 5-29 paired standard errors
#: (session 7). What those bands hold is read from the summed sharp-spectral spectrum: lines (:func:`line_richness` >=
#: this value), which move from pixel to pixel and live exactly there, or a continuum only, smooth in energy, which
#: leaves them empty. Without lines the zeroed ladder is the family (session 10: it was the best of the three, or within
#: 0.05 dB of it, on all 12 continuum-only tuning scenes, small and full size, while plain RL won the deviance by 13-27
#: SE on the 4 brightest and lost 1.3-2.3 dB); with lines the zeroed ladder must beat the thresholded candidate by a
#: margin (:data:`FAMILY_MARGIN`, :data:`FAMILY_MARGIN_BRIGHT`). The value: suite("tune", n=48), summed sharp-spectral
#: counts: the 10 synchrotron (continuum-only) scenes read 1.2-17.6 at 24x24x600 and 1.1-16.5 at 45x45x1600-2400 (the
#: largest a bright one through a realistic ARF); the 38 scenes with lines read 650 and above at 24x24x600. At full size
#: two faint mixed scenes read below 100 (mixed/1014 76, /1039 93; 2000 channels allow binning up to 32 only) and are
#: treated as continuum (the zeroed prior: their better family at small size). 100 was set from the small-size gap.
LINE_RICHNESS = 100.0
#: margin (Poisson standard errors of the paired held-out difference) the zeroed ladder must win by when there are lines
#: and fewer than :data:`FAMILY_COUNTS_SPLIT` counts per fused voxel (session 9: fitted on tuning scenes 0-23 at
#: 24x24x600 among 5, 9, 12; session 10: still the best of 5/7/9/11 with the counts split, module docstring).
FAMILY_MARGIN = 9.0
#: margin when there are lines and at least :data:`FAMILY_COUNTS_SPLIT` counts per fused voxel (session 10). Why: with
#: many counts per unknown the fine-in-space-and-energy bands hold resolved line structure that thresholding keeps and
#: zeroing removes, while the deviance still prefers the zeroed prior by 10-17 SE (tuning 24x24x600 scenes
#: snr_shell/1000, point_sources/1018, snr_shell/1020, cluster_core/1006: the thresholded candidate better by 0.5-2.1
#: dB); with few counts per voxel (8 of the 10 full-size tuning scenes 0-9) those bands are noise and the zeroed prior
#: was the better family on 9 of those 10 scenes, winning the deviance by 9.4-49 SE. Fitted on suite("tune", n=48) 0-23
#: at 24x24x600 and 0-9 at full size (offline replay of "auto", benchmarks/tuning.py family_data / family_rules; plateau
#: 17-31 SE; 18 = twice :data:`FAMILY_MARGIN`). Held out, measured after freezing the session-10 rule
#: (benchmarks/suite.py --heldout --select and benchmarks/tuning.py hindsight; s10_family_heldout_*.log), session 9 ->
#: 10: 24 small scenes: mean NMSE 20.57 -> 20.66 dB (RL oracle 19.61); three choices changed, zeroed -> thresholded
#: (cluster_core/500016 24.85 -> 25.97 dB, mixed/500019 13.68 -> 14.75, snr_shell/500015 11.87 -> 11.70); baselines
#: 23/24, NMSE >= RL oracle 20/24, velocity <= RL oracle's 16/19 and flux 24/24 unchanged; setting within 0.5 dB of the
#: best visited (all 24) 19 -> 21/24, mean loss -0.27 -> -0.18 dB, worst -1.52 dB both (point_sources/500003: the
#: thresholded candidate chosen, the zeroed one better). 8 full-size scenes: no choice changed (mean 18.50 dB). The demo
#: (gaussian_rebin): unchanged (zeroed prior, 12 iterations, 18.02 dB).
FAMILY_MARGIN_BRIGHT = 18.0
#: counts per fused voxel (all inputs, both thinning parts, over the fused grid's voxels) at and above which
#: :data:`FAMILY_MARGIN_BRIGHT` applies (session 10; fitted: the plateau on the tuning scenes was 1.4-2.06, 1.7 its
#: geometric middle). The same scene reads ~14x fewer counts per voxel at 45x45x2400 than at 24x24x600.
FAMILY_COUNTS_SPLIT = 1.7
FAMILY_PRIOR_RULE = (f"line_richness of the summed sharp-spectral counts >= {LINE_RICHNESS:g}: the zeroed ladder "
                     f"candidates are chosen only if their held-out deviance beats the thresholded candidate's by more "
                     f"than {FAMILY_MARGIN:g} paired Poisson standard errors ({FAMILY_MARGIN_BRIGHT:g} with >= "
                     f"{FAMILY_COUNTS_SPLIT:g} counts per fused voxel); else: the zeroed ladder only")
RL_RULE = ("n_full = the larger of (n_half if the sharp-spectral held-out deviance is best no later than the "
           f"sharp-spatial one's and the summed sharp-spectral spectrum's roughness is below {RL_LINE_ROUGHNESS:g}, "
           f"else {RL_LINE_FACTOR:g} n_half) and {RL_SQ_FACTOR:g} n_sq (n_sq: best half-data iterate of the "
           "sharp-spectral held-out squared error)")
#: Session 10 (:data:`RL_SQ_FACTOR`), measured offline on suite("tune", n=48) at 24x24x600 (benchmarks/iterations.py
#: replay; NMSE of the "auto" choice, family prior as shipped, through the shape prior), session-9 rules -> this rule:
#: tuning indices 0-23 (fitted on): mean 21.35 -> 21.48 dB (RL oracle 20.58), NMSE >= RL oracle 16 -> 21/24; plain
#: RL's loss against its own best full-data iteration mean -0.37 -> -0.17 dB (within 0.5 dB 19 -> 22/24), the
#: thresholded candidate's -0.50 -> -0.14 dB (19 -> 22/24); indices 24-47 (checked after freezing): 21.17 -> 21.27 dB
#: (RL oracle 20.40), 16 -> 19/24; RL -0.51 -> -0.34 dB (19 -> 19/24), thresholded -0.60 -> -0.42 dB (15 -> 18/24).
#: Not fixed: bright point sources, whose RL NMSE still rises at 200 iterations where no held-out score (deviance or
#: squared error, either instrument) has its minimum (point_sources/1028, /1043: 128 and 86 iterations, best 200).
SQ_RULE = (f"n_full = {RL_SQ_FACTOR:g} n_sq (n_sq: best half-data iterate, warm-start iterations included, of the "
           "sharp-spectral held-out squared error)")
#: k ladder of the coarse wavelet search and the null-space treatments compared at k = 1. The walk starts at 1
#: and goes down, or up while the held-out deviance improves, so the rungs above 3 cost only where they are
#: reached: on faint full-size scenes (45x45x2000-2400, < 0.2 counts per voxel) the old top rung 3 was chosen
#: with the deviance still falling (synchrotron/1007: held-out deviance min at k = 4.5, NMSE 19.41 dB at k = 3,
#: 20.10 at 4.5, 20.37 at 6, 20.52 at 8; session 5, benchmarks/tuning.py kgrid)
#: Session 19: rungs 12 and 16 above 8. In 23 of 72 full-size held-out scenes (none of the small ones) the walk
#: ended at 8 with the held-out deviance still falling. A step up from 8 counts only if it ALSO lowers the held-out
#: squared error of the sharp-spectral instrument(s) (:meth:`_Split.sq_error_parts`, the score that weighs voxels
#: like the NMSE, see :data:`RL_SQ_FACTOR`): past 8 the joint deviance can fall through the sharp-spatial
#: instrument alone while the lines are smoothed away (the XMM-pn + Resolve example: 8 -> 12 lowered the deviance by
#: 220, 9 standard errors, all of it pn's, and raised Resolve's squared error; k = 12-16 lost 0.1-0.5 dB there).
#: Measured in session 19 (benchmarks/tuning.py ladder_top, QUALITY_HISTORY.md).
K_LADDER = (0.125, 0.25, 0.5, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 12.0, 16.0)
#: the rungs above this one need the sharp-spectral squared error to fall too
K_GUARDED_ABOVE = 8.0
#: ``lowrank_wavelet2d`` fits every rung, and its cost and quality were measured with the ladder up to 8
LOWRANK_K_LADDER = K_LADDER[:K_LADDER.index(K_GUARDED_ABOVE) + 1]
NULL_SPACE_CANDIDATES = (("zero", 5), ("zero", 2), ("threshold", 5))
#: null-space treatment and number of 1D scales of the k ladder (chosen on the scene suite, benchmarks/tuning.py
#: treatments); "auto" also scores the ladder's best k with the null space thresholded and stopped early
#: (:func:`_tune_threshold`): on small bright tuning scenes zeroing cost 1-8 dB against it (session 6, null_iters)
NULL_SPACE_DEFAULT = ("zero", 2)
RANK_LADDER = (3, 5, 10, 20)
MU_LADDER = (0.001, 0.003, 0.01, 0.03, 0.1)


# ----------------------------------------------------------------------------- thinning
def _counts_array(obs, what):
    c = obs["counts"].data
    if not isinstance(c, np.ndarray):
        raise NotImplementedError(f"{what}: thinning needs in-memory counts; load the observation first "
                                  "(obs = obs.load()) or pass explicit settings instead of 'auto'")
    return c


class NotPhotonCounts(ValueError):
    """Counts that Poisson thinning cannot split (negative, non-finite, fractional or too large): raised by
    :func:`thin`; :func:`xfusion.fuse` adds which of its settings were left to thinning."""


def thin(obs: xr.Dataset, fraction: float = 0.5, seed=None) -> tuple[xr.Dataset, xr.Dataset]:
    """Binomial split of an observation's counts into two independent Poisson observations.

    Parameters
    ----------
    obs : observation (:func:`xfusion.observation`) with non-negative integer counts (x, y, energy).
    fraction : f in (0, 1): each count goes to the first part with probability f.
    seed : anything :func:`numpy.random.default_rng` accepts.

    Returns
    -------
    (part, rest): copies of ``obs`` with counts ``d_A ~ Binomial(d, f)`` and ``d - d_A`` (so
    ``d_A + d_B == d`` exactly and, for Poisson data of mean lambda, ``d_A ~ Poisson(f lambda)``
    and ``d_B ~ Poisson((1-f) lambda)`` are independent), and exposures ``f t`` and ``(1-f) t``
    (s), so fluxes fitted on either part are comparable with fluxes fitted on all counts.
    The input is not modified; the parts carry a ``thinning`` attribute (JSON).
    """
    validate(obs)
    if isinstance(fraction, bool) or not (isinstance(fraction, numbers.Real) and 0.0 < float(fraction) < 1.0):
        raise ValueError(f"fraction must be a number in (0, 1); got {fraction!r}")
    f = float(fraction)
    c = _counts_array(obs, "thin")
    if np.any(c < 0) or not np.all(np.isfinite(c)) or np.any(c != np.round(c)) or np.any(c >= 2.0 ** 62):
        raise NotPhotonCounts("thinning needs photon counts: non-negative integers (Poisson data) below 2**62; these "
                              "counts are negative, non-finite, fractional or implausibly large (background-subtracted "
                              "or rescaled data cannot be thinned). Fuse them with explicit settings instead of 'auto', "
                              "e.g. regularization='wavelet2d1d', k=1.0, n_scales_1d=2, null_space='zero', max_iter=50 "
                              "(or regularization='none', max_iter=50)")
    rng = np.random.default_rng(seed)
    a = rng.binomial(c.astype(np.int64), f)
    b = c.astype(np.int64) - a
    t = float(obs["exposure"].values)
    info = {"fraction": f, "seed": None if seed is None else str(seed)}
    parts = []
    for cnt, frac, which in ((a, f, "part"), (b, 1.0 - f, "rest")):
        o = obs.assign(counts=obs["counts"].copy(data=cnt.astype(c.dtype)),
                       exposure=((), t * frac, dict(obs["exposure"].attrs, units="s")))
        o.attrs = dict(obs.attrs, thinning=json.dumps(dict(info, which=which, exposure_factor=frac)))
        parts.append(o)
    return parts[0], parts[1]


def deviance(data, model, mask=None) -> float:
    """Poisson deviance ``2 sum [m - d + d log(d/m)]`` (float64; +inf where m <= 0 < d).

    ``data`` and ``model`` are arrays of the same shape (counts); ``mask`` (bool, optional)
    keeps only the True voxels.
    """
    return _Deviance(data, mask)(model)


class _Deviance:
    """:func:`deviance` against fixed ``data`` (and ``mask``) for any number of models: where the data are > 0 is
    found once, as the held-out part B is scored at every iterate. The same operations as the formula, element by
    element and in its order, so the same float (the counts enter as float64, an exact conversion, as they did): for
    a voxel without counts ``d log(d/m)`` is taken as ``0 * log(1) = 0`` (data >= 0; other data keep the explicit 0).
    Holds a view of ``data`` (a copy of the kept voxels with a mask) and one bool per voxel."""

    def __init__(self, data, mask=None):
        d = np.asarray(data)
        self.keep = None if mask is None else np.asarray(mask, dtype=bool)
        self.d = d[self.keep] if self.keep is not None else d
        self.pos = self.d > 0
        self.zeros = bool(np.all((self.d == 0) | self.pos))  # else the explicit 0 where not > 0

    def __call__(self, model) -> float:
        m = np.array(model, dtype=np.float64)  # a copy: written below
        if self.keep is not None:
            m = m[self.keep]
        if np.any((m <= 0) & self.pos):
            return math.inf
        np.maximum(m, 0.0, out=m)
        dl = np.where(self.pos, m, 1.0)
        np.divide(self.d, dl, out=dl, where=self.pos)  # d / m where d > 0, 1 elsewhere
        np.log(dl, out=dl)
        np.multiply(self.d, dl, out=dl)
        if not self.zeros:
            dl = np.where(self.pos, dl, 0.0)
        np.subtract(m, self.d, out=m)
        np.add(m, dl, out=m)
        return float(2.0 * np.sum(m))


# ----------------------------------------------------------------------------- one split
class _Split:
    """Models of part A (exposure f t), its Poisson terms and the held-out part B of every instrument.

    ``observations``: the inputs in model order (sharp-spatial, sharp-spectral, then any further ones,
    :func:`xfusion.grid.input_positions`); ``models``: ``(grid, [scaled models], scale)`` shared by
    the splits (the scaled models do not depend on the exposure fraction) or None to build them.
    """

    def __init__(self, observations, fraction, seed, dtype, models=None):
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        # one child per input; the first two are those of the two-input splits (same parts as before)
        kids = ss.spawn(max(2, len(observations)))
        pairs = [thin(o, fraction, np.random.default_rng(k)) for o, k in zip(observations, kids)]
        self.parts = [a for a, _ in pairs]
        (self.xa, self.xb), (self.ya, self.yb) = pairs[0], pairs[1]
        if models is None:
            grid, ms = _build_models(self.parts)
            scale = float(np.mean(ms[0].weights))
            models = (grid, [m.scaled(scale) for m in ms], scale)
        self.models = models
        self.grid, ms, self.scale = models
        mx = ms[0]
        self.dtype = np.dtype(dtype)
        masks = [o["mask"].values if "mask" in o else None for o in observations]
        self.masks = masks
        self.terms = [PoissonTerm(m, a["counts"].values, k, self.dtype) for m, a, k in zip(ms, self.parts, masks)]
        self.held = [b["counts"].values for _, b in pairs]
        self._deviance = [_Deviance(h, k) for h, k in zip(self.held, masks)]
        # which observations are sharp in energy (the sharp-spectral one, and further inputs on its channels or
        # detector-pixel tiles) and which sharp in space (the sharp-spatial one and inputs on its pixels)
        roles = {r["input"]: r["role"] for r in json.loads(self.grid.attrs.get("roles", "[]"))}
        pos = input_positions(self.grid) if roles else [0, 1]
        self.spectral = [1] + [j for j in range(2, len(observations)) if roles.get(pos[j]) != "pixels"]
        self.ratio = (1.0 - fraction) / fraction
        shape = mx.fused_shape
        xsum = float(np.sum(self.terms[0].data, dtype=np.float64))
        if mx.weights.ndim == 1:
            flat = float(mx.reduced(np.ones((1, shape[2])))[1].sum()) * shape[0] * shape[1]
        else:
            flat = float(mx.forward(np.ones(shape, self.dtype)).sum())
        self.level = xsum / max(flat, 1e-300)
        self.shape = shape

    def score_parts(self, models):
        """Held-out deviance of part B of each observation for part-A model counts ``models`` (model order)."""
        if len(models) != len(self.held):
            raise ValueError(f"{len(models)} predicted count cubes for {len(self.held)} held-out observations")
        return [dev(self.ratio * m) for dev, m in zip(self._deviance, models)]

    def sq_error_parts(self, models, which=None):
        """Held-out squared error ``sum_v (d_v - r m_v)**2`` (counts**2) of part B of the observations ``which``
        (indices in model order; default all) for part-A model counts ``models`` (model order; ``r = (1 - f) / f``;
        masks honoured). A proper score of the mean like the deviance, but weighing every voxel's residual alike (the
        deviance divides by the counts), as the NMSE of the fused cube weighs bright voxels (session 10,
        :data:`RL_SQ_FACTOR`)."""
        if len(models) != len(self.held):
            raise ValueError(f"{len(models)} predicted count cubes for {len(self.held)} held-out observations")
        out = []
        for j in range(len(self.held)) if which is None else which:
            h, k = self.held[j], self.masks[j]
            r = np.asarray(h, dtype=np.float64) - self.ratio * np.asarray(models[j], dtype=np.float64)
            out.append(float(np.sum(r[k] ** 2 if k is not None else r * r)))
        return out

    def score_models(self, models):
        """Held-out deviance of part B (all instruments) for part-A model counts ``models`` (model order)."""
        return sum(self.score_parts(models))

    def score(self, z):
        return self.score_models(_predicted(self, z))  # expected: H z + B

    def start(self):
        return np.full(self.shape, self.level, dtype=self.dtype)


class _ScoredEM(EMProx):
    """EM + prox on part A that also scores the held-out part B at every iterate (reusing its forward models): the
    deviance of each observation, and with ``sq`` the summed squared error of the sharp-spectral ones."""

    def __init__(self, split, regularizer, sq=False):
        n = len(split.terms)  # more than two inputs: the roles of fuse's EM step (balanced sharp-spatial group)
        super().__init__(PoissonLikelihood(split.terms), regularizer, roles=None if n <= 2 else [
            "spectral" if j in split.spectral else "spatial" for j in range(n)])
        self.split, self.want_sq, self.sq = split, bool(sq), None

    def _eval(self, z):
        val, corr, models = self._models_and_correction(z)
        models = [t._plus_background(m) for t, m in zip(self.lik.terms, models)]  # held-out score of H z + B
        self.parts = self.split.score_parts(models)
        if self.want_sq:
            self.sq = float(sum(self.split.sq_error_parts(models, self.split.spectral)))
        self.heldout = float(sum(self.parts))
        self._expected = models if self.noise_maps else None  # the noise probe's expected counts (EMProx._noise)
        return val, corr

    def init(self, z0):
        s = super().init(z0)
        s["heldout"], s["heldout_parts"], s["heldout_sq"] = self.heldout, self.parts, self.sq
        return s

    def step(self, state):
        s = super().step(state)
        s["heldout"], s["heldout_parts"], s["heldout_sq"] = self.heldout, self.parts, self.sq
        return s


def _run_em(split, reg, z0, max_iter, tol, abandon_above=None, patience_up=2, past_min=None, parts=None, best=None,
            sq=None, hopeless=None, best_sq=None, patience=1.0, abandon_least=False):
    """Run scored EM(+prox) on part A from ``z0``; return (z, heldout curve, n_iter, abandoned).

    ``parts`` (a list, optional) receives the held-out deviance of each observation at every iterate; ``best`` (a dict,
    optional) the iterate with the smallest held-out deviance (``z``, its ``score`` and iteration ``i``); ``sq`` (a
    list, optional) the held-out squared error of the sharp-spectral observations (``split.spectral``, summed) at every
    iterate, and ``past_min`` then also waits until ITS minimum is behind; ``best_sq`` (a dict, optional, with ``sq``)
    the iterate with the smallest of those squared errors (same keys as ``best``). ``hopeless`` (with ``past_min`` and
    ``best``; optional): called with ``best`` once the deviance's own minimum is behind (and again whenever that best
    iterate changes); when it returns True the run stops there, reported as abandoned (the candidate cannot be chosen,
    so the squared error's later minimum is not needed).

    Stops like :func:`xfusion.fuse` (:func:`xfusion.solvers.loop.stopping_rule`: with a prior the relative
    change of the iterate, else of the objective, ``<= tol`` for 5 iterations; or ``max_iter``); abandons
    when the held-out deviance rose ``patience_up`` times in a row and is above ``abandon_above`` (with
    ``abandon_least``: its least value after ``z0`` is above it); with
    ``past_min``, stops once the iteration count exceeds ``argmin + max(past_min, patience * argmin)`` of the held-out
    curve (the minimum is then behind us; ``patience`` 1 by default: twice the minimum's iterate), and asks
    ``hopeless`` on the same schedule.
    """
    if hopeless is not None and (past_min is None or best is None):
        raise ValueError("hopeless needs past_min and best (the run asks it about its best iterate)")
    solver = _ScoredEM(split, reg, sq=sq is not None)
    state = solver.init(np.array(z0, dtype=split.dtype, copy=True))
    stop = stopping_rule(solver, tol)
    hist = {stop.key: [state.get(stop.key, np.nan)]}
    curve = [state["heldout"]]
    if parts is not None:
        parts.append(list(state["heldout_parts"]))
    if sq is not None:
        sq.append(state["heldout_sq"])
    if best_sq is not None and sq is None:
        raise ValueError("best_sq needs sq (the squared errors it picks from)")
    for b in (best, best_sq):  # the iterates after z0 (z0 itself is the warm start, not the candidate)
        if b is not None:
            b.update(score=math.inf, z=None, i=None)
    abandoned = False
    checked = None  # the best iterate ``hopeless`` last cleared
    it = 0
    while it < max_iter and not stop(hist):
        check_cancelled()  # a background run (plain RL beside the k ladder) whose result is no longer wanted
        state = solver.step(state)
        it += 1
        hist[stop.key].append(state[stop.key])
        curve.append(state["heldout"])
        if parts is not None:
            parts.append(list(state["heldout_parts"]))
        if sq is not None:
            sq.append(state["heldout_sq"])
        for b, v in ((best, curve[-1]), (best_sq, sq[-1] if sq is not None else None)):
            if b is not None and v < b["score"]:
                b.update(score=v, z=np.array(state["z"], copy=True), i=it)
        if (abandon_above is not None and it >= max(patience_up, 3)
                and (min(curve[1:]) if abandon_least else curve[-1]) > abandon_above
                and all(curve[-i] > curve[-i - 1] for i in range(1, patience_up + 1))):
            abandoned = True
            break
        if past_min is not None:
            i_dev = int(np.argmin(curve))
            i_min = i_dev if sq is None else max(i_dev, int(np.argmin(sq)))
            if it - i_min >= max(past_min, patience * i_min):
                break
            if hopeless is not None and it - i_dev >= max(past_min, patience * i_dev) and best.get("i") != checked:
                checked = best.get("i")
                if hopeless(best):
                    abandoned = True
                    break
    return state["z"], curve, it, abandoned


# ----------------------------------------------------------------------------- families
def _ordered(observations):
    """The inputs in model order: (sharp-spatial, sharp-spectral, further inputs as given)."""
    if len(observations) < 2:
        raise ValueError(f"tuning needs at least two observations (one sharp in space, one sharp in energy); got "
                         f"{len(observations)}")
    if len(observations) == 2:
        x_obs, y_obs, _ = assign_roles(*observations)
        return [x_obs, y_obs]
    grid = fusion_grid(*observations)
    return [observations[i] for i in input_positions(grid)]


def _build_models(parts):
    """Fused grid and unscaled instrument models of the (thinned) inputs in model order (as :func:`xfusion.fuse`)."""
    grid = fusion_grid(*parts)
    ms = [build_model(grid, parts[0], SPATIAL), build_model(grid, parts[1], SPECTRAL)]
    if len(parts) > 2:
        from .fuse import _extra_model

        roles = json.loads(grid.attrs["roles"])
        pos = input_positions(grid)  # parts are already in model order: positions 2.. map to themselves
        role = {r["input"]: r["role"] for r in roles}
        ms += [_extra_model(grid, o, str(o.attrs.get("name", f"observation {i + 1}")), role[i])
               for i, o in zip(pos[2:], parts[2:])]
    return grid, ms


def _splits(observations, fraction, n_splits, seed, dtype):
    for o in observations:
        _counts_array(o, "tune")
    ordered = _ordered(observations)
    try:
        root = np.random.SeedSequence(seed)
    except (TypeError, ValueError) as exc:  # numpy's "expected non-negative integer" did not name the argument
        raise ValueError(f"seed must be a non-negative integer, a sequence of them or None; got {seed!r}") from exc
    seeds = root.spawn(int(n_splits))
    out, models = [], None
    for s in seeds:
        sp = _Split(ordered, fraction, s, dtype, models)
        models = sp.models
        out.append(sp)
    return out


def line_roughness(counts, energy_dim="energy"):
    """Line richness of a sharp-spectral observation's counts, in units of the Poisson noise (dimensionless).

    With ``s_e`` the counts summed over every dimension but ``energy_dim`` (one spectrum over the channels e), the
    mean over the inner channels of ``(s_e - (s_{e-1} + s_{e+1}) / 2)**2 / (1.5 max(s_e, 1))``: the squared second
    difference over its Poisson variance for a spectrum that is locally linear (``s_e + s_{e-1}/4 + s_{e+1}/4``
    ~ ``1.5 s_e``). About 1 for a smooth continuum whatever the counts; well above 1 when narrow lines are resolved.
    """
    return _roughness(_spectrum(counts, energy_dim, "line_roughness"))


def _spectrum(counts, energy_dim, what):
    if energy_dim not in counts.dims:
        raise ValueError(f"{what} needs counts with an {energy_dim!r} dimension; got dims {counts.dims}")
    return np.asarray(counts.sum(dim=[d for d in counts.dims if d != energy_dim]).values, dtype=np.float64)


def _roughness(s):
    if s.size < 3:
        return 0.0
    r = s[1:-1] - 0.5 * (s[:-2] + s[2:])
    return float(np.mean(r * r / (1.5 * np.maximum(s[1:-1], 1.0))))


def line_richness(counts, energy_dim="energy", min_bins=None):
    """Line richness of a sharp-spectral observation's counts at every spectral scale (dimensionless).

    The largest :func:`line_roughness` of the summed spectrum binned by ``b`` = 1, 2, 4, ... adjacent channels while
    at least ``min_bins`` (default :data:`LINE_MIN_BINS`) bins remain: lines wider than a channel (resolved by many
    fine channels) read high at the binning that matches their width, where the single-channel roughness reads ~1.
    A smooth continuum reads ~1 at small ``b`` and grows only slowly with ``b`` (its curvature); on the tuning suite
    (suite("tune", n=48), Gaussian and realistic responses with ARFs) continuum-only scenes read at most 17.6, scenes
    with lines 650 and more at 24x24x600 (76 and more at full size; see :data:`LINE_RICHNESS`).
    """
    s = _spectrum(counts, energy_dim, "line_richness")
    m = int(LINE_MIN_BINS if min_bins is None else min_bins)
    out, b = _roughness(s), 2
    while s.size // b >= m:
        n = s.size // b * b
        out = max(out, _roughness(s[:n].reshape(-1, b).sum(axis=1)))
        b *= 2
    return out


def rl_transfer(n_half, n_spatial=None, n_spectral=None, roughness=None):
    """Iteration count for all counts from the best half-data RL iteration.

    With the best half-data iterations of the held-out deviance of the sharp-spatial (``n_spatial``) and of the
    sharp-spectral instrument(s) alone (``n_spectral``): ``n_half`` when ``n_spectral <= n_spatial`` (and the
    sharp-spectral counts' :func:`line_roughness` ``roughness``, if given, is below :data:`RL_LINE_ROUGHNESS`),
    else ``RL_LINE_FACTOR * n_half`` (:data:`RL_LINE_FACTOR`); without them the older fixed rule
    :data:`RL_TRANSFER`. Clipped to [1, RL_MAX_ITER].
    """
    if n_spatial is None or n_spectral is None:
        a, b = RL_TRANSFER
        n = a * float(n_half) ** b
    else:
        lines = n_spectral > n_spatial or (roughness is not None and roughness >= RL_LINE_ROUGHNESS)
        n = float(n_half) * (RL_LINE_FACTOR if lines else 1.0)
    return int(min(max(round(n), 1), RL_MAX_ITER))


def sq_transfer(n_sq, n_rule=0):
    """Iteration count for all counts from the best half-data iterate ``n_sq`` of the sharp-spectral held-out squared
    error (session 10): ``max(round(RL_SQ_FACTOR * n_sq), n_rule)`` clipped to [1, RL_MAX_ITER] (:data:`RL_SQ_FACTOR`;
    ``n_rule``: a count it must not go below -- plain RL passes :func:`rl_transfer`'s, the thresholded candidate 0).
    """
    for name, v in (("n_sq", n_sq), ("n_rule", n_rule)):
        if not (isinstance(v, (int, np.integer)) and v >= 0):
            raise ValueError(f"{name} must be a non-negative iteration count; got {v!r}")
    return int(min(max(round(RL_SQ_FACTOR * float(n_sq)), int(n_rule), 1), RL_MAX_ITER))


def _role_deviances(split, per_input):
    """``(iterate, [sharp-spatial, sharp-spectral])`` held-out deviances from the per-input ones ``per_input``
    (iterate, input) of :func:`_run_em`'s ``parts``."""
    pp = np.asarray(per_input, dtype=np.float64)
    spec = pp[:, split.spectral].sum(axis=1)
    return np.stack([pp.sum(axis=1) - spec, spec], axis=1)


def _curve_minima(curves, parts, sqs):
    """Best iterates (>= 1) of the mean over splits of the joint deviance, of the sharp-spatial and sharp-spectral
    deviances and of the sharp-spectral squared error: ``(n, best, n_spatial, n_spectral, n_sq)``."""
    n = min(len(c) for c in curves)
    if n <= 1:
        return n, 0, 0, 0, 0
    mean = np.mean([c[:n] for c in curves], axis=0)
    pm = np.mean([p[:n] for p in parts], axis=0)
    sq = np.mean([np.asarray(q[:n], dtype=np.float64) for q in sqs], axis=0)
    return (n, int(np.argmin(mean[1:]) + 1), int(np.argmin(pm[1:, 0]) + 1), int(np.argmin(pm[1:, 1]) + 1),
            int(np.argmin(sq[1:]) + 1))


def _scored_runs(splits, reg, max_iter, bests=None):
    """One run of EM with the prior ``reg`` (None: plain RL) on part A of each split from the flat start, scored at
    every iterate until the minima of the held-out deviance and of the sharp-spectral squared error are well behind
    (:func:`_run_em`, ``past_min=10``; at most ``max_iter``): ``(curves, role deviances, squared errors)`` per split.
    ``bests`` (a list, optional) receives per split the best iterates ``(by deviance, by squared error)``."""
    curves, parts, sqs = [], [], []
    for sp in splits:
        pp, qq = [], []
        bz, bq = ({}, {}) if bests is not None else (None, None)
        _, curve, _, _ = _run_em(sp, reg, sp.start(), max_iter, None, past_min=10, parts=pp, sq=qq, best=bz,
                                 best_sq=bq)
        curves.append(curve)
        sqs.append(qq)
        parts.append(_role_deviances(sp, pp))
        if bests is not None:
            bests.append((bz, bq))
    return curves, parts, sqs


def _tune_none(splits, max_iter, tol, iterates=None):
    """Plain RL on part A scored at every iterate (the ``"none"`` family): ``(cands, curves, choice, extra)``.

    ``iterates`` (a list, optional) receives, per split, the half-data iterate the count was transferred from
    (:func:`sq_transfer`: the squared error's best iterate when ``RL_SQ_FACTOR n_sq`` decides, else the deviance's
    best, which :func:`rl_transfer` scales); each split's own best iterate (one split: the curve's).
    """
    bests = [] if iterates is not None else None
    curves, parts, sqs = _scored_runs(splits, None, max_iter, bests)
    n, best, n_sp, n_se, n_sq = _curve_minima(curves, parts, sqs)
    cands = [{"iteration": i} for i in range(n)]
    sp0 = splits[0]
    rough = line_roughness(sp0.ya["counts"] + sp0.yb["counts"])  # all sharp-spectral counts (part A + part B)
    n_rule = rl_transfer(best, n_sp, n_se, rough)
    choice = {"max_iter": sq_transfer(n_sq, n_rule), "half_data_iteration": best,
              "spatial_iteration": n_sp, "spectral_iteration": n_se, "line_roughness": rough,
              "sq_error_iteration": n_sq}
    if iterates is not None:
        k = 1 if round(RL_SQ_FACTOR * n_sq) >= n_rule else 0  # the squared error's count decides, or the rule's
        iterates.extend({"z": b[k]["z"], "iteration": b[k]["i"]} for b in bests)
    return cands, np.array([c[:n] for c in curves]).T, choice, {"rule": RL_RULE}


#: ranks ``regularization="lowrank_local"`` compares with ``rank="auto"`` (:func:`_tune_local_rank`)
LOCAL_RANK_LADDER = (2, 3, 5)


def _tune_local_rank(splits, fixed, max_iter):
    """``regularization="lowrank_local"`` (:mod:`xfusion.regularizers.local_rank`): its rank and iteration count.

    Each rank of :data:`LOCAL_RANK_LADDER` (or the fixed ``rank``) runs EM + the local projection on part A from the
    flat start, scored at every iterate like plain RL (:func:`_run_em` with ``past_min=10``: until the minima of
    the held-out deviance and of the sharp-spectral held-out squared error are well behind, at most ``max_iter``).
    The rank whose best iterate has the lowest held-out deviance (mean over splits) is chosen; its count on all
    counts is :func:`sq_transfer` of ``n_sq`` (the squared error's best half-data iterate), as for plain RL and the
    thresholded prior: 1.25 x ``n_sq``. Checked for this prior on the 24 small tuning scenes (session 23, the
    chosen rank's NMSE against its best count <= 200): mean loss 0.44 dB at 1.25, 0.48-1.13 dB at 0.75-3, 0.57-2.63 dB
    with the deviance's best iterate instead. Returns ``(cands, scores per split, choice, extra)``.
    """
    from .regularizers.local_rank import LocalLowRank

    rank = fixed.get("rank", "auto")
    ranks = LOCAL_RANK_LADDER if rank == "auto" else (int(rank),)
    patch = int(fixed.get("patch", 6))
    cands, scores, rows = [], [], []
    for r in ranks:
        curves, parts, sqs = _scored_runs(splits, LocalLowRank(r, patch), max_iter)
        _, best, _, _, n_sq = _curve_minima(curves, parts, sqs)
        n_full = sq_transfer(n_sq)
        cands.append({"rank": r, "patch": patch, "max_iter": n_full})
        scores.append([float(c[best]) for c in curves])
        rows.append({"rank": r, "half_data_iteration": best, "sq_error_iteration": n_sq,
                     "iterations_run": [len(c) - 1 for c in curves]})
    chosen = int(np.argmin([np.mean(s) for s in scores]))
    return cands, scores, dict(cands[chosen]), {"ranks": rows, "rule": SQ_RULE}


#: "auto" (session 6): the wavelet candidate with ``null_space="threshold"`` at the ladder's best ``k``, run on part A
#: up to this many iterations (stopped once the held-out minimum is well behind) and scored at its best iteration.
#: A run stopped here transfers to at most ``sq_transfer(100 + 3) = 129`` iterations on all counts, whatever its
#: squared error does next (22 of the 144 small held-out rows chose the thresholded candidate at exactly 129).
#: Session 48 measured 157 (``1.25 x (157 + 3) = 200``: the count could reach :data:`RL_MAX_ITER`, as plain RL's):
#: small tuning seeds +0.018 dB, held out small +0.043 dB and NMSE >= RL oracle 129 -> 130/144, but two conditions
#: written before the held-out runs failed: full-size velocity <= RL oracle 105 -> 104/115 (mixed/500024) and the
#: selection's CPU time +26-29 % on the two full-size rows whose choice changed (limit 25 %): not adopted
#: (benchmarks/QUALITY_HISTORY.md, session 48). Read when :func:`_tune_threshold` is called, so a script may set it.
THRESHOLD_MAX_ITER = 100
#: the thresholded run stops once the later of its two minima (held-out deviance, sharp-spectral squared error) at
#: iterate ``i`` is ``max(10, THRESHOLD_PATIENCE * i)`` iterations behind (:func:`_run_em`'s ``patience``; until
#: session 24 ``max(10, i)``, i.e. 1). Session 25, for the cost (issue 13: tuning plus the final fit within 3x one
#: fit; the runs that missed it were long thresholded runs, half of whose steps only confirmed the minimum). Chosen by
#: exact replay of recorded runs (``benchmarks/tuning.py patience_data`` / ``patience_rules``: the same curves, cut
#: by each rule): on the 48 full-size tuning scenes factors 0.75, 0.5 and 0.35 change no fit (no best deviance
#: iterate, no count of a chosen candidate), 0.25 and 0 change one (cluster_core/1031, whose squared error still
#: crept down from iterate 72 to 95); 0.35 saves 9% of the stage's steps there. Replayed afterwards: 72 full-size
#: and 120 small scenes (48 tuning, 72 held out), no fit changed, 10-16% of the steps saved. Tuning plus final fit
#: within 3x one fit on the first held-out set: 20/24 -> 22/24 (benchmarks/MEASUREMENTS.md, issue 13, session 25).
THRESHOLD_PATIENCE = 0.35
#: Line factor of the thresholded candidate's iteration transfer (:func:`threshold_transfer`; plain RL keeps
#: :data:`RL_LINE_FACTOR`). Fitted on that candidate (session 7, benchmarks/tuning.py guard_data on suite("tune", n=48)
#: indices 0-24, 24x24x600; NMSE of the thresholded fit at the transferred count against its best full-data
#: iteration): RL's rule (factor 3 whenever the sharp-spectral minimum is later) lost 0.85 dB on average, worst 4.06
#: (mixed/1004: 24 iterations 9.73 dB, 8 iterations 13.79 dB), within 0.5 dB on 15/25 scenes; with the sharp-spatial
#: guard below and factor 3: 0.56 / 3.65 / 17; with the guard and factor 2: 0.42 / 3.65 / 21 (3.65: point_sources/1013,
#: whose half-data curve still falls at 100 iterations); a constant factor 1, 1.5 or 2: 0.69, 0.49, 0.74 dB.
THRESHOLD_LINE_FACTOR = 2.0
#: :func:`threshold_transfer` (the session-7 rule, used by "auto" until session 9) is kept for the benchmarks' replays;
#: since session 10 the thresholded candidate's count is :data:`SQ_RULE` (:func:`sq_transfer`)


def threshold_transfer(n_half, n_spatial, n_spectral, warm_iter=3):
    """Iteration count for all counts of the thresholded wavelet candidate (:func:`_tune_threshold`).

    ``n_half``, ``n_spatial``, ``n_spectral``: best half-data iterates (warm-start iterations included) of the joint
    held-out deviance, of the sharp-spatial instrument's and of the sharp-spectral instrument(s)'; ``warm_iter``: the
    plain EM iterations of the warm start. Returns ``n_half`` when ``n_half`` or ``n_spatial`` is the first iterate
    after the warm start (``<= warm_iter + 1``) or when ``n_spectral <= n_spatial``; else
    ``THRESHOLD_LINE_FACTOR * n_half`` (:data:`THRESHOLD_LINE_FACTOR`); clipped to [1, RL_MAX_ITER].

    Why the sharp-spatial guard: on faint scenes the sharp-spatial instrument's held-out deviance is best right after
    the warm start (every further iterate adds spatial noise) while the sharp-spectral one still falls for a few
    iterates; RL's line rule read that as lines being sharpened and tripled the count, but the joint half-data
    minimum was already at the full-data optimum (suite("tune", n=48) at 24x24x600: point_sources/1003 7 iterations
    18.07 dB, 21 iterations 14.77 dB, best 18.11 at 6; mixed/1004 8 -> 13.79 dB, 24 -> 9.73 dB, best at 8). Where the
    sharp-spatial minimum comes later the factor helps (cluster_core/1001: 13 iterations 28.07 dB, 26 iterations
    29.90, best 29.91 at 25).
    """
    for name, v in (("n_half", n_half), ("n_spatial", n_spatial), ("n_spectral", n_spectral)):
        if not (isinstance(v, (int, np.integer)) and v >= 0):
            raise ValueError(f"{name} must be a non-negative iteration count; got {v!r}")
    first = int(warm_iter) + 1
    if n_half <= first or n_spatial <= first or n_spectral <= n_spatial:
        n = float(n_half)
    else:
        n = THRESHOLD_LINE_FACTOR * float(n_half)
    return int(min(max(round(n), 1), RL_MAX_ITER))


#: "auto" (session 14): the thresholded candidate's null bands get NULL_FACTOR times the other bands' threshold
#: (module notes; fitted on the small tuning scenes)
NULL_FACTOR = 20.0
#: "auto" (session 60): where the summed sharp-spectral counts read as a continuum (:func:`line_richness` below
#: :data:`SPECTRAL_BAND_RICHNESS`), every wavelet candidate thresholds the bands coarsest in space and fine in energy
#: (option ``spectral_band_factor``) at this factor times the other bands' rule (:func:`spectral_band_factor`); with
#: lines, or when the caller gives the option, as given (default 1). On a continuum sky those bands hold noise only.
#: Chosen on the tuning seeds among 2, 4 and 8 (all continuum skies: 8 best at both sizes), then decided on never-run
#: held-out rows against criteria written first (benchmarks/QUALITY_HISTORY.md, session 60; the factor 2 on every sky
#: failed there on full-size line widths, and the family prior's own line test, 100, let a faint cluster core in).
SPECTRAL_BAND_FACTOR = 8.0
#: the line richness below which :data:`SPECTRAL_BAND_FACTOR` applies: the geometric middle of the tuning seeds' gap
#: between continuum skies (at most 17.6 at 24x24x600, 16.5 at full size) and skies with lines (at least 76 at full
#: size, 650 small), rounded down; stricter than :data:`LINE_RICHNESS` (100), which faint line skies at full size
#: pass (mixed/1014 76, /1039 93; held-out cluster_core/500841 52)
SPECTRAL_BAND_RICHNESS = 36.0


def spectral_band_factor(split):
    """``(factor, line richness)`` that ``regularization="auto"`` uses for a thinning ``split``:
    :data:`SPECTRAL_BAND_FACTOR` where the summed sharp-spectral counts (both parts: all counts) read below
    :data:`SPECTRAL_BAND_RICHNESS`, else 1 (every band alike)."""
    rich = float(_lines_and_counts(split)[0])
    return (float(SPECTRAL_BAND_FACTOR) if rich < SPECTRAL_BAND_RICHNESS else 1.0), rich


def _tune_threshold(splits, fixed, cand, max_iter=None, warm_iter=3, iterates=None, hopeless=None,
                    sq_iterates=None):
    """The wavelet candidate ``cand`` with its null space thresholded instead of zeroed (at :data:`NULL_FACTOR` times
    the other bands' threshold unless ``fixed`` gives ``null_factor``), stopped early like plain RL.

    Zeroing the bands that are fine in space and fine in energy removes what the positivity of EM recovers there
    (narrow lines that move from pixel to pixel on bright scenes); thresholding them lets them grow with the
    iterations like plain RL, so the iteration count is chosen like RL's: one scored run per split from the same
    warm start (``warm_iter`` EM iterations); since session 10 the best half-data iterate of the mean sharp-spectral
    held-out SQUARED error goes to all counts by :func:`sq_transfer` (warm-start iterations included; the run goes on
    until that minimum and the deviance's are well behind: the later one ``i`` by ``max(10, THRESHOLD_PATIENCE i)``
    iterations, :data:`THRESHOLD_PATIENCE`), and the candidate is scored (against the other families)
    at the best iterate of its held-out deviance. Sessions 7-9 transferred the deviance's best iterate by
    :func:`threshold_transfer`: ``n_half``, or :data:`THRESHOLD_LINE_FACTOR` times it when the sharp-spectral held-out
    deviance is still falling after the sharp-spatial one's minimum and that minimum is not the first iterate after
    the warm start (it stopped line scenes whose two minima come together too early: suite("tune", n=48) mixed/1009,
    cluster_core/1026, 24x24x600: 17 and 13 iterations, 16.56 and 22.32 dB; the squared error: 52 and 30
    iterations, 18.31 and 23.54 dB, best 18.32 and 23.79). ``hopeless`` (one split only; see :func:`_run_em`): the
    run stops once its deviance minimum is behind if it says the candidate cannot be chosen (session 12: it need not
    wait for the squared error's later minimum; its count is then that of the truncated run and the choice records
    ``stopped_hopeless``). ``iterates`` (a list, optional) receives each split's best iterate of the held-out deviance
    (an array), ``sq_iterates`` (a list, optional) that of the squared error, the one the count is transferred from
    (``{"z", "iteration"}``, warm start included). Session 6 used
    :func:`rl_transfer` (factor 3) with only the first guard (fresh tuning seeds point_sources/1038 and
    synchrotron/1042, suite("tune", n=48), 24x24x600: 12 iterations gave 8.7 and 16.5 dB, 4 gave 12.6 and 18.6 dB);
    it over-ran faint scenes where the sharp-spatial minimum is the first iterate (held-out mixed/500009: 21
    iterations, 9.9 dB, against 14.4 dB for the zeroed prior; see :func:`threshold_transfer`). Returns
    ``(setting, scores per split at the best iterate, choice)``.
    """
    max_iter = THRESHOLD_MAX_ITER if max_iter is None else max_iter  # read at call time
    cand = dict(cand, null_space="threshold", null_factor=fixed.get("null_factor", NULL_FACTOR))
    if hopeless is not None and len(splits) != 1:
        raise ValueError("hopeless stopping of the thresholded candidate needs exactly one split")
    curves, parts, sqs = [], [], []
    stopped = False
    for sp in splits:
        z0, _, _, _ = _run_em(sp, None, sp.start(), warm_iter, None)
        pp, qq = [], []
        bz, bq = {}, ({} if sq_iterates is not None else None)
        _, curve, _, stopped = _run_em(sp, _wavelet_reg(fixed, cand), z0, max_iter, None, past_min=10, parts=pp,
                                       best=bz if (iterates is not None or hopeless is not None) else None, sq=qq,
                                       hopeless=hopeless, best_sq=bq, patience=THRESHOLD_PATIENCE)
        if iterates is not None:
            iterates.append(bz.get("z"))
        if sq_iterates is not None:
            sq_iterates.append({"z": bq["z"], "iteration": None if bq["i"] is None else bq["i"] + warm_iter})
        curves.append(curve)
        sqs.append(qq)
        parts.append(_role_deviances(sp, pp))
    _, best, n_sp, n_se, n_sq = _curve_minima(curves, parts, sqs)
    n_full = sq_transfer(n_sq + warm_iter)
    setting = {"regularization": "wavelet2d1d", **cand, "max_iter": n_full}
    choice = dict(setting, half_data_iteration=best + warm_iter, spatial_iteration=n_sp + warm_iter,
                  spectral_iteration=n_se + warm_iter, sq_error_iteration=n_sq + warm_iter)
    if stopped:
        choice["stopped_hopeless"] = True
    return setting, [float(c[best]) for c in curves], choice


#: "auto" (session 8): iteration count of the zeroed wavelet prior when the ladder's candidate is chosen
#: (:func:`_zero_iterations`, :func:`zero_transfer`). Cap on all counts: fuse's default for EM with a prior (50).
ZERO_MAX_ITER = 50
#: the half-data run stops once its held-out minimum ``i`` is ``max(ZERO_PAST_MIN, i)`` iterations behind
ZERO_PAST_MIN = 10
#: factor from the best half-data iterate (warm start included) to the full-data iteration count. Fitted on
#: suite("tune", n=48) indices 0-23 at 24x24x600 (benchmarks/tuning.py zero_rules; the module docstring has the
#: table): NMSE lost against the best iteration <= 50 in hindsight, mean / worst / within 0.5 dB: factor 0.75
#: 0.37/1.77/18 of 24, 1 0.14/0.75/22, 1.25 0.10/0.44/24, 1.5 0.12/0.75/23, 2 0.20/1.28/21 (fuse's stop at 50:
#: 0.56/3.48/14). The full-data optimum comes a little later than the half-data one (ratios 1-2.4; more counts
#: support more sharpening), as for plain RL on continuum scenes.
ZERO_FACTOR = 1.25
ZERO_RULE = ("n_full = ZERO_FACTOR x n_half (warm-start iterations included), the best half-data iterate of the "
             "zeroed candidate continued from its ladder run, clipped to [warm iterations + 1, ZERO_MAX_ITER]")


#: session 61: on a continuum sky (:data:`SPECTRAL_BAND_RICHNESS`) whose walk kept the zeroed prior at the ladder's
#: lowest rung (``K_LADDER[0]``: the data asked for less regularization than the ladder offers) with a half-data best
#: iterate (warm start included) of at least this many iterations, the count on all counts is :data:`ZERO_MAX_ITER`
#: instead of :func:`zero_transfer`'s: an early stop would add regularization against that evidence
#: (:func:`bottom_rung_count`; criteria and measurements: benchmarks/QUALITY_HISTORY.md, session 61)
ZERO_BOTTOM_HALF = 8
ZERO_BOTTOM_RULE = (f"on a continuum sky (line richness < {SPECTRAL_BAND_RICHNESS:g}) with k tuned to the ladder's "
                    f"lowest rung {K_LADDER[0]:g} and a half-data best iterate >= {ZERO_BOTTOM_HALF}: "
                    f"{ZERO_MAX_ITER} iterations (fuse's stop) instead of the transferred count")


def bottom_rung_count(zero, k, continuum):
    """``zero`` (the record of :func:`_zero_iterations`) with ``max_iter`` :data:`ZERO_MAX_ITER` and the
    transferred count kept as ``transferred``, where the rule of :data:`ZERO_BOTTOM_HALF` applies to the tuned ``k``
    on a sky that reads as a continuum (``continuum``); else ``zero`` unchanged."""
    if (continuum and k == K_LADDER[0] and int(zero["half_data_iteration"]) >= ZERO_BOTTOM_HALF
            and int(zero["max_iter"]) < ZERO_MAX_ITER):
        return {**zero, "max_iter": ZERO_MAX_ITER, "transferred": int(zero["max_iter"]),
                "bottom_rung": ZERO_BOTTOM_RULE}
    return zero


def zero_transfer(n_half, warm_iter=3, factor=ZERO_FACTOR):
    """Iteration count on all counts of the zeroed wavelet candidate (null_space "zero"; :func:`_zero_iterations`).

    ``n_half``: best iterate of the candidate's held-out deviance on the fitted part, warm-start iterations
    included (``warm_iter`` plain EM iterations, then the prior). Returns ``round(factor * n_half)`` clipped to
    [``warm_iter + 1``, :data:`ZERO_MAX_ITER`] (see :data:`ZERO_FACTOR`, the default's factor, for the measurements;
    ``benchmarks/zero_count.py`` probes others).
    """
    if not (isinstance(n_half, (int, np.integer)) and n_half >= 0):
        raise ValueError(f"n_half must be a non-negative iteration count; got {n_half!r}")
    return int(min(max(round(factor * float(n_half)), int(warm_iter) + 1, 1), ZERO_MAX_ITER))


#: session 59: where thinning chose the thresholded 2D-1D prior with a count N and the compact sources hold at least
#: RUN_ON_SHARE of the sharp-spatial counts above their surroundings (:func:`xfusion.sources.excess_share`), the
#: field stops at round(RUN_ON_FRACTION N) while the sources' footprints run on to N (:func:`run_on`). The share
#: was set on the tuning seeds alone (the geometric middle of the gap between mixed skies, at most 0.0155, and
#: point-source skies, at least 0.0358), the fraction in session 58; the rule was then checked on fresh held-out
#: rows against criteria written first (benchmarks/QUALITY_HISTORY.md, session 59).
RUN_ON_SHARE = 0.025
RUN_ON_FRACTION = 0.75


def run_on(choice, max_iter, peaks, share=0.0):
    """``(max_iter, source_iter)`` as the default delivers thinning's ``choice`` run to ``max_iter`` with the compact
    sources ``peaks`` (:func:`xfusion.sources.compact_peaks`) holding ``share`` of the sharp-spatial counts:

    * the zeroed 2D-1D prior stopped by thinning at ``max_iter`` < :data:`ZERO_MAX_ITER` (its count by
      :func:`zero_transfer`), with sources: ``(max_iter, [ZERO_MAX_ITER, peaks])`` (session 53);
    * the thresholded 2D-1D prior at thinning's count ``N = max_iter``, with sources holding ``share >=``
      :data:`RUN_ON_SHARE`: ``(round(RUN_ON_FRACTION N), [N, peaks])``: the field stops earlier, where the gas's line
      maps are less noisy, while the sources' peaks take the whole count (session 59);
    * else ``(max_iter, None)``: nothing runs on (also when ``max_iter`` is not thinning's count: the user's).

    Used by ``fuse`` and by the benchmarks that build the default's delivery themselves."""
    if not (isinstance(choice, dict) and choice.get("regularization", "wavelet2d1d") == "wavelet2d1d"
            and isinstance(max_iter, (int, np.integer)) and not isinstance(max_iter, bool)
            and choice.get("max_iter") == max_iter and peaks):
        return max_iter, None
    cores = [[int(p[0]), int(p[1])] for p in peaks]
    if choice.get("null_space") == "zero" and max_iter < ZERO_MAX_ITER:
        return max_iter, [ZERO_MAX_ITER, cores]
    if choice.get("null_space") == "threshold" and share >= RUN_ON_SHARE:
        field = max(int(round(RUN_ON_FRACTION * max_iter)), 1)
        if field < max_iter:
            return field, [int(max_iter), cores]
    return max_iter, None


def _zero_iterations(splits, fixed, keep, warm_iter=3, max_iter=ZERO_MAX_ITER, past_min=ZERO_PAST_MIN, cut=True,
                     iterates=None):
    """Best iteration of the chosen zeroed candidate by thinning, continuing its ladder run (no new warm start).

    ``keep``: from :func:`_tune_wavelet` (the candidate's JSON ``key``, its last iterate ``ends`` and held-out
    curve ``curves`` on each split, ``curves[s][0]`` the warm start). Each split's run continues from its last
    iterate until the held-out minimum ``i`` (prior iterations) is ``max(past_min, i)`` iterations behind or
    ``max_iter - warm_iter`` prior iterations ran; the best iterate of the mean curve (warm-start iterations
    included) goes to all counts by :func:`zero_transfer`. Extra cost: nothing when the ladder's run already
    shows the minimum well behind, else at most ``max_iter - warm_iter - CANDIDATE_ITER`` iterations per split.
    Returns a dict (``max_iter``, ``half_data_iteration``, ``iterations_run``). With ``noise="propagated"`` the
    restarted state draws its noise statistics afresh from the last iterate (an approximation of the straight run).

    With one split (and ``cut``) the run also stops as soon as its best iterate so far transfers to
    :data:`ZERO_MAX_ITER` (session 13; ``capped`` in the record): the best iterate of a longer run can only be that
    one or a later one, and :func:`zero_transfer` never decreases, so the count is already decided (same count;
    ``half_data_iteration`` is then the best iterate when the run stopped, a lower bound of the uncut run's).
    ``iterates`` (a list, optional; needs ``keep["best_z"]``) receives each split's best iterate of the ladder run and
    its continuation (``{"z", "iteration"}``, warm start included; one split: the iterate the count is transferred
    from).
    """
    reg = _wavelet_reg(fixed, json.loads(keep["key"]))
    curves, runs = [], []
    cap = max(int(max_iter) - int(warm_iter), 1)
    capped = False
    for s, (sp, z, c) in enumerate(zip(splits, keep["ends"], keep["curves"])):
        c = [float(v) for v in c]
        solver, state = None, None
        if iterates is not None:
            i0 = int(np.argmin(c[1:]) + 1) if len(c) > 1 else None
            iterates.append({"z": keep["best_z"][s] if i0 is not None else None, "score": c[i0] if i0 else math.inf,
                             "iteration": None if i0 is None else i0 + warm_iter})
        while len(c) - 1 < cap:
            it = len(c) - 1
            i_min = int(np.argmin(c[1:]) + 1) if it >= 1 else 0
            if it >= 1 and it - i_min >= max(past_min, i_min):
                break
            if cut and len(splits) == 1 and it >= 1 and zero_transfer(i_min + warm_iter, warm_iter) >= ZERO_MAX_ITER:
                capped = True  # argmin only moves later as the run goes on: the count is ZERO_MAX_ITER whatever comes
                break
            if solver is None:  # the same iterate as the ladder's last: the state is rebuilt from it
                solver = _ScoredEM(sp, reg)
                state = solver.init(np.array(z, dtype=sp.dtype, copy=True))
            state = solver.step(state)
            c.append(float(state["heldout"]))
            if iterates is not None and c[-1] < iterates[-1]["score"]:
                iterates[-1].update(z=np.array(state["z"], copy=True), score=c[-1], iteration=len(c) - 1 + warm_iter)
        curves.append(c)
        runs.append(len(c) - 1)
    n = min(len(c) for c in curves)
    mean = np.mean([c[:n] for c in curves], axis=0)
    best = int(np.argmin(mean[1:]) + 1) if n > 1 else 0
    out = {"max_iter": zero_transfer(best + warm_iter, warm_iter), "half_data_iteration": best + warm_iter,
           "iterations_run": runs}
    if capped:
        out["capped"] = True
    return out


def _wavelet_reg(fixed, cand):
    """The wavelet candidate ``cand`` with the options ``fixed`` (stabilized when ``fixed["stabilize"]`` is
    "anscombe": :mod:`xfusion.regularizers.stabilized`)."""
    kw = {"n_scales_2d": fixed.get("n_scales_2d", 1), "k_rule": fixed.get("k_rule", "constant"),
          "k_min": fixed.get("k_min", 0.5), "k_max": fixed.get("k_max", 3.0), "per_band": fixed.get("per_band", True),
          "noise": fixed.get("noise", "mad"), "spectral_band_factor": fixed.get("spectral_band_factor", 1.0)}
    kw.update(cand)
    if fixed.get("stabilize", "none") == "anscombe":
        from .regularizers.stabilized import AnscombeStabilized

        return AnscombeStabilized(Wavelet2D1D(**kw))
    if fixed.get("stabilize", "none") != "none":
        raise ValueError(f"stabilize must be 'none' or 'anscombe'; got {fixed['stabilize']!r}")
    return Wavelet2D1D(**kw)


#: iteration cap of each wavelet candidate on the fitted part (warm-started; the final fit uses fuse's own rule)
CANDIDATE_ITER = 12
#: how a wavelet candidate's held-out deviance curve over its ``CANDIDATE_ITER`` iterations scores it on the ladder:
#: "least" (its least over the iterates after the warm start; the default since session 47) or "last" (its last
#: iterate; sessions 1-46). Why: the zeroed ladder's pick lay above the all-count best rung more often than below it
#: (a rung with a larger k still falling at iteration 12 looked better than a smaller k past its minimum). Measured
#: through the whole "auto" choice (``benchmarks/tuning.py --ladder-score least hindsight``; mean NMSE of the choice,
#: choice within 0.5 dB of the best visited candidate), last -> least: tuning seeds 24 full size +0.11 dB, 18 -> 19/24,
#: 48 small +0.004 dB, 39 -> 40/48; then held out and on 48 fresh held-out seeds (benchmarks/QUALITY_HISTORY.md,
#: session 47). No constant was fitted: the rule has no parameter.
LADDER_SCORE = "least"
#: session 71: on a continuum sky (:func:`select`'s spectral-band reading), the k ladder's choice moves half-way, in
#: ladder rungs and rounded toward the walk's choice, toward the visited rung whose best half-data iterate predicts the
#: held-out counts best once put through the spectral-shape prior as the delivered cube is (:func:`_shape_deviance`).
#: Why: the walk scores each rung's cube as it stands, while ``fuse`` delivers it through the shape prior, which on a
#: continuum sky does much of the spectral smoothing that a larger k does: the walk climbed to k = 2-6 on faint skies
#: where k = 1 is best once delivered (sessions 67-70). Scored after the prior alone, the choice fell below the best
#: rung as often (48 small synchrotron tuning rows within 0.5 dB of the best rung: walk 34, shape-scored 29, half-way
#: 39; 7 full-size ones: half-way never worse than the walk). Set on the tuning seeds, checked on held-out rows with
#: criteria written first (benchmarks/QUALITY_HISTORY.md, session 71): small rows 8 changed of 77, full-size rows 5
#: of 19, all gaining.
SHAPE_STEP = True


def _shrunk_models(split, z, levels):
    """``(level, models)`` for each pseudo-count level of ``levels``: the part-A cube ``z`` of ``split`` through the
    spectral-shape prior (:func:`xfusion.regularizers.shape.shrink_ladder`, with part A's counts; the starlet levels
    computed once) and every input's expected counts of that cube (:func:`_predicted`): one forward model per level."""
    from .regularizers.shape import shrink_ladder

    counts = float(sum(np.sum(t.data, dtype=np.float64) for t in split.terms))
    for level, cube in shrink_ladder(np.asarray(z, dtype=np.float64), counts, levels):
        yield level, _predicted(split, cube.astype(split.dtype))


def _shape_deviance(split, z):
    """Held-out Poisson deviance (part B of ``split``, every input) of the part-A iterate ``z`` through the
    spectral-shape prior at the best pseudo-counts of :data:`SHAPE_LADDER` (:func:`_shrunk_models`, as
    :func:`tune_shape` scores the chosen candidate)."""
    return min(split.score_models(m) for _, m in _shrunk_models(split, z, SHAPE_LADDER))


def _half_way(ladder, k_walk, k_shape):
    """The rung half-way from ``k_walk`` to ``k_shape`` on ``ladder`` (in rungs; an odd distance rounded toward
    ``k_walk``)."""
    i, j = ladder.index(k_walk), ladder.index(k_shape)
    return ladder[i + int((j - i) / 2)]


def _tune_wavelet(splits, grid, fixed, max_iter, tol, warm_iter=3, candidate_iter=None, select_null_space=False,
                  keep=None, shape_step=False):
    """Coarse-to-fine over (null_space, n_scales_1d) then k; see the module docstring.

    Warm start: every candidate starts from the same ``warm_iter`` plain EM iterations on
    part A (continuation from the best candidate so far was tried and rejected: switching
    priors first raises the held-out deviance, which then looks hopeless, and the final fit
    starts from a flat cube anyway). Candidates run at most ``candidate_iter`` iterations.
    ``keep`` (a dict, optional) receives the best candidate's ``key`` (its JSON), ``ends`` (its last iterate on
    each split) and ``curves`` (its held-out deviance at every iterate on each split): what
    :func:`_zero_iterations` continues.
    ``shape_step`` (only with the k walk, the caller's gate): every visited rung is also scored through the shape prior
    (:func:`_shape_deviance`) and the choice moves half-way toward the best so scored (:data:`SHAPE_STEP`; recorded in
    ``extra["shape_step"]``).
    """
    warm = []
    shaped = {}  # candidate key -> mean over splits of the held-out deviance through the shape prior
    for sp in splits:
        z, _, _, _ = _run_em(sp, None, sp.start(), warm_iter, None)
        warm.append(z)
    results = {}  # key -> [cand, scores per split, iterations, abandoned]
    best = {"score": math.inf}
    guard_ends, steps = {}, []  # last iterates of the rungs >= K_GUARDED_ABOVE; the guarded steps up

    def step_counts(lo, hi):
        """A step up the ladder from ``lo`` to ``hi`` above :data:`K_GUARDED_ABOVE` (both candidate dicts, the
        held-out deviance of ``hi`` already lower): True when it lowers the held-out squared error of the
        sharp-spectral instrument(s) too (summed over splits).
        Recorded in ``steps``: the held-out deviance gain and its Poisson standard error, and that squared-error
        gain (counts**2)."""
        gain = var = sq = 0.0
        for sp, za, zb in zip(splits, *(guard_ends[json.dumps(c, sort_keys=True)] for c in (lo, hi))):
            ma, mb = _predicted(sp, za), _predicted(sp, zb)
            d, v = _paired_difference(sp, za, zb, models=(ma, mb))
            gain, var = gain + d, var + v
            sq += sum(sp.sq_error_parts(ma, sp.spectral)) - sum(sp.sq_error_parts(mb, sp.spectral))
        steps.append({"k": hi["k"], "gain": round(gain, 3), "se": round(math.sqrt(var), 3),
                      "sq_gain_spectral": round(sq, 3)})
        return sq > 0.0

    if LADDER_SCORE not in ("last", "least"):
        raise ValueError(f"LADDER_SCORE must be 'last' or 'least'; got {LADDER_SCORE!r}")
    least = LADDER_SCORE == "least"

    def evaluate(cand):
        key = json.dumps(cand, sort_keys=True)
        if key in results:
            r = results[key]
            return math.inf if r[3] else float(np.mean(r[1]))
        scores, iters, ends, curves, bests, ab = [], [], [], [], [], False
        shape_scores = []
        for sp, z0 in zip(splits, warm):
            bz = {}
            z, curve, n, abandoned = _run_em(sp, _wavelet_reg(fixed, cand), z0,
                                             min(max_iter, candidate_iter or CANDIDATE_ITER), tol,
                                             abandon_above=best["score"] if np.isfinite(best["score"]) else None,
                                             best=bz if keep is not None or shape_step else None,
                                             abandon_least=least)
            if shape_step and bz.get("z") is not None and key not in shaped:  # (a rung run again: scored already)
                shape_scores.append(_shape_deviance(sp, bz["z"]))
            bests.append(bz.get("z"))
            scores.append(min(curve[1:]) if least and len(curve) > 1 else curve[-1])
            iters.append(n)
            ends.append(z)
            curves.append(curve)
            if abandoned:
                ab = True
                break
        results[key] = [cand, scores, iters, ab]
        if shape_scores:
            shaped[key] = float(np.mean(shape_scores))
        if cand.get("k", 0.0) >= K_GUARDED_ABOVE and not ab:  # no k: the sigmoid rule
            guard_ends[key] = ends
        s = math.inf if ab else float(np.mean(scores))
        if keep is not None and s < best["score"]:  # the best so far (the argmin below: first of equal scores)
            keep.update(key=key, ends=ends, curves=curves, warm_iter=warm_iter, best_z=bests)
        best["score"] = min(best["score"], s)
        return s

    if grid is not None:
        for cand in grid:
            evaluate(dict(cand))
    else:
        auto = lambda name: fixed.get(name, "auto") == "auto"  # noqa: E731
        ns = NULL_SPACE_DEFAULT[0] if auto("null_space") else fixed["null_space"]
        n1 = NULL_SPACE_DEFAULT[1] if auto("n_scales_1d") else fixed["n_scales_1d"]
        if select_null_space and auto("null_space"):
            tscore = {t: evaluate({"null_space": t[0], "n_scales_1d": t[1] if auto("n_scales_1d") else n1, "k": 1.0})
                      for t in NULL_SPACE_CANDIDATES}
            ns, n1 = min(tscore, key=tscore.get)
        sigmoid = fixed.get("k_rule", "constant") == "sigmoid"  # k unused: not tuned
        if sigmoid:
            evaluate({"null_space": ns, "n_scales_1d": n1})
        elif auto("k"):
            ladder = list(K_LADDER)
            j = ladder.index(1.0)
            sc = {1.0: evaluate({"null_space": ns, "n_scales_1d": n1, "k": 1.0})}
            # walk down the ladder while the held-out deviance improves; up if the first step down did not
            for direction in (-1, 1):
                i = j + direction
                while 0 <= i < len(ladder):
                    cand = {"null_space": ns, "n_scales_1d": n1, "k": ladder[i]}
                    guarded = direction > 0 and ladder[i] > K_GUARDED_ABOVE
                    before = (dict(keep) if keep is not None else None, best["score"]) if guarded else None
                    sc[ladder[i]] = evaluate(cand)
                    if sc[ladder[i]] >= sc[ladder[i - direction]]:
                        break
                    if guarded and not step_counts({**cand, "k": ladder[i - 1]}, cand):
                        # not a candidate: the sharp-spectral squared error rose (the step is in ``steps``)
                        del results[json.dumps(cand, sort_keys=True)], sc[ladder[i]]
                        if keep is not None:
                            keep.clear()
                            keep.update(before[0])
                        best["score"] = before[1]
                        break
                    i += direction
                if min(sc, key=sc.get) != 1.0:
                    break
        else:
            evaluate({"null_space": ns, "n_scales_1d": n1, "k": float(fixed["k"])})
    step = _shape_step(results, shaped, keep, best, evaluate) if shape_step else None
    rows = list(results.values())
    scores = np.full((len(rows), len(splits)), np.inf)
    for i, r in enumerate(rows):
        scores[i, :len(r[1])] = r[1]
    mean = np.array([math.inf if r[3] else float(np.mean(r[1])) for r in rows])
    choice = dict(rows[int(np.argmin(mean))][0])
    if step is not None:
        choice, step = step
    extra = {"iterations": [r[2] for r in rows], "abandoned": [bool(r[3]) for r in rows],
             "warm_start": f"{warm_iter} EM iterations on the fitted part",
             "candidate_iter": int(min(max_iter, candidate_iter or CANDIDATE_ITER)), "ladder_score": LADDER_SCORE}
    if steps:
        extra["k_above"] = {"steps": steps,
                            "rule": f"a rung above k = {K_GUARDED_ABOVE:g} is a candidate only if both its held-out "
                                    "deviance and the sharp-spectral held-out squared error are lower than the rung "
                                    "below's"}
    if step is not None:
        extra["shape_step"] = step
    return [r[0] for r in rows], scores, choice, extra


def _shape_step(results, shaped, keep, best, evaluate):
    """:data:`SHAPE_STEP` after the k walk of :func:`_tune_wavelet` (``results`` its runs, ``shaped`` their deviance
    through the shape prior, ``best`` its best score, ``evaluate`` its candidate runner). Returns ``(candidate,
    record)``. When the choice moves, the new rung is run again so that
    ``keep`` holds its iterates (the same warm start and split: the same run), for the count it is delivered with.
    None when the walk's own rung has no score through the prior."""
    ladder = list(K_LADDER)
    scored = {key: (math.inf if r[3] else float(np.mean(r[1]))) for key, r in results.items()}
    walk_key = min(scored, key=scored.get)  # the walk's choice (the first of equal scores, as the argmin after it)
    rungs = {key: results[key][0] for key in scored if key in shaped}
    if walk_key not in rungs:  # its cube predicted no held-out count anywhere through the prior: no step
        return None
    shape_key = min(rungs, key=shaped.get)
    k_walk, k_shape = rungs[walk_key]["k"], rungs[shape_key]["k"]
    k = _half_way(ladder, k_walk, k_shape)
    cand = {**rungs[walk_key], "k": k}
    rec = {"k_walk": k_walk, "k_shape": k_shape, "k": k,
           "shape_deviance": {str(rungs[key]["k"]): round(v, 3) for key, v in shaped.items() if key in rungs},
           "rule": "on a continuum sky the walk's k moves half-way (in ladder rungs, rounded toward it) toward the "
                   "visited rung best scored through the spectral-shape prior"}
    if k != k_walk:
        key = json.dumps(cand, sort_keys=True)
        results.pop(key, None)
        if keep is not None:
            keep.clear()
        best["score"] = math.inf  # the rung is run in full and kept (its run is the same as on the walk)
        evaluate(cand)
    return cand, rec


def _half_fuse(*observations, **options):
    """:func:`xfusion.fuse` on thinned halves (the tuning's own fits), without its count-totals warning: the
    delivered fit checks the totals once (inconsistent inputs warned for every half fit as well)."""
    from .fuse import TOTALS_WARNING, fuse

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOTALS_WARNING, category=RuntimeWarning)
        return fuse(*observations, **options)


def _fit_half_fuse(sp, regularization, settings, max_iter, tol, dtype):
    from .operators.model import predict

    r = _half_fuse(sp.xa, sp.ya, regularization=regularization, max_iter=max_iter, tol=tol, progress=False,
                   dtype=dtype, **settings)
    # score the delivered (non-negative) flux cube: the unclipped low-rank model W V can be <= 0 where counts are
    mods = [predict(r["flux"], o, role=role).values for o, role in ((sp.xa, SPATIAL), (sp.ya, SPECTRAL))]
    return sp.score_models(mods), r


def _tune_lowrank(splits, regularization, grid, fixed, max_iter, tol, dtype):
    rows = []

    def evaluate(cand, mi=max_iter):
        for c, _, _ in rows:
            if c == cand:
                return
        scores, iters = [], []
        for sp in splits:
            s, r = _fit_half_fuse(sp, regularization, {**fixed, **cand}, mi, tol, dtype)
            scores.append(s)
            iters.append(int(r.attrs["iterations"]))
        rows.append((cand, scores, iters))

    if grid is not None:
        for cand in grid:
            evaluate(dict(cand))
    else:
        second = {"lowrank_sobolev": ("mu", MU_LADDER), "lowrank_wavelet2d": ("k", LOWRANK_K_LADDER)}.get(regularization)
        base = {}
        if second is not None:
            base[second[0]] = fixed.get(second[0]) if fixed.get(second[0], "auto") != "auto" else (
                0.01 if second[0] == "mu" else 1.0)
        if fixed.get("rank", "auto") == "auto":
            sp = splits[0]
            limit = min(sp.shape[2], sp.held[1].shape[0] * sp.held[1].shape[1])
            for r in [r for r in RANK_LADDER if r <= limit] or [limit]:
                evaluate({"rank": r, **base})
            rank = min(rows, key=lambda row: np.mean(row[1]))[0]["rank"]
        else:
            rank = fixed["rank"]
        if second is not None and fixed.get(second[0], "auto") == "auto":
            for v in second[1]:
                evaluate({"rank": rank, second[0]: v})
    scores = np.array([r[1] for r in rows], dtype=np.float64)
    choice = dict(rows[int(np.argmin(scores.mean(axis=1)))][0])
    return [r[0] for r in rows], scores, choice, {"iterations": [r[2] for r in rows]}


def _tune_lowrank_iterations(splits, fixed, max_iter, dtype, ladder=(3, 5, 8, 12, 16, 20, 25, 30, 40, 50, 60, 80)):
    """Plain low rank: held-out deviance at a ladder of iterations of ONE run per split (at every iteration
    1..max_iter when ``max_iter`` is below the ladder's first rung).

    The run's callback keeps the subspace coefficients W at the ladder iterations; each is scored
    through the delivered flux ``max(W V, 0)`` (V the run's basis, W rescaled like the result's
    ``coefficients``).
    """
    from .operators.model import predict

    rungs = [n for n in ladder if n <= max_iter] or list(range(1, max_iter + 1))  # below the ladder: every one
    per_split = []
    for sp in splits:
        snaps = {}

        def keep(it, state, snaps=snaps):
            if it in rungs:
                snaps[it] = np.array(state["w"], copy=True)
            return False

        r = _half_fuse(sp.xa, sp.ya, regularization="lowrank", max_iter=max(rungs), tol=None, progress=False,
                       dtype=dtype, callback=keep, **fixed)
        coef = r["coefficients"].values.astype(np.float64)
        w_end = snaps[max(rungs)].astype(np.float64)
        big = np.abs(coef) > 1e-6 * np.abs(coef).max()
        scale = float(np.median(w_end[big] / coef[big]))
        basis = r["basis"].values.astype(np.float64)
        scores = []
        for n in rungs:
            flux = r["flux"].copy(data=np.maximum(snaps[n] @ basis / scale, 0).astype(np.float32))
            mods = [predict(flux, o, role=role).values for o, role in ((sp.xa, SPATIAL), (sp.ya, SPECTRAL))]
            scores.append(sp.score_models(mods))
        per_split.append(scores)
    scores = np.array(per_split, dtype=np.float64).T
    best = rungs[int(np.argmin(scores.mean(axis=1)))]
    return ([{"max_iter": n} for n in rungs], scores, {"max_iter": rl_transfer(best), "half_data_iteration": best},
            {"rule": "one run per split scored at the ladder; transfer as RL (RL_TRANSFER, not measured for low rank)"})


def _paired_difference(split, za, zb, models=None):
    """Held-out deviance difference ``D(za) - D(zb)`` on part B of ``split`` and its Poisson variance.

    ``za``, ``zb``: two part-A iterates (internal units); ``models`` (optional): their predicted part-A counts
    ``(H za + B, H zb + B)`` per observation, if already computed (:func:`_predicted`). With ``m_a``, ``m_b`` the
    predicted part-B counts, the difference is ``2 sum [m_a - m_b - d log(m_a / m_b)]`` and, for Poisson counts
    ``d`` of mean ~ ``(m_a + m_b) / 2``, its variance ``4 sum (m_a + m_b) / 2 (log m_a / m_b)^2`` (both
    instruments; masks honoured). Returns ``(difference, variance)``."""
    pa, pb = models if models is not None else (_predicted(split, za), _predicted(split, zb))
    diff, var = 0.0, 0.0
    for h, k, a, b in zip(split.held, split.masks, pa, pb):
        ma, mb = split.ratio * a.astype(np.float64), split.ratio * b.astype(np.float64)
        hh = h
        if k is not None:
            ma, mb, hh = ma[k], mb[k], h[k]
        lr = np.log(np.maximum(ma, 1e-30) / np.maximum(mb, 1e-30))
        diff += float(2.0 * np.sum(ma - mb - hh * lr))
        var += float(4.0 * np.sum(0.5 * (ma + mb) * lr * lr))
    return diff, var


def _predicted(split, z):
    """Predicted part-A counts ``H z + B`` of every observation of ``split`` (model order)."""
    return [t._plus_background(t.model.forward(z)) for t in split.terms]


def _counts_per_voxel(split):
    """Counts of all inputs (both thinning parts, masked voxels excluded) per voxel of the fused grid of ``split``."""
    total = 0.0
    for t, h, k in zip(split.terms, split.held, split.masks):
        total += float(np.sum(t.data, dtype=np.float64))  # part A (masked counts already 0)
        total += float(np.sum(h if k is None else np.where(np.asarray(k) > 0, h, 0), dtype=np.float64))
    return total / float(np.prod(split.shape))


def _lines_and_counts(split):
    """``(line_richness, lines, counts_per_voxel)`` of ``split`` as the family prior reads them: the
    :func:`line_richness` of the summed sharp-spectral counts (both parts), whether it reaches
    :data:`LINE_RICHNESS`, and :func:`_counts_per_voxel`."""
    rich = line_richness(split.ya["counts"] + split.yb["counts"])
    return rich, bool(rich >= LINE_RICHNESS), _counts_per_voxel(split)


def _beaten(split, z_zero, score_zero, margin, score_rl):
    """For :func:`_tune_threshold`'s ``hopeless``: a test of the thresholded candidate's best iterate so far ``b``
    (:func:`_run_em`'s ``best``: ``z`` and held-out deviance ``score``) that is True when the family prior cannot
    choose it (candidates in the order ladder, thresholded, RL; the first of equal scores wins): when plain RL's score
    ``score_rl`` is lower, or when ``score >= score_zero + margin * se``, ``score_zero`` the best zeroed ladder
    candidate's score and ``se`` the Poisson standard error of the paired held-out deviance difference of the two
    iterates on ``split`` (:func:`_paired_difference`)."""

    def beaten(b):
        if b.get("z") is None:
            return False
        if b["score"] > score_rl:
            return True
        if not np.isfinite(score_zero):
            return False
        _, var = _paired_difference(split, z_zero, b["z"])
        return bool(np.isfinite(var) and b["score"] >= score_zero + margin * math.sqrt(var))

    return beaten


def _family_margin(cpv):
    """The family prior's margin (paired standard errors) at ``cpv`` counts per fused voxel: :data:`FAMILY_MARGIN`,
    or :data:`FAMILY_MARGIN_BRIGHT` from :data:`FAMILY_COUNTS_SPLIT` on."""
    return FAMILY_MARGIN_BRIGHT if cpv >= FAMILY_COUNTS_SPLIT else FAMILY_MARGIN


def _family_prior(split, cands, n_ladder, se):
    """Penalty (held-out deviance units) the family prior adds to each candidate of ``regularization="auto"``.

    ``cands``: the candidates of :func:`tune` (the first ``n_ladder`` the wavelet ladder's, then the thresholded
    candidate and plain RL); ``se``: the Poisson standard error of the paired held-out deviance difference between the
    zeroed ladder candidate and the thresholded one at their best half-data iterates (None: not available). With lines
    in the summed sharp-spectral counts (both parts of ``split``; :func:`line_richness` >= :data:`LINE_RICHNESS`) the
    zeroed ladder candidates get ``margin * se``: they are chosen only if they predict the held-out counts better by
    more than ``margin`` standard errors, ``margin`` = :data:`FAMILY_MARGIN`, or :data:`FAMILY_MARGIN_BRIGHT` with at
    least :data:`FAMILY_COUNTS_SPLIT` counts per fused voxel (all inputs; :func:`_counts_per_voxel`). Without lines
    the other candidates get ``inf``: the zeroed ladder is chosen. Returns ``(penalty per candidate, record)``.
    """
    rich, lines, cpv = _lines_and_counts(split)
    margin = _family_margin(cpv)
    ladder = np.arange(len(cands)) < n_ladder
    zeroed = np.array([c.get("null_space", NULL_SPACE_DEFAULT[0]) == "zero" and c.get("regularization", "wavelet2d1d")
                       == "wavelet2d1d" for c in cands]) & ladder
    both = bool(zeroed.any() and not zeroed.all())
    if lines:
        applied = bool(both and se is not None and np.isfinite(se))
        penalty = np.where(zeroed, margin * se, 0.0) if applied else np.zeros(len(cands))
    else:
        applied = both
        penalty = np.where(zeroed, 0.0, np.inf) if applied else np.zeros(len(cands))
    return penalty, {"line_richness": rich, "lines": bool(lines), "applied": applied, "counts_per_voxel": cpv,
                     "se": None if se is None else float(se), "margin": margin if lines else None,
                     "rule": FAMILY_PRIOR_RULE}


# ----------------------------------------------------------------------------- public
def _tune_families(splits, fixed, tol, cands, scores, choice, extra, keep, prior_now, lines0, rich0, cpv0, rl_job,
                   rl_its, include_rl, include_threshold, family_prior, stop_zero, half_fit, band_record, grid):
    """:func:`tune`'s wavelet family after its k ladder (``cands``, ``scores``, ``choice``, ``extra`` from
    :func:`_tune_wavelet`): plain RL (``rl_job``: its run started beside the ladder, or None), the thresholded
    candidate, the family prior and the zeroed candidate's iteration count. Returns ``(cands, scores, choice,
    extra)`` of every candidate."""
    extra = dict(extra, ladder=dict(choice))
    choices = [dict(c) for c in cands]
    n_ladder = len(cands)
    th_best = None  # the thresholded candidate's best half-data iterate per split (family prior)
    scores = np.asarray(scores, dtype=np.float64).reshape(len(cands), -1)
    if stop_zero and keep and json.loads(keep["key"]).get("null_space") == "zero":
        # against the families stopped early (each at its best iterate), the ladder's best candidate is scored
        # at the best iterate of its ladder run too (free: the curve is there; see ZERO_FACTOR)
        row = [json.dumps(c, sort_keys=True) for c in cands].index(keep["key"])
        n = min(len(c) for c in keep["curves"])
        j = int(np.argmin(np.mean([c[:n] for c in keep["curves"]], axis=0)[1:]) + 1) if n > 1 else 0
        scores[row] = [float(c[j]) for c in keep["curves"]]
        extra = dict(extra, ladder_scored_at=j + keep["warm_iter"])
    settled = None  # the family prior's decision when the other families cannot change it (complete=False)
    if prior_now and not lines0 and choice.get("null_space", "zero") == "zero" and all(
            c.get("null_space", NULL_SPACE_DEFAULT[0]) == "zero" for c in cands):
        settled = {"line_richness": rich0, "lines": False, "applied": True, "counts_per_voxel": cpv0,
                   "se": None, "margin": None, "rule": FAMILY_PRIOR_RULE,
                   "settled": "no lines: the prior takes the zeroed ladder whatever the thresholded candidate "
                              "and plain RL would score, so they were not run"}
    rows_its = {}  # candidate row -> per-split transfer iterates (half_fit)
    want_rl = include_rl and settled is None
    if want_rl and rl_job is None:  # no lines, yet the prior is undecided: plain RL runs now
        rl_job = background(_tune_none, splits, 100, tol, iterates=rl_its)
    rl_run = []  # (score per split at the best iterate, choice, extra) once plain RL's run is read

    def rl_result():
        if not rl_run:
            _, rl_scores, rl_choice, rl_extra = rl_job.result()
            rl_scores = np.asarray(rl_scores, dtype=np.float64)
            rl_run.append((rl_scores[int(np.argmin(rl_scores[1:].mean(axis=1)) + 1)], rl_choice, rl_extra))
        return rl_run[0]

    hopeless = None
    if (prior_now and settled is None and lines0 and len(splits) == 1 and keep and keep.get("best_z")
            and keep["best_z"][0] is not None and want_rl):
        zrow = np.array([c.get("null_space", NULL_SPACE_DEFAULT[0]) == "zero" for c in cands])
        z_best = float(np.min(scores.mean(axis=1)[zrow])) if zrow.any() else math.inf
        beaten = []

        def hopeless(b):  # asked only once the thresholded run's minimum is behind: plain RL's score is then read
            if not beaten:
                beaten.append(_beaten(splits[0], keep["best_z"][0], z_best, _family_margin(cpv0),
                                      float(np.mean(rl_result()[0]))))
            return beaten[0](b)
    if settled is None and include_threshold and choice.get("null_space", "zero") == "zero" and fixed.get(
            "null_space", "auto") == "auto":
        th_best = [] if family_prior else None
        th_its = [] if half_fit is not None else None
        th_set, th_scores, th_choice = _tune_threshold(splits, fixed, choice, iterates=th_best, hopeless=hopeless,
                                                       sq_iterates=th_its)
        rows_its[len(cands)] = th_its
        cands, choices = list(cands) + [th_set], choices + [th_choice]
        scores = np.vstack([scores, np.asarray(th_scores, dtype=np.float64)[None]])
        extra = dict(extra, threshold={**th_choice, "rule": SQ_RULE})
    if want_rl:
        rl_score, rl_choice, rl_extra = rl_result()
        rows_its[len(cands)] = rl_its
        cands = list(cands) + [{"regularization": "none", "max_iter": rl_choice["max_iter"]}]
        choices = choices + [dict(cands[-1])]
        scores = np.vstack([scores, rl_score[None]])
        extra = dict(extra, rl={**rl_choice, "rule": rl_extra["rule"]})
    mean = scores.mean(axis=1)
    if settled is not None:
        extra = dict(extra, family_prior=settled)
    elif family_prior and include_rl:
        se = None
        if keep and keep.get("best_z") and th_best and all(z is not None for z in keep["best_z"] + th_best):
            pairs = [_paired_difference(sp, za, zb) for sp, za, zb in zip(splits, keep["best_z"], th_best)]
            se = math.sqrt(sum(v for _, v in pairs)) / len(pairs)  # SE of the mean over splits
        penalty, prior = _family_prior(splits[0], cands, n_ladder, se)
        mean = mean + penalty
        extra = dict(extra, family_prior=prior)
    chosen = int(np.argmin(mean))
    step = extra.get("shape_step")
    if step and step["k"] != step["k_walk"] and chosen < n_ladder:  # the ladder is chosen: delivered at the step's k
        chosen = [json.dumps(c, sort_keys=True) for c in cands[:n_ladder]].index(json.dumps(choice, sort_keys=True))
    extra = dict(extra, chosen_candidate=chosen)
    choice = {k: v for k, v in choices[chosen].items() if k not in DIAG_KEYS}
    if (stop_zero and keep and choice.get("null_space", NULL_SPACE_DEFAULT[0]) == "zero" and "max_iter" not in
            choice and choice.get("regularization", "wavelet2d1d") == "wavelet2d1d"
            and json.loads(keep["key"]) == {k: v for k, v in choice.items() if k != "regularization"}):
        zero_its = [] if half_fit is not None and keep.get("best_z") else None
        zc = _zero_iterations(splits, fixed, keep, warm_iter=keep["warm_iter"], iterates=zero_its)
        if band_record is not None and grid is None and fixed.get("k", "auto") == "auto":
            zc = bottom_rung_count(zc, choice.get("k"), band_record["continuum"])
        rows_its[chosen] = zero_its
        choice = dict(choice, max_iter=zc["max_iter"])
        extra = dict(extra, zero={**zc, "rule": ZERO_RULE})
    its = rows_its.get(chosen)
    if half_fit is not None and its and its[0].get("z") is not None:
        half_fit.update(split=splits[0], z=its[0]["z"], iteration=its[0]["iteration"])
    return cands, scores, choice, extra


@fitting
def tune(*observations, regularization="wavelet2d1d", grid=None, n_splits=1, seed=0, fraction=0.5,
         max_iter=None, tol=1e-4, dtype="float32", select_null_space=False, include_rl=False,
         include_threshold=False, stop_zero=False, family_prior=False, complete=False, half_fit=None,
         **fixed) -> xr.Dataset:
    """Choose fusion settings from the data alone by Poisson thinning (see the module docstring).

    Parameters
    ----------
    *observations : the observations (any order, two or more; in-memory counts). Every one is thinned and its
        held-out part scored (further inputs as :func:`xfusion.fuse` models them: same pixels, same
        channels or detector-pixel tiles); the low-rank families tune on exactly two.
    regularization : one family, as named in :func:`xfusion.fuse` (default ``"wavelet2d1d"``: the k ladder of
        that prior; ``"none"``: the plain-RL iteration count; ...). ``"auto"`` is not a family: the comparison
        of families that ``fuse(regularization="auto")`` makes is :func:`resolve_auto`, and its record is the
        result's ``parameters["auto_tuning"]``.
    grid : optional list of candidate settings (dicts of fuse options) evaluated exhaustively;
        default: the coarse-to-fine search of the module docstring.
    n_splits : independent thinnings averaged per candidate (more when one split is too noisy).
    seed : seed of the thinning (reproducible).
    fraction : share of counts in the fitted part (the rest is held out).
    max_iter, tol : stopping rule of each candidate fit (default: that of :func:`xfusion.fuse`;
        for ``none`` the longest RL run, default 100).
    select_null_space : wavelet2d1d only: also compare the null-space treatments of
        ``NULL_SPACE_CANDIDATES`` by held-out deviance (off by default: thinning is blind to
        components neither instrument sees, and on the scene suite it picked the wrong one).
    include_rl : wavelet2d1d only: add plain RL at its best iteration (same splits) as a
        candidate ``{"regularization": "none", "max_iter": n}``; when it predicts the held-out
        part better, the choice says so (fuse with ``regularization="none", max_iter=n``).
        Measured on 5 suite scenes: it picked the better family every time (RL on bright
        line-rich scenes, +7.9 and +8.5 dB over the wavelet choice; wavelet on 3 others).
    include_threshold : wavelet2d1d only (with the default null space): add the ladder's best ``k`` with
        ``null_space="threshold"``, its iteration count chosen like plain RL's (:func:`_tune_threshold`), as a
        candidate ``{"regularization": "wavelet2d1d", "k": ..., "null_space": "threshold", "max_iter": n}``.
    family_prior : wavelet2d1d with ``include_rl`` and ``include_threshold``: choose under the family prior
        (:func:`_family_prior`, :data:`LINE_RICHNESS`, :data:`FAMILY_MARGIN`; what :func:`select` does) instead of by
        the deviance alone; the curve keeps every candidate's deviance, ``details`` records the prior (its line
        richness and standard error) and ``chosen_candidate``.
    complete : with ``family_prior``: run every candidate in full even where the prior has already decided. By
        default (False) runs that cannot change the choice are cut (session 12; same choice, fewer EM steps):
        without lines the thresholded candidate and plain RL are not run (the prior takes the zeroed ladder whatever
        they score; ``details["family_prior"]["settled"]`` says so), and with one split the thresholded run (after
        plain RL's) stops once its deviance minimum is behind if the prior can no longer choose it (:func:`_beaten`,
        :func:`_tune_threshold`'s ``hopeless``). Benchmarks that read every candidate's record pass True.
    stop_zero : wavelet2d1d only: when the chosen candidate is the ladder's with its null space zeroed, choose its
        iteration count too (:func:`_zero_iterations`, continuing the candidate's half-data run; the choice gains
        ``"max_iter": n``), and score that candidate at the best iterate of its ladder run (not its last) against the
        thresholded candidate and plain RL, which are scored at their best iterates.
    half_fit : a dict, optional (wavelet2d1d with ``stop_zero``, ``include_threshold`` and ``include_rl``: what
        :func:`select` runs): receives the first split (``split``, a ``_Split``) and the chosen candidate's iterate on
        its part A from which the count on all counts was transferred (``z``, internal units; ``iteration``, warm
        start included): the zeroed candidate's best deviance iterate (:func:`zero_transfer`), the thresholded one's
        best squared-error iterate (:func:`sq_transfer`), plain RL's of the two that decides its count. Left empty
        when the chosen candidate has none (e.g. the zeroed one without an iteration count).
        :func:`tune_shape` scores the spectral-shape prior on it (session 21).
    **fixed : settings kept fixed (e.g. ``n_scales_2d=2``); any given as "auto" are tuned.

    Returns
    -------
    xarray.Dataset with ``heldout_deviance`` (candidate, split): the Poisson deviance of the
    held-out part of both instruments (dimensionless, lower is better), ``mean_deviance``
    (candidate), coordinate ``setting`` (candidate; JSON of each candidate), and attrs
    ``choice`` (JSON: the chosen settings for a fit on all counts), ``regularization``,
    ``fraction``, ``n_splits``, ``seed``, ``elapsed_s``, and method notes (``details``, JSON).
    """
    from .fuse import MAX_ITER, REGULARIZATIONS, _check_dtype, _check_scales

    t0 = time.perf_counter()
    if regularization not in REGULARIZATIONS:
        raise ValueError(f"unknown regularization {regularization!r}; choose one of {', '.join(REGULARIZATIONS)}")
    from . import registry

    if regularization not in ("none", "wavelet2d1d", "lowrank_local") and \
            registry.regularization(regularization).family != registry.SUBSPACE:
        hint = (" (the same prior: tune regularization='wavelet2d1d' with stabilize='anscombe')"
                if regularization == "anscombe2d1d" else "")
        raise ValueError(f"tune does not choose the settings of regularization={regularization!r}{hint}; tune "
                         "'wavelet2d1d', 'none' or a low-rank one, or pass its settings explicitly to xfusion.fuse")
    if isinstance(n_splits, bool) or not (isinstance(n_splits, numbers.Integral) and n_splits >= 1):
        raise ValueError(f"n_splits must be an integer >= 1; got {n_splits!r}")
    n_splits = int(n_splits)
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral)
                                 or max_iter < 1):
        raise ValueError(f"max_iter must be an integer >= 1 (or None for the default); got {max_iter!r}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < tol < math.inf):
        raise ValueError(f"tol must be a finite number > 0 (relative change stopping each candidate fit) or None; "
                         f"got {tol!r}")
    _check_dtype(dtype)  # fuse's checks and messages: a dtype, observation Datasets (not a store's path)
    require_datasets(observations)
    if grid is not None and (isinstance(grid, (dict, str)) or not all(isinstance(g, dict) for g in grid)
                             or len(grid) == 0):
        raise ValueError(f"grid must be a list of candidate settings (at least one), one dict of fuse options each (e.g. "
                         f"[{{'k': 1.0}}, {{'k': 2.0}}]); got {grid!r}")
    flags = [n for n, v in (("select_null_space", select_null_space), ("include_rl", include_rl),
                            ("include_threshold", include_threshold), ("stop_zero", stop_zero),
                            ("family_prior", family_prior), ("complete", complete),
                            ("half_fit", half_fit is not None)) if v]
    if regularization != "wavelet2d1d" and flags:
        raise ValueError(f"{', '.join(flags)} apply to regularization='wavelet2d1d' only (the k ladder and the "
                         f"families compared with it); tune(regularization={regularization!r}) would ignore them")
    if grid is not None and regularization in ("none", "lowrank_local"):
        raise ValueError(f"tune(regularization={regularization!r}) has no candidate grid (it chooses "
                         f"{'the RL iteration count' if regularization == 'none' else 'rank and iterations'} along "
                         "its runs); grid applies to wavelet2d1d and the low-rank families")
    if regularization in ("none", "wavelet2d1d"):
        accepted = WAVELET_KEYS if regularization == "wavelet2d1d" else ()
        bad = sorted(set(fixed) - set(accepted))
        if bad:
            raise ValueError(f"tune(regularization={regularization!r}) takes no option(s) {', '.join(bad)} "
                             f"(fixed options accepted: {', '.join(accepted) or 'none'})")
    if regularization == "wavelet2d1d":  # fuse's checks of the options, before any fit (n_scales_2d=0 was accepted)
        from .fuse import _resolve

        # spectral_band_factor="auto": select's default, resolved on the split below (not a fuse option value)
        _resolve(regularization, "em", {k: v for k, v in fixed.items() if (k, v) != ("spectral_band_factor", "auto")})
        for g in grid or ():
            if "auto" in g.values():
                raise ValueError(f"a grid candidate gives values, not 'auto'; got {g!r}")
            _resolve(regularization, "em", {**{k: v for k, v in fixed.items() if v != "auto"}, **g})
    if len(observations) > 2 and regularization not in ("wavelet2d1d", "none", "lowrank_local"):
        raise NotImplementedError(f"tuning {regularization!r} uses exactly two observations (got {len(observations)});"
                                  " pass explicit rank/mu/max_iter, or tune wavelet2d1d / none")
    splits = _splits(observations, fraction, n_splits, seed, dtype)
    band_record = None
    if fixed.get("spectral_band_factor") == "auto":  # select's default: the factor from the counts (session 60)
        f, rich = spectral_band_factor(splits[0])
        fixed = {**fixed, "spectral_band_factor": f}
        band_record = {"factor": f, "line_richness": rich, "continuum": bool(rich < SPECTRAL_BAND_RICHNESS),
                       "rule": f"{SPECTRAL_BAND_FACTOR:g} where the summed sharp-spectral counts read as a continuum "
                               f"(line richness < {SPECTRAL_BAND_RICHNESS:g}), else 1"}
    for g in grid or [{}]:  # scale counts that fuse would refuse for this grid, refused before any fit
        _check_scales({**fixed, **g}, splits[0].shape)
    if regularization == "none":
        cands, scores, choice, extra = _tune_none(splits, int(max_iter or 100), tol)
    elif regularization == "wavelet2d1d":
        keep = {} if stop_zero else None
        prior_now = family_prior and include_rl and include_threshold and not complete
        rich0, lines0, cpv0 = _lines_and_counts(splits[0]) if prior_now else (None, True, None)
        rl_its = [] if include_rl and half_fit is not None else None
        # plain RL's run needs nothing from the ladder's; it runs beside it (and the thresholded run) when the family
        # prior is sure to want it: with lines (or no prior cutting runs). Without lines it runs after the ladder
        # only if the ladder's choice leaves the prior undecided (below). The same results as run in turn.
        rl_job = background(_tune_none, splits, 100, tol, iterates=rl_its) if include_rl and lines0 else None
        try:
            # where it was measured: select's zeroed ladder with k walked (not a user's null space, k or sigmoid rule,
            # nor a null-space search: every candidate of :func:`_tune_wavelet` is then a rung of the walk)
            shape_step = bool(SHAPE_STEP and band_record is not None and band_record["continuum"] and grid is None
                              and fixed.get("k", "auto") == "auto" and fixed.get("null_space", "auto") == "auto"
                              and fixed.get("k_rule", "constant") == "constant" and not select_null_space)
            cands, scores, choice, extra = _tune_wavelet(splits, grid, fixed, int(max_iter or MAX_ITER["em"]), tol,
                                                         select_null_space=select_null_space, keep=keep,
                                                         shape_step=shape_step)
            tuned = _tune_families(splits, fixed, tol, cands, scores, choice, extra, keep, prior_now, lines0, rich0,
                                   cpv0, rl_job, rl_its, include_rl, include_threshold, family_prior, stop_zero,
                                   half_fit, band_record, grid)
        except BaseException:
            if rl_job is not None:
                rl_job.cancel()
            raise
        cands, scores, choice, extra = tuned
    elif regularization == "lowrank_local":
        cands, scores, choice, extra = _tune_local_rank(splits, fixed, int(max_iter or RL_MAX_ITER))
    elif regularization == "lowrank" and grid is None and fixed.get("rank", "auto") != "auto":
        cands, scores, choice, extra = _tune_lowrank_iterations(splits, fixed, int(max_iter or 80), dtype)
    else:
        fx = {k: v for k, v in fixed.items() if v != "auto"}
        cands, scores, choice, extra = _tune_lowrank(splits, regularization, grid, fixed if grid is None else fx,
                                                     int(max_iter or MAX_ITER["fista"]) if regularization != "lowrank"
                                                     else int(max_iter or 30), tol, dtype)
    scores = np.asarray(scores, dtype=np.float64).reshape(len(cands), -1)
    finite = np.isfinite(scores.mean(axis=1))
    if finite.any() and finite.sum() == 1 and len(cands) >= 3 and regularization != "wavelet2d1d":
        warnings.warn(
            f"tune({regularization!r}): only one of {len(cands)} candidates ({json.dumps(cands[int(np.argmax(finite))])}"
            ") has a finite held-out deviance: the others predict no counts in voxels where the held-out half has some "
            "(e.g. plain RL holding exactly 0 flux where only one instrument sees and the fitted half has no counts), "
            "so the curve cannot choose. Fuse only where both instruments see, or use a regularized family",
            UserWarning, stacklevel=_caller_level())
    if not finite.any():
        warnings.warn(
            f"tune({regularization!r}): every candidate's held-out deviance is infinite (each was abandoned, or its "
            "non-negative cube predicts no counts in voxels where the held-out half has some, e.g. a low-rank cube "
            f"clipped at 0), so the choice {json.dumps(choice, sort_keys=True)} is not supported by the data; "
            "compare the candidates on more counts, another family, or fix the setting", UserWarning,
            stacklevel=_caller_level())
    if band_record is not None:
        extra = dict(extra, spectral_band=band_record)
    ds = xr.Dataset(
        {"heldout_deviance": (("candidate", "split"), scores,
                              {"long_name": "Poisson deviance of the held-out part (both instruments)"}),
         "mean_deviance": (("candidate",), scores.mean(axis=1),
                           {"long_name": "mean over splits (inf: candidate abandoned as hopeless, or its cube predicts no "
                                         "counts where the held-out part has some)"})},
        coords={"candidate": np.arange(len(cands)),
                "setting": (("candidate",), [json.dumps(c, sort_keys=True) for c in cands])})
    ds.attrs.update({"regularization": regularization, "choice": json.dumps(choice, sort_keys=True),
                     "fraction": float(fraction), "n_splits": int(n_splits), "seed": str(seed),
                     "elapsed_s": time.perf_counter() - t0, "details": json.dumps(extra, default=str)})
    return ds


#: the families ``regularization="auto"`` compares (:func:`select`)
AUTO_FAMILIES = ("wavelet2d1d", "none")
#: options of the wavelet family that :func:`select` passes on (fixed by the caller or "auto")
WAVELET_KEYS = ("n_scales_2d", "n_scales_1d", "k", "k_rule", "k_min", "k_max", "null_space", "per_band", "noise",
                "null_factor", "spectral_band_factor", "stabilize")


def select(*observations, n_splits=1, seed=0, fraction=0.5, dtype="float32", tol=1e-4, complete=False,
           half_fit=None, **fixed) -> xr.Dataset:
    """``regularization="auto"``: tuned ``wavelet2d1d`` or plain RL, whichever predicts held-out counts best.

    On the same thinning split(s) (:func:`thin`), the wavelet candidates of :func:`tune` (the ``k``
    ladder at the default null-space treatment, or the options in ``fixed``), the ladder's best ``k``
    with ``null_space="threshold"`` scored at every iteration (:func:`_tune_threshold`; only when the
    null space is left "auto") and plain two-instrument Richardson-Lucy scored at every iteration are
    compared by the Poisson deviance of the held-out part of both instruments; the smallest wins, after the family
    prior (sessions 9-10, :func:`_family_prior`: with lines in the summed sharp-spectral counts the zeroed ladder must
    win by :data:`FAMILY_MARGIN` paired standard errors, :data:`FAMILY_MARGIN_BRIGHT` with many counts per fused voxel;
    without lines it is chosen; the record ``details["family_prior"]``). The
    iteration counts of the last two are transferred to all counts by :func:`sq_transfer` (session 10) and
    :func:`rl_transfer`. Why: on
    bright, line-rich scenes plain RL (or the thresholded prior) stopped early keeps Doppler-split lines
    that the zeroed starlet prior smooths away (suite: +2 to +8 dB); on faint or continuum-dominated
    scenes the zeroed prior wins. Cost: the wavelet tuning plus two early-stopped runs on half the counts
    (at most 100 iterations each, stopped once the minimum is well behind; since session 12 not run when the family
    prior has already decided, see ``complete`` in :func:`tune`). Measured (session 12, CPU time, 24 held-out suite
    scenes at full size, 36x36 or 45x45 x 1600-2400): tuning plus the final fit took a median 2.5x (at most 4.5x) one
    fit with fixed settings (k=1, zeroed null space, fuse's default stop: 50 iterations), and a median 6.4x the final
    fit with the chosen settings, which is often short (5-16 iterations on faint scenes). Session 13
    (benchmarks/tuning_cost.py, same scenes, two jobs at once): against the whole fixed-setting ``fuse`` call a median
    2.0x, within 3x on 22-23/24 scenes in two runs (at most 3.1-3.2x); against that fit's iterations alone (wall) a
    median 2.75x, at most 4.9x, within 3x on 16/24 -- session 12's reading.

    ``complete``: run every candidate in full (see :func:`tune`; default: runs that cannot change the choice are cut).
    ``half_fit``: a dict receiving the chosen candidate's half-data iterate (see :func:`tune`; for :func:`tune_shape`).
    ``fixed``: wavelet options (:data:`WAVELET_KEYS`; "auto" = tuned); unless it gives ``spectral_band_factor``,
    every wavelet candidate takes :func:`spectral_band_factor` of the split (session 60: 8 on continuum skies, else
    1), recorded in ``details["spectral_band"]``, in the candidates' settings and in the choice. On a continuum sky the
    k walk's choice then moves half-way toward the rung best scored through the spectral-shape prior
    (:data:`SHAPE_STEP`, session 71; recorded in ``details["shape_step"]``). Returns the :func:`tune`
    Dataset with attrs ``regularization = "auto"`` and ``choice`` (JSON) always naming the family:
    ``{"regularization": "none", "max_iter": n}`` or ``{"regularization": "wavelet2d1d", "k": ...,
    "null_space": ..., "n_scales_1d": ...}`` (with ``"max_iter": n`` when the null space is
    thresholded, and, since session 8, when the ladder's zeroed candidate wins: :func:`_zero_iterations`) -- pass
    it to :func:`xfusion.fuse` as keyword arguments. The zeroed candidate is compared at the best iterate of its
    ladder run (the others at their best iterates too).
    """
    bad = sorted(set(fixed) - set(WAVELET_KEYS))
    if bad:
        raise ValueError(f"regularization='auto' compares {' and '.join(AUTO_FAMILIES)}; option(s) {', '.join(bad)} "
                         f"belong to neither (accepted: {', '.join(WAVELET_KEYS)}); choose the regularization explicitly")
    t0 = time.perf_counter()
    fixed = {"spectral_band_factor": "auto", **fixed}  # "auto": :func:`spectral_band_factor` on the split
    cur = tune(*observations, regularization="wavelet2d1d", include_rl=True, include_threshold=True, stop_zero=True,
               family_prior=True, n_splits=n_splits, seed=seed, fraction=fraction, dtype=dtype, tol=tol,
               complete=complete, half_fit=half_fit, **fixed)
    ch = json.loads(cur.attrs["choice"])  # the record, diagnostics included
    if "regularization" not in ch:
        ch = {"regularization": "wavelet2d1d", **ch}
    # every wavelet candidate was built with the factor: its settings (and the choice) say so, so that they refit it
    details = json.loads(cur.attrs["details"])
    band = {"spectral_band_factor": float(details["spectral_band"]["factor"] if fixed["spectral_band_factor"] == "auto"
                                          else fixed["spectral_band_factor"])}
    if ch["regularization"] == "wavelet2d1d":
        ch = {**ch, **band}
    cur = cur.assign_coords(setting=("candidate", [
        s if json.loads(s).get("regularization", "wavelet2d1d") != "wavelet2d1d" else json.dumps(
            {**json.loads(s), **band}, sort_keys=True) for s in cur["setting"].values]))
    if "ladder" in details:
        cur.attrs["details"] = json.dumps({**details, "ladder": {**details["ladder"], **band}}, default=str)
    cur.attrs.update({"regularization": "auto", "choice": json.dumps(ch, sort_keys=True),
                      "families": json.dumps(list(AUTO_FAMILIES)), "elapsed_s": time.perf_counter() - t0})
    return cur


def resolve_auto(*observations, seed=0, dtype="float32", tol=1e-4, half_fit=None, **fixed):
    """For :func:`xfusion.fuse` with ``regularization="auto"``: ``(regularization, options, record)``.

    ``options``: the chosen settings to fuse with (``max_iter`` for "none"; ``k``, ``null_space``,
    ``n_scales_1d``, ``max_iter`` (iterations by thinning) and the fixed wavelet options for "wavelet2d1d": nothing
    left "auto", so fuse
    does not tune again); ``record``: JSON-able summary of the validation curve (as
    ``parameters["auto_tuning"]``), with ``"regularization": "auto"``.
    """
    cur = select(*observations, seed=seed, dtype=dtype, tol=tol, half_fit=half_fit, **fixed)
    ch = choice(cur)
    reg = ch.pop("regularization")
    if reg == "wavelet2d1d":
        # the fixed wavelet options only: select's own arguments passed through (n_splits, fraction) are not fuse's
        ch = {**{k: v for k, v in fixed.items() if v != "auto" and k in WAVELET_KEYS}, **ch}
        for k in DIAG_KEYS:
            ch.pop(k, None)
    rec = dict(_record(cur), regularization="auto", chosen=reg)
    return reg, ch, rec


#: pseudo-counts ``n0`` of the spectral-shape prior compared by :func:`tune_shape` (photons). Session 20: 1e3-1e6;
#: session 21 added 3e6, 1e7 and 3e7, because every continuum-only scene took the top rung 1e6 and its NMSE was still
#: rising there. Measured: the 11 tuning scenes that took 1e6 all take 3e7, NMSE +0.67 dB (5 small: +0.00 to +1.66)
#: and +0.05 dB (6 full size: -0.01 to +0.11); held out, the 37 scenes whose best rung was 1e5 or more: 31 move to 3e7,
#: small +0.64 dB (13 scenes), full size +0.22 dB (24), none worse than -0.01 dB, velocity maps unchanged (within
#: 0.3 km/s); the 6 whose best rung was 1e5 stay there (the held-out deviance over the ladder was unimodal on all 216
#: tuning and held-out scenes). Above ~3e7 the prior's weight ``n_p / (n_p + n0)`` is near 0 on these scenes: each
#: pixel takes its neighbourhood's shape, scaled to its own total.
SHAPE_LADDER = (1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7)
#: the count of the half-data fit :func:`tune_shape` scores: the chosen count over this factor (the factor the
#: transfers of :func:`sq_transfer` and :func:`zero_transfer` apply from half to all counts)
SHAPE_HALF_FACTOR = 1.25
#: the pseudo-counts of sessions 8-19 (:data:`xfusion.regularizers.shape.AUTO_PSEUDO_COUNTS`, the best single value on
#: the small tuning scenes): kept unless the best rung predicts the held-out half better by :data:`SHAPE_MARGIN`
#: paired Poisson standard errors
SHAPE_ANCHOR = AUTO_PSEUDO_COUNTS
#: one standard error (the usual "one-SE rule" of cross-validation; not fitted: on the tuning scenes margins of 0.5-3
#: gave the same mean NMSE within 0.02 dB, 0 lost on the scenes whose held-out deviance is flat over the ladder)
SHAPE_MARGIN = 1.0
#: without the tuning's own iterate (``max_iter`` given with "auto", or a direct call), :func:`tune_shape` fits the
#: chosen settings on half the counts itself, and only when that fit runs at most this many iterations (the tuning's
#: budget per candidate, :data:`CANDIDATE_ITER`), else it keeps :data:`SHAPE_ANCHOR`. Session 20 bounded every call
#: so (uncapped, the half fit ran up to 103 iterations: point_sources/500018 took 71.8 s quiet, over the 60 s target,
#: and tuning plus final fit stayed within 3x one fit on 13 of 24 scenes instead of 21); since session 21 ``fuse``
#: passes the tuning's iterate, which costs no fit, and the bound applies only here.
SHAPE_MAX_HALF_ITER = CANDIDATE_ITER
#: level-0 pseudo-counts (photons) that :func:`tune_shape` compares with ``n0`` once ``n0`` is chosen (session 37,
#: :func:`_tune_pixel_level`; the README's velocity recipe of session 36 is ``max(n0, 1e5)``). Frozen with its rule
#: before any evaluation; measured (benchmarks/QUALITY_HISTORY.md, session 37), mean NMSE change against ``n0`` alone:
#: tuning 48 small +0.10 dB, 24 full size +0.07; held out 72 small +0.17, 72 full size +0.10; 24 fresh seeds each
#: +0.21 / +0.19; NMSE >= RL oracle and baselines unchanged on every set, velocity <= RL oracle unchanged or +1.
PIXEL_LADDER = (1e5, 3e5, 1e6)
#: level-0 floor of the default (``regularization="auto"`` with ``shape_prior`` "auto", the default: the pseudo-counts
#: :func:`tune_shape` picks, then level 0 at ``max(n0_pixel, PIXEL_FLOOR)``; ``["auto", None]`` for none; session 44).
#: Thinning cannot score a line's centroid inside one sharp-spectral pixel, and this floor pulls the pixel-scale
#: centroid scatter toward the neighbourhood. Not fitted here: session 36's value, measured on the tuning seeds
#: (s36, s39) and on all 192 held-out rows (s39: full-size velocity <= RL oracle 68 -> 71/77, small NMSE >= RL oracle
#: 87 -> 84/96, 83/96 end to end in session 44); adopted in session 44 on 48 fresh seeds never run before (criteria frozen first): full size velocity
#: 35 -> 36/38, NMSE >= RL oracle 46 -> 46/48, baselines and flux 48/48, mean +0.008 dB; small velocity 28 -> 32/38,
#: NMSE >= RL oracle 46 -> 46/48, mean -0.027 dB (benchmarks/QUALITY_HISTORY.md). Session 49 (diagnostic): on the 21
#: small held-out skies where plain RL is chosen (none at full size) the floor costs NMSE >= RL oracle 14 -> 9 (0.05-1.5 dB
#: per sky), but dropping it there raised the velocity RMS on 18 of 25 RL skies (tuning seeds included) and the width
#: RMS on all 25: kept on every family.
PIXEL_FLOOR = 1e5


def with_pixel_floor(choice, floor=PIXEL_FLOOR):
    """The spectral-shape prior's pseudo-counts ``choice`` (``n0`` or ``[n0, n0_pixel]``) with level 0 at no fewer than
    ``floor`` photons: ``[n0, max(n0_pixel, floor)]`` (``floor`` None: ``choice`` unchanged). What ``fuse`` delivers
    through after :func:`tune_shape` (``shape_prior`` "auto": ``floor`` :data:`PIXEL_FLOOR`; ``["auto", N]``: N)."""
    if floor is None:
        return choice
    from .regularizers.shape import levels_of

    n0, n0_pixel = levels_of(choice)
    return [n0, max(n0_pixel, float(floor))]


def floor_off_sources(choice, floor=PIXEL_FLOOR, peaks=()):
    """What ``fuse``'s default delivers for thinning's shape-prior ``choice``: :func:`with_pixel_floor`, and where the
    2D-1D prior has line-free compact sources (``peaks``, its resolved ``source_lines``) and thinning's own level 0 is
    below the floor, the triple ``[n0, floored n0_pixel, own n0_pixel]``: the floor kept off their 3x3 footprints
    (:class:`xfusion.regularizers.shape.SpectralShape`; session 52, ``benchmarks/QUALITY_HISTORY.md``)."""
    from .regularizers.shape import levels_of

    out = with_pixel_floor(choice, floor)
    own = levels_of(choice)[1]
    return out + [own] if floor is not None and len(peaks) and own < out[1] else out


def tune_shape(*observations, settings, seed=0, fraction=0.5, dtype="float32", tol=1e-4, half_fit=None):
    """Pseudo-counts of the spectral-shape prior (:mod:`xfusion.regularizers.shape`) by Poisson thinning.

    ``observations``: the inputs in model order (as :func:`select`; the same split for the same ``seed``);
    ``settings``: the fit :func:`select` chose (``regularization`` and its options, ``max_iter`` its count on all
    counts); ``half_fit``: what :func:`select` put in its ``half_fit`` dict (the split and the chosen candidate's
    iterate on part A from which ``max_iter`` was transferred: see :func:`tune`), or None. That iterate (else a fit of
    the chosen settings on part A for ``round(max_iter / SHAPE_HALF_FACTOR)`` iterations, at least 1) goes through
    the prior with every ``n0`` of :data:`SHAPE_LADDER` (the starlet levels computed once,
    :func:`xfusion.regularizers.shape.shrink_ladder`) and each is scored by the Poisson deviance of part B of every
    input (:meth:`_Split.score_models`). The best rung is chosen if it beats :data:`SHAPE_ANCHOR` by more than
    :data:`SHAPE_MARGIN` paired Poisson standard errors (:func:`_paired_difference`), else the anchor.
    ``n0`` is the concentration of the prior's Dirichlet shape model, a property of the sky rather than of the
    counts, so the value chosen on half the counts applies to all of them. Returns ``(n0, record)``; the record holds
    the ladder, each rung's held-out deviance, its gain over the anchor and that gain's standard error, the half-data
    count and where the half-data cube came from (``half_data_cube``: "the tuning's iterate" or "a fit").
    Cost with the tuning's iterate: one starlet pass and one forward model per rung (session 21: 0.05 s CPU small,
    0.4-1.8 s at full size, against 8.6-20.2 s for one fixed fit). Without it: at most :data:`SHAPE_MAX_HALF_ITER`
    iterations on part A (session 20: 1.3-3.9 s CPU on the full-size scenes it scored); not scored (the anchor,
    recorded as ``"not tuned"``) when that fit would run more iterations.

    Then level 0 (:func:`_tune_pixel_level`): each ``N`` of :data:`PIXEL_LADDER` above ``n0`` as ``[n0, N]``, scored
    the same way on the same cube; the returned choice is ``[n0, N]`` when one beats ``n0`` by more than
    :data:`SHAPE_MARGIN` paired standard errors (the record's ``pixel`` entry holds that stage).

    Why (session 20): ``n0 = 1e4`` was the best single value on the small tuning scenes (session 8), but the best
    value per scene spans 1e3-3e3 (bright line-rich mixes, whose neighbouring pixels differ in shape) to 3e5-1e6
    (continuum-only scenes, whose pixels share their neighbourhood's smooth shape). The part of the shape that the
    prior changes (each pixel's spectrum at the sharp-spatial instrument's energy resolution) is seen by the held-out
    counts, unlike the bands fine in space and in energy that decide the family (:data:`FAMILY_MARGIN`). Measured
    (``benchmarks/QUALITY_HISTORY.md``, session 20; every rung's NMSE against the truth, offline), NMSE change
    against 1e4 for all: tuning scenes, 48 small +0.23 dB (none worse), 24 full size +0.25 dB; held out (the 144
    rows of the suite CSV) +0.22 to +0.29 dB per set, all of it on the continuum-only (synchrotron) scenes, +1.1 to
    +1.8 dB per kind; line scenes unchanged on average (-0.13 to +0.05 dB per kind).
    """
    from .fuse import MAX_ITER
    if half_fit and half_fit.get("z") is not None:  # the tuning's own iterate: nothing to fit
        sp, n_half = half_fit["split"], int(half_fit["iteration"])
        z, source = np.asarray(half_fit["z"], dtype=np.float64), "the tuning's iterate"
    else:
        fit = dict(settings)
        n_full = fit.pop("max_iter", None)
        n_full = MAX_ITER["em"] if n_full is None else int(n_full)
        n_half = max(1, int(round(n_full / SHAPE_HALF_FACTOR)))
        if n_half > SHAPE_MAX_HALF_ITER:  # too dear: the anchor, unscored
            return SHAPE_ANCHOR, {"method": "not tuned", "choice": SHAPE_ANCHOR, "half_data_iterations": n_half,
                                  "why": f"the half-data fit would run {n_half} iterations, more than "
                                         f"{SHAPE_MAX_HALF_ITER}"}
        sp = _splits(list(observations), fraction, 1, seed, dtype)[0]
        res = _half_fuse(*sp.parts, progress=False, dtype=dtype, tol=tol, max_iter=n_half, shape_prior=None, **fit)
        z, source = np.asarray(res["flux"].transpose("x", "y", "energy").values, dtype=np.float64) * sp.scale, "a fit"
    models = dict(_shrunk_models(sp, z, SHAPE_LADDER))
    dev = [sp.score_models(m) for m in models.values()]
    best = list(models)[int(np.argmin(dev))]
    pairs = [_paired_difference(sp, None, None, models=(models[SHAPE_ANCHOR], m)) for m in models.values()]
    gain = pairs[list(models).index(best)]
    n0 = best if gain[0] > SHAPE_MARGIN * math.sqrt(gain[1]) else SHAPE_ANCHOR
    rec = {"method": "poisson thinning", "pseudo_counts": list(models), "heldout_deviance": [round(d, 3) for d in dev],
           "gain_over_anchor": [round(d, 3) for d, _ in pairs], "se": [round(math.sqrt(v), 3) for _, v in pairs],
           "anchor": SHAPE_ANCHOR, "margin": SHAPE_MARGIN, "half_data_iterations": n_half, "half_data_cube": source}
    choice, rec["pixel"] = _tune_pixel_level(sp, z, n0, models[n0])
    rec["choice"] = choice
    return choice, rec


def _tune_pixel_level(sp, z, n0, base):
    """Second stage of :func:`tune_shape` (session 37): level 0 of the prior (each pixel against its level-1
    neighbourhood) at ``[n0, N]`` for each ``N`` of :data:`PIXEL_LADDER` above ``n0``, on the same half-data cube
    ``z`` and split ``sp`` (``base``: the predicted part-A counts of ``n0`` at every level). The ``N`` of the largest
    held-out deviance gain over ``n0`` is chosen if that gain exceeds :data:`SHAPE_MARGIN` paired Poisson standard
    errors; else ``n0`` stays. Returns ``(choice, record)``: ``n0`` or ``[n0, N]``, and each pair's held-out
    deviance, gain and standard error."""
    ladder = [float(N) for N in PIXEL_LADDER if N > n0]
    rec = {"pseudo_counts": ladder, "heldout_deviance": [], "gain_over_n0": [], "se": [], "choice": None}
    best = None
    for (_, N), m in _shrunk_models(sp, z, [[n0, N] for N in ladder]):
        d, v = _paired_difference(sp, None, None, models=(base, m))
        rec["heldout_deviance"].append(round(sp.score_models(m), 3))
        rec["gain_over_n0"].append(round(d, 3))
        rec["se"].append(round(math.sqrt(v), 3))
        if d > SHAPE_MARGIN * math.sqrt(v) and (best is None or d > best[1]):
            best = (N, d)
    if best is None:
        return n0, rec
    rec["choice"] = best[0]
    return [n0, best[0]], rec


def choice(curve: xr.Dataset) -> dict:
    """The chosen settings of a :func:`tune` result: a dict of fuse options to pass with the curve's regularization
    (``fuse(a, b, regularization=curve.attrs["regularization"], **choice(curve))``; a :func:`select` choice names its
    own ``regularization``). The diagnostics of the choice (:data:`DIAG_KEYS`, e.g. the best half-data iteration)
    stay in ``curve.attrs["choice"]`` (JSON) and ``curve.attrs["details"]``."""
    return {k: v for k, v in json.loads(curve.attrs["choice"]).items() if k not in DIAG_KEYS}


def ladder_choice(curve: xr.Dataset) -> dict:
    """The best candidate of the wavelet ``k`` ladder of a wavelet2d1d or "auto" :func:`tune`/:func:`select` result
    (null space as :data:`NULL_SPACE_DEFAULT` unless fixed), whatever was chosen overall: what
    ``regularization="wavelet2d1d"`` with ``k="auto"`` fits (a dict of wavelet options)."""
    details = json.loads(curve.attrs["details"])
    if "ladder" not in details:
        raise ValueError(f"this curve ({curve.attrs.get('regularization')!r}) has no wavelet k ladder")
    return dict(details["ladder"])


def _short(setting):
    """A candidate's JSON settings as a compact label: ``k=1, null_space=zero``."""
    try:
        d = json.loads(setting)
    except (TypeError, ValueError):
        return str(setting)
    return ", ".join(f"{k}={v}" for k, v in d.items()) if isinstance(d, dict) else str(d)


def plot(curve: xr.Dataset, ax=None):
    """Validation curve: held-out deviance (relative to the best) per candidate, the choice marked.

    Candidates whose deviance is not finite (abandoned as hopeless, or predicting no counts where the held-out part
    has some) are marked by a triangle at the top edge of the axes. When ``ax`` is None the figure is made here and
    laid out so that the candidate labels and the legend lie inside it. Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt
    import matplotlib.transforms as mtransforms
    import textwrap

    if not (isinstance(curve, xr.Dataset) and "mean_deviance" in curve and "choice" in curve.attrs):
        raise ValueError(f"plot needs the validation curve tune() or select() returns (a Dataset with "
                         f"mean_deviance and a choice); got {type(curve).__name__}")
    mean = curve["mean_deviance"].values
    finite = np.isfinite(mean)
    if not finite.any():
        raise ValueError("no candidate of this curve has a finite held-out deviance: nothing to plot")
    own = ax is None
    if own:
        _, ax = plt.subplots(figsize=(7, 4.5))
    ref = np.nanmin(mean[finite])
    labels = list(curve["setting"].values)
    idx = np.arange(len(labels))
    if curve.attrs["regularization"] == "none":
        ax.plot(idx, mean - ref, "-o", ms=3)
        ax.set_xticks(idx[::max(1, math.ceil(len(idx) / 12))])  # within the curve (the locator's spill past the
        ax.set_xlabel("RL iteration on the fitted part")      # ends was measured outside the figure)
    else:
        ax.plot(idx, mean - ref, "o")
        ax.set_xticks(idx)
        ax.set_xticklabels([textwrap.fill(_short(s), 28) for s in labels], rotation=30, fontsize=7, ha="right",
                           rotation_mode="anchor")
    if not finite.all():  # drawn nowhere by the line: marked at the top edge, named in the legend
        top = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(idx[~finite], np.full((~finite).sum(), 0.97), "^", color="gray", transform=top, clip_on=False,
                label=textwrap.fill(f"{int((~finite).sum())} candidate(s) with infinite deviance (abandoned, or "
                                    "predicting no counts where the held-out part has some)", 70))
    details = json.loads(curve.attrs.get("details", "{}"))
    best = details.get("chosen_candidate", None)
    if best is None:
        best = int(np.nanargmin(mean))
    else:  # a candidate number (the curve may be a selection of candidates: curve.isel(candidate=...))
        at = np.flatnonzero(curve["candidate"].values == best) if "candidate" in curve.coords else []
        best = int(at[0]) if len(at) else None
    if best is not None:
        ax.plot([best], [mean[best] - ref], "r*", ms=12, label=textwrap.fill(
            f"choice {_short(curve.attrs['choice'])}", 70))
    ks = {json.loads(s).get("k") for s in labels} if curve.attrs["regularization"] != "none" else set()
    refused = [st for st in details.get("k_above", {}).get("steps", []) if st["k"] not in ks]
    if refused:  # a rung above K_GUARDED_ABOVE that lowered the deviance but not the sharp-spectral squared error
        ax.text(0.01, 0.02, "\n".join(
            f"k={st['k']:g} not a candidate: deviance lower by {st['gain']:.1f} (SE {st['se']:.1f}), sharp-spectral "
            f"squared error higher by {-st['sq_gain_spectral']:.3g}" for st in refused),
            transform=ax.transAxes, fontsize=7, va="bottom")
    ax.set_ylabel("held-out deviance - min")
    ax.set_yscale("symlog", linthresh=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, framealpha=0.8)  # labels wrapped: inside the axes
    ax.set_title(f"Poisson thinning ({curve.attrs['regularization']}, f={curve.attrs['fraction']})")
    if own:
        ax.figure.tight_layout()
    return ax


# ----------------------------------------------------------------------------- fuse(..., "auto")
#: Most memory (bytes) in-memory tuning may take for :func:`xfusion.fuse` on Dask-backed observations (the estimate of
#: :func:`in_memory_copies`); above it "auto" takes the fallbacks. Raise it on a large machine, lower it on a small one.
IN_MEMORY_BYTES = 4 * 2 ** 30
#: Peak memory of in-memory tuning in float32 copies of the fused cube. Measured (session 17, tracemalloc peak of
#: :func:`select` with every candidate of ``regularization="auto"``): 18.2-20.3 on five 24x24x600 tuning scenes of
#: ``xfusion.scenes.suite("tune", n=48)``, 18.6 on one at 45x45x2000, 17.7 on a 90x90x2400 cluster core (whole
#: process: 1.60 GiB resident at peak, scene simulation and libraries included, against an estimate of 1.77 GiB);
#: 24 leaves a margin.
CUBE_COPIES = 24
#: Fixed part of the peak (bytes) of in-memory tuning, whatever the field's size: the modules it imports and the
#: Numba compiling of the starlet passes in the calling process. Measured (session 30, ``benchmarks/dask_memory.py``,
#: the calling process's peak resident memory above its resident memory before): 71 MiB at 18x18x80 fused voxels
#: (the cubes themselves ~2 MiB), 139 MiB at 48x48x400 where the cube copies alone were estimated at 86 MiB (0.62 of
#: the measured peak without this term); at 96x96x800 and 126x126x1200 it is a few percent of the peak.
OVERHEAD_BYTES = 72 * 2 ** 20


def _caller_level():
    """``stacklevel`` of a warning raised by the caller of this function that points at the first frame outside the
    xfusion package (the user's call, however deep inside xfusion the warning is raised)."""
    import os
    import sys

    pkg = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(2), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame, level = frame.f_back, level + 1
    return level


#: fewest sharp-spectral pixels per axis of the sub-field :func:`in_memory_copies` tunes on when the whole field is
#: too large (a smaller crop leaves the coarse instrument too few pixels to score)
SUBFIELD_MIN_PIXELS = 4


def _central_box(image, fraction):
    """``(keep, box)``: the slices of the central ``fraction`` of ``image``'s pixels along x and y and their sky box
    ``{axis: (low, high)}`` (arcsec, pixel edges); None when that would keep every pixel."""
    keep, box = {}, {}
    for d in ("x", "y"):
        c = image[d].values
        n = c.size
        m = min(n, max(SUBFIELD_MIN_PIXELS, int(np.floor(n * fraction))))
        if m >= n or n < 2:
            return None
        a = (n - m) // 2
        half = abs(float(c[1] - c[0])) / 2
        keep[d] = slice(a, a + m)
        box[d] = (min(c[a], c[a + m - 1]) - half, max(c[a], c[a + m - 1]) + half)
    return keep, box


def _need(observations):
    """Estimated peak bytes of in-memory tuning and the fused pixels ``(nx, ny)``.

    ``need = OVERHEAD_BYTES + CUBE_COPIES * 4 * nx * ny * L + 3 * (bytes of the observations)``: a fixed part
    (:data:`OVERHEAD_BYTES`), :data:`CUBE_COPIES` float32 fused cubes of ``nx * ny * L`` voxels, and the observations
    three times (the data and its two thinned halves). Measured against the calling process's peak resident memory
    (``benchmarks/dask_memory.py``, session 30): 1.14, 1.07 and 1.30 times the peak at 48x48x400, 96x96x800 and
    126x126x1200 (without the fixed part 0.62, 0.97 and 1.24)."""
    grid = fusion_grid(*observations)
    voxels = grid.sizes["x"] * grid.sizes["y"] * grid.sizes["energy"]
    return (OVERHEAD_BYTES + CUBE_COPIES * 4 * voxels + 3 * sum(int(o.nbytes) for o in observations),
            (grid.sizes["x"], grid.sizes["y"]))


def _central_subfield(observations, fraction):
    """The observations cropped (lazily) to a central sky box: the central ``fraction`` of the pixels, along x and y
    (at least :data:`SUBFIELD_MIN_PIXELS`), of the image with the largest pixels (two images: the sharp-spectral
    one); every other image to the same box (whole pixels inside it); a detector-pixel tile to its pixels that lie
    wholly inside the box (a tile with none is left out). None when the crop would not be smaller or keeps fewer
    than two observations."""
    from .grid import footprint_geometry
    from .observation import is_pixel_observation, pixel_size
    from .operators.footprint import detector_corners

    tiles = [is_pixel_observation(o) for o in observations]
    images = [o for o, t in zip(observations, tiles) if not t]
    if not images:
        return None
    coarse = max(images, key=pixel_size)
    cut = _central_box(coarse, fraction)
    if cut is None:
        return None
    keep, box = cut
    out = []
    for o, t in zip(observations, tiles):
        if o is coarse:
            out.append(o.isel(keep))
        elif not t:
            out.append(o.isel({d: np.nonzero((o[d].values > box[d][0]) & (o[d].values < box[d][1]))[0]
                               for d in ("x", "y")}))
        else:
            (cx, cy), roll = footprint_geometry(coarse, o)
            xy = detector_corners(o["det_x"].values, o["det_y"].values, pixel_size(o), roll, (cx, cy))
            inside = np.all((xy[..., 0] >= box["x"][0]) & (xy[..., 0] <= box["x"][1]) & (xy[..., 1] >= box["y"][0])
                            & (xy[..., 1] <= box["y"][1]), axis=1)
            if inside.any():
                out.append(o.isel(pixel=np.flatnonzero(inside)))
    return out if len(out) >= 2 else None


def in_memory_copies(observations, client=None):
    """In-memory copies of ``observations`` for thinning, or None when tuning would not fit :data:`IN_MEMORY_BYTES`.

    Returns ``(copies, note)``: ``copies`` is a list with every Dask-backed observation computed (on ``client`` when
    given; the caller's Datasets are left as they are, still lazy) and the others as given; ``note`` says what was
    estimated (:func:`_need`: a fixed :data:`OVERHEAD_BYTES`, ``CUBE_COPIES`` x 4 bytes per fused voxel, plus the
    observations' own bytes, three times: the data and its two thinned halves). When the whole field does not fit, the
    inputs are cropped to the central sub-field that does (:func:`_central_subfield`, about
    ``0.9 sqrt((limit - OVERHEAD_BYTES) / (estimate - OVERHEAD_BYTES))`` of the coarsest image's pixels per axis; a
    mosaic tile keeps its detector pixels inside it, session 24) and ``copies`` holds the crops: the caller tunes on
    them and fits the whole field (a UserWarning says so; measured in docs/dask.rst). Else ``copies`` is None and ``note`` says what to do (also given as a UserWarning)."""
    def size(v):
        return f"{v / 2 ** 30:.2f} GiB" if v >= 2 ** 30 else f"{v / 2 ** 20:.0f} MiB"

    need, shape = _need(observations)
    estimate = f"in-memory tuning needs about {size(need)}"
    if need <= IN_MEMORY_BYTES:
        return _loaded(observations, client), f"Dask-backed data tuned in memory ({estimate})"
    limit = f"xfusion.tuning.IN_MEMORY_BYTES = {size(IN_MEMORY_BYTES)}"
    # the whole field does not fit: tune on its centre, cropped to fit, fit all of it
    # the cubes scale with the sub-field's area, the fixed part does not
    sub = _central_subfield(observations, 0.9 * math.sqrt(max(IN_MEMORY_BYTES - OVERHEAD_BYTES, 0) /
                                                          (need - OVERHEAD_BYTES)))
    sub_need, sub_shape = _need(sub) if sub is not None else (None, None)
    if sub is not None and sub_need <= IN_MEMORY_BYTES:
        note = (f"Dask-backed data: the whole field ({shape[0]}x{shape[1]} fused pixels) needs about {size(need)}, more "
                f"than {limit}; tuned in memory on its central {sub_shape[0]}x{sub_shape[1]} pixels "
                f"({size(sub_need)}), the settings applied to the whole field")
        # a centre brighter than the field can favour weaker regularization than the whole field needs
        warnings.warn(f"{note} (raise that limit to tune on the whole field)", UserWarning, stacklevel=_caller_level())
        return _loaded(sub, client), note
    note = (f"Dask-backed data and {estimate}, more than {limit} (no central sub-field fits either, or none keeps two "
            f"inputs): fuse a smaller field or band, or raise that limit")
    # the fallback settings can cost several dB (docs/dask.rst): say so where the user sees it, not only in the record
    warnings.warn(f"'auto' settings not tuned: {note}; the pre-thinning rules are used instead", UserWarning,
                  stacklevel=_caller_level())
    return None, note


def _loaded(observations, client):
    """``observations`` with every Dask-backed one computed in one pass (on ``client`` when given), the others as
    given: new Datasets, the caller's left lazy."""
    from . import parallel

    lazy = [any(parallel.is_dask(v.data) for v in o.variables.values()) for o in observations]
    done = iter(parallel.compute_many([o for o, z in zip(observations, lazy) if z], client) if any(lazy) else ())
    return [next(done) if z else o for o, z in zip(observations, lazy)]


#: options that :func:`auto_settings` chooses by thinning when they are "auto" (besides ``max_iter``)
AUTO_KEYS = ("k", "n_scales_1d", "null_space", "rank", "mu")
#: fallbacks where thinning cannot run (Dask-backed counts): the pre-thinning defaults
FALLBACK = {"rank": 10, "mu": 0.01, "null_space": "zero", "k_lowrank": 1.0}


def auto_settings(obs_a, obs_b, regularization, method, params, max_iter, tol, dtype, on_dask, seed=0, extra=()):
    """Resolve the ``"auto"`` settings of :func:`xfusion.fuse` in place; return ``(max_iter, record)``.

    ``params``: the resolved option dict of ``fuse`` (modified in place); ``max_iter``: an int or
    "auto". In memory, every "auto" is chosen by :func:`tune` (one split, ``seed``); ``record``
    is a JSON-able dict (the choice, the candidates and their held-out deviance) or None when
    nothing was automatic. With ``on_dask`` (Dask-backed data that :func:`in_memory_copies` found too large to
    tune in memory; smaller ones arrive here as in-memory copies with ``on_dask`` False) the
    pre-thinning defaults apply (rank 10, mu 0.01, null_space "zero", k and n_scales_1d from
    the counts rule of ``fuse._auto_wavelet_params``, the EARLY_STOP iteration counts) and the
    record says so. ``extra``: further observations (beyond the first two) thinned and scored too
    (wavelet2d1d and none; the low-rank families tune on the first two).
    """
    from .fuse import EARLY_STOP

    if params.get("rank") == "auto" and params.get("explained") is not None:
        params["rank"] = FALLBACK["rank"]  # unused: the rank comes from the explained variance
    keys = [k for k in AUTO_KEYS if params.get(k) == "auto"]
    auto_iter = max_iter == "auto"
    if not keys and not auto_iter:
        return int(max_iter), None
    # Poisson thinning splits counts; a Gaussian data term (xfusion.gaussian: a 'variance' variable) has none
    gaussian = any("variance" in o or str(o.attrs.get("data_term", "poisson")).lower() != "poisson"
                   for o in (obs_a, obs_b) if hasattr(o, "attrs") and hasattr(o, "data_vars"))
    if regularization == "lowrank_wavelet2d" and params.get("k") == "auto" and (on_dask or gaussian):
        params["k"] = FALLBACK["k_lowrank"]
    if gaussian and not on_dask:  # data fission, the Gaussian analogue of thinning (xfusion.gaussian)
        from .gaussian_fission import auto_settings as gaussian_auto

        rec = gaussian_auto(obs_a, obs_b, regularization, params, max_iter, tol, dtype, seed)
        if rec is not None:
            return int(max_iter), rec
    if on_dask or gaussian:
        for k in ("rank", "mu", "null_space"):
            if params.get(k) == "auto":
                params[k] = FALLBACK[k]
        mi = EARLY_STOP.get(regularization) if auto_iter else max_iter
        why = ("Dask-backed data too large to tune in memory" if on_dask else
               "a Gaussian data term: data fission (xfusion.gaussian) handles rank/mu of the low-rank family with "
               "a fixed max_iter when every term is Gaussian")
        return int(mi), {"method": f"fallback ({why})", "auto": keys}
    fixed = {k: v for k, v in params.items() if k in ("n_scales_2d", "k_rule", "k_min", "k_max", "per_band", "noise", "k",
                                                       "n_scales_1d", "null_space", "rank", "mu", "explained",
                                                       "precondition", "patch", "stabilize")}
    fixed = {k: v for k, v in fixed.items() if v is not None}
    if regularization == "none":
        cur = tune(obs_a, obs_b, *extra, regularization="none", seed=seed, dtype=dtype)
    elif regularization == "wavelet2d1d":
        cur = tune(obs_a, obs_b, *extra, regularization=regularization, seed=seed, dtype=dtype, tol=tol,
                   max_iter=None if auto_iter else (max_iter or None), **fixed)
    elif regularization == "lowrank":
        if params.get("rank") == "auto":
            cur = tune(obs_a, obs_b, regularization="lowrank", seed=seed, dtype=dtype, tol=tol,
                       max_iter=EARLY_STOP["lowrank"] if auto_iter else (max_iter or None), **fixed)
            params["rank"] = choice(cur)["rank"]
            fixed["rank"] = params["rank"]
            rec_rank = _record(cur)
        else:
            rec_rank = None
        if auto_iter:
            cur = tune(obs_a, obs_b, regularization="lowrank", seed=seed, dtype=dtype, **fixed)
        rec = _record(cur)
        if rec_rank is not None and auto_iter:
            rec = {"rank": rec_rank, "iterations": rec}
        ch = choice(cur)
        params.update({k: v for k, v in ch.items() if k != "max_iter" and k not in DIAG_KEYS})
        return int(ch.get("max_iter", max_iter if not auto_iter else EARLY_STOP["lowrank"])), rec
    else:
        cur = tune(obs_a, obs_b, regularization=regularization, seed=seed, dtype=dtype, tol=tol,
                   max_iter=None if auto_iter else (max_iter or None), **fixed)
    ch = choice(cur)
    params.update({k: v for k, v in ch.items() if k != "max_iter" and k not in DIAG_KEYS})
    if auto_iter:
        mi = ch.get("max_iter", EARLY_STOP.get(regularization))
        if mi is None:
            from .fuse import MAX_ITER

            mi = MAX_ITER[method]
    else:
        mi = max_iter
    return int(mi), _record(cur)


def _record(cur):
    """Compact, deterministic JSON-able summary of a validation curve (no timings: fingerprints use it)."""
    rec = {"method": "poisson thinning", "fraction": cur.attrs["fraction"], "seed": cur.attrs["seed"],
           "n_splits": cur.attrs["n_splits"], "choice": json.loads(cur.attrs["choice"]),
           "candidates": [json.loads(s) for s in cur["setting"].values] if cur.attrs["regularization"] != "none"
           else f"RL iterations 0..{cur.sizes['candidate'] - 1} on the fitted part",
           "heldout_deviance": [round(float(v), 3) if np.isfinite(v) else None for v in cur["mean_deviance"].values]}
    details = json.loads(cur.attrs.get("details", "{}"))
    if "k_above" in details:  # the steps of the k walk above K_GUARDED_ABOVE (why it stopped there)
        rec["k_above"] = details["k_above"]
    if "spectral_band" in details:  # select's factor of the spectral bands and why (session 60)
        rec["spectral_band"] = details["spectral_band"]
    if "zero" in details:  # the zeroed prior's count: its half-data best iterate and, where it applied, session 61's rule
        rec["zero"] = {k: details["zero"][k] for k in ("max_iter", "half_data_iteration", "transferred", "bottom_rung")
                       if k in details["zero"]}
    if "shape_step" in details:  # the k walk's choice, the shape-scored rung and the delivered one (session 71)
        rec["shape_step"] = details["shape_step"]
    return rec
