"""
The statistics of the results: an arm's training seeds pooled, and intervals for its differences
from the baseline and across shift rates that cover both sources of chance, the training seed
and the prompts. Shared by evaluate.py (which computes them for each score) and runs/report.py
(which reads them); no command line, no torch.

Why a two-level bootstrap. Every seed of every arm decodes the same prompts, so a result is a
grid v[s, i] of training seeds s by prompts i, two crossed sources of variation: a rerun would
train new seeds and could meet new prompts. Averaging over seeds first and resampling prompts
only (a paired bootstrap over prompts) shows the second and hides the first, which dominates
when seeds disagree. Here each replicate resamples the prompts (shared by every arm: the
comparison stays paired by prompt) and, independently, each arm's seeds, and recomputes the
statistic from the resampled grid: the bootstrap for crossed random effects (Owen 2007, "The
pigeonhole bootstrap", Annals of Applied Statistics 1(2)), which errs on the wide side. With S
seeds a resampled mean of S seed means has (S-1)/S of their variance; so each seed's deviation
from the arm's mean is scaled by sqrt(S/(S-1)) before resampling, which makes the seed level's
variance unbiased (Davison & Hinkley 1997, "Bootstrap Methods and their Application", sec. 3.3,
adjusted residuals). Intervals are percentile intervals (Efron & Tibshirani 1993, ch. 13). An
arm of one seed (the pretrained model) has no seed spread to resample: its interval is over
prompts only, as the table says.
"""

import numpy as np

from tables import arm_of

NAN = float("nan")  # "no value": an empty output has no entropy; JSON writes it as null
ZERO_TOL = 1e-9  # an interval end this close to 0 touches it (a floating-point 0 is 0)


def group_seeds(runs, metrics):
    """{arm: {rate: cell}}: each arm's runs (its training seeds, names ARM@SEED) pooled. A cell
    holds the mean over seeds (summary), their standard deviation (seed_sd, nan for one seed),
    each seed's value (by_seed), the per-prompt values averaged over seeds (per_example) and per
    seed (per_seed: seeds x prompts, what the intervals resample)."""
    arms = {}
    for name in runs:
        arms.setdefault(arm_of(name), []).append(name)
    out = {}
    for arm, names in arms.items():
        out[arm] = {}
        for r in runs[names[0]]:
            seeds = [runs[n][r] for n in names]
            grid = {m: np.array([s["per_example"][m] for s in seeds], dtype=float)
                    for m in metrics}  # (S, n_prompts) each
            by_seed = {m: [s["summary"][m] for s in seeds] for m in metrics}
            with np.errstate(all="ignore"):  # a prompt with no value in any seed stays nan
                per = {m: np.nanmean(g, axis=0).tolist() for m, g in grid.items()}
            out[arm][r] = {
                "summary": {m: float(np.mean(v)) for m, v in by_seed.items()},
                "seed_sd": {m: float(np.std(v, ddof=1)) if len(v) > 1 else NAN
                            for m, v in by_seed.items()},
                "by_seed": by_seed, "seeds": names, "per_example": per,
                "per_seed": {m: g.tolist() for m, g in grid.items()},
                "realised_shift": float(np.mean([s["realised_shift"] for s in seeds]))}
    return out


# ----------------------------------------------------------------------------------------------
# The resampling. One draw of the prompts serves every arm, metric and rate of a file (so every
# comparison is paired by prompt, and all use the same common random numbers); each arm draws
# its own seeds, once.


class Resampler:
    """n_boot replicates of the prompts (counts, (n_boot, n)) and of each arm's seeds."""

    def __init__(self, n_prompts, n_boot, seed):
        self.rng = np.random.default_rng(seed)  # seeded: the same intervals on every run
        self.n_boot = n_boot
        self.prompts = self.rng.multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts),
                                            size=n_boot)  # (n_boot, n) how often each is drawn
        self.seeds = {}

    def seed_counts(self, arm, n_seeds):
        if arm not in self.seeds:
            self.seeds[arm] = self.rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds),
                                                   size=self.n_boot)  # (n_boot, S)
        return self.seeds[arm]

    def means(self, arm, grid):
        """The grand mean of grid (S, n) in every replicate (n_boot,), nan cells left out: the
        mean over resampled seeds of each seed's mean over the resampled prompts. Each seed's
        deviation from the arm's mean is first scaled by sqrt(S / (S - 1)) (see above)."""
        grid = np.asarray(grid, dtype=float)
        S = len(grid)
        if S > 1:
            with np.errstate(all="ignore"):
                seed_means = np.nanmean(grid, axis=1, keepdims=True)  # (S, 1)
            center = np.nanmean(seed_means)
            grid = grid + (np.sqrt(S / (S - 1)) - 1) * (seed_means - center)
        ok = ~np.isnan(grid)
        num = self.prompts @ np.where(ok, grid, 0.0).T  # (n_boot, S)
        den = self.prompts @ ok.T.astype(float)
        with np.errstate(all="ignore"):
            per_seed = num / den  # (n_boot, S), nan where a seed has no value left
        d = self.seed_counts(arm, S) * ~np.isnan(per_seed)
        with np.errstate(all="ignore"):
            return (np.nan_to_num(per_seed) * d).sum(1) / d.sum(1)


def grand_mean(grid):
    """The mean over seeds of each seed's mean over prompts, nan cells left out."""
    with np.errstate(all="ignore"):
        return float(np.nanmean(np.nanmean(np.asarray(grid, dtype=float), axis=1)))


def interval(point, replicates):
    """{mean_diff, lo, hi}: the point estimate and the 2.5th and 97.5th percentiles of its
    replicates (nan ones left out); nan everywhere when none is left."""
    reps = replicates[~np.isnan(replicates)]
    if len(reps) == 0 or np.isnan(point):
        return {"mean_diff": NAN, "lo": NAN, "hi": NAN}
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {"mean_diff": float(point), "lo": float(lo), "hi": float(hi)}


def paired_bootstrap(a, b, n_boot=2000, seed=0):
    """(mean of d, 2.5th and 97.5th percentile), d_i = b_i - a_i over prompts only: the interval
    a single seed allows, and what the seeds' spread adds to (results.json keeps both). Pairs
    where either value is nan are dropped; nan everywhere if none is left."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal shapes, got {a.shape} and {b.shape}")
    d = (b - a)[~(np.isnan(a) | np.isnan(b))]  # keep a pair only if both values exist
    if len(d) == 0:
        return NAN, NAN, NAN
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)  # (n_boot,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def comparisons(arms, baseline, rates, metrics, n_boot, seed):
    """Intervals from the two-level bootstrap, entries {name, rate, metric, mean_diff, lo, hi,
    prompts_lo, prompts_hi (the prompts-only interval of the seed-averaged values), n_seeds}:
        robustness    an arm at rate r minus itself at 0, seed by seed and prompt by prompt
        differences   an arm minus the baseline at equal rate
        diff_in_diff  (arm_r - arm_0) - (base_r - base_0): how much more (or less) it degrades
        retained      arm_r / arm_0: the share of its shift-0 score an arm keeps under the probe
    robustness, diff_in_diff and retained for the first three metrics, differences for all."""
    n = len(next(iter(arms.values()))["0"]["per_example"][metrics[0]])
    rs = Resampler(n, n_boot, seed)
    shifted = [r for r in rates if r != "0"]

    def grid(arm, r, m, minus=None):  # (S, n); minus: the same arm at another rate subtracted
        g = np.asarray(arms[arm][r]["per_seed"][m], dtype=float)
        return g - np.asarray(arms[arm][minus]["per_seed"][m], dtype=float) if minus else g

    def entry(arm, r, m, point, reps, pair=None):  # pair: seed-averaged (a, b), for b - a
        p = paired_bootstrap(*pair, n_boot, seed) if pair else (NAN, NAN, NAN)
        return {"name": arm, "baseline": baseline, "rate": r, "metric": m, **interval(point, reps),
                "prompts_lo": p[1], "prompts_hi": p[2], "n_seeds": len(arms[arm][r]["seeds"])}

    def avg(arm, r, m):  # (n,) the per-prompt values averaged over seeds
        return np.asarray(arms[arm][r]["per_example"][m], dtype=float)
    out = {"robustness": [], "differences": [], "diff_in_diff": [], "retained": []}
    for m in metrics:
        for arm in arms:
            for r in rates:
                if arm != baseline:
                    out["differences"].append(entry(
                        arm, r, m, grand_mean(grid(arm, r, m)) - grand_mean(grid(baseline, r, m)),
                        rs.means(arm, grid(arm, r, m)) - rs.means(baseline, grid(baseline, r, m)),
                        (avg(baseline, r, m), avg(arm, r, m))))
                if m not in metrics[:3] or r == "0":
                    continue
                drop = grid(arm, r, m, minus="0")  # (S, n): each seed's change, prompt by prompt
                out["robustness"].append(entry(arm, r, m, grand_mean(drop), rs.means(arm, drop),
                                               (avg(arm, "0", m), avg(arm, r, m))))
                with np.errstate(all="ignore"):
                    ratio = rs.means(arm, grid(arm, r, m)) / rs.means(arm, grid(arm, "0", m))
                    at0 = grand_mean(grid(arm, "0", m))
                    point = grand_mean(grid(arm, r, m)) / at0 if at0 else NAN  # 0/0: no share
                out["retained"].append(entry(arm, r, m, point, ratio))  # no prompts-only pair
                if arm != baseline:
                    base_drop = grid(baseline, r, m, minus="0")
                    out["diff_in_diff"].append(entry(
                        arm, r, m, grand_mean(drop) - grand_mean(base_drop),
                        rs.means(arm, drop) - rs.means(baseline, base_drop),
                        (avg(baseline, r, m) - avg(baseline, "0", m),
                         avg(arm, r, m) - avg(arm, "0", m))))
    return out


# ----------------------------------------------------------------------------------------------
# Reading an interval.


def direction(entry, lower_is_better):
    """+1: the interval says the arm is better (or degrades less), -1: worse, 0: it holds 0 or
    touches it within ZERO_TOL, None: no interval. Only the interval counts, never the mean: a
    mean inside noise is noise."""
    if entry is None or not all(isinstance(entry.get(k), (int, float)) for k in ("lo", "hi")):
        return None
    lo, hi = entry["lo"], entry["hi"]
    if lower_is_better:  # a lower value is the good direction: mirror the interval
        lo, hi = -hi, -lo
    return 1 if lo > ZERO_TOL else -1 if hi < -ZERO_TOL else 0
