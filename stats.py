"""stats (moved as is)"""

import numpy as np

from tables import arm_of

NAN = float("nan")


def group_seeds(runs, metrics):
    """{arm: {rate: run}}: each arm's runs (its training seeds) pooled. Per prompt, the metric is
    averaged over the seeds, so paired comparisons of arms see every seed; the summary is the mean
    over seeds, with their standard deviation (seed_sd, nan for one seed) and each seed's value:
    the spread that training noise alone gives, which a bootstrap over prompts cannot show."""
    arms = {}
    for name in runs:
        arms.setdefault(arm_of(name), []).append(name)
    out = {}
    for arm, names in arms.items():
        out[arm] = {}
        for r in runs[names[0]]:
            seeds = [runs[n][r] for n in names]
            per = {m: np.nanmean([s["per_example"][m] for s in seeds], axis=0).tolist()
                   if len(seeds) > 1 else seeds[0]["per_example"][m] for m in metrics}
            by_seed = {m: [s["summary"][m] for s in seeds] for m in metrics}
            sd = {m: float(np.std(v, ddof=1)) if len(v) > 1 else NAN for m, v in by_seed.items()}
            out[arm][r] = {"summary": {m: float(np.mean(v)) for m, v in by_seed.items()},
                           "seed_sd": sd, "by_seed": by_seed, "seeds": names,
                           "per_example": per,
                           "realised_shift": float(np.mean([s["realised_shift"] for s in seeds]))}
    return out


# ----------------------------------------------------------------------------------------------
# `score`, part 3: paired comparisons, prompt by prompt (every name decoded the same prompts).
#
# Why pairing matters: prompts differ far more in difficulty than two models differ from each
# other. For per-prompt values a_i, b_i the variances of the mean difference are
#     unpaired: (Var a + Var b) / n
#     paired:   Var(b - a) / n = (Var a + Var b - 2 Cov(a, b)) / n
# and Cov(a, b) is large and positive (a hard prompt is hard for both), so the paired interval is
# much narrower: the same prompts detect a smaller real difference.


def paired_bootstrap(a, b, n_boot=2000, seed=0):
    """(mean of d, 2.5th and 97.5th percentile of its bootstrap distribution), d_i = b_i - a_i.
    Percentile bootstrap: resample the n pairs with replacement n_boot times and take the mean of
    each resample. Pairs where either value is nan are dropped; nan everywhere if none is left."""
    # The spread of the resampled means stands in for the spread of a rerun on n fresh prompts. No
    # normal approximation: per-prompt values are skewed (0/1 exact match, perplexity outliers).
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal shapes, got {a.shape} and {b.shape}")
    d = (b - a)[~(np.isnan(a) | np.isnan(b))]  # keep a pair only if both values exist
    if len(d) == 0:
        return NAN, NAN, NAN
    rng = np.random.default_rng(seed)  # seeded: the same interval on every run
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)  # (n_boot,)
    lo, hi = np.percentile(means, [2.5, 97.5])  # the central 95% of the means
    return float(d.mean()), float(lo), float(hi)


def comparisons(runs, baseline, rates, metrics, n_boot, seed):
    """Paired 95% intervals, entries {name, rate, metric, mean_diff, lo, hi}: robustness = a name at
    rate r minus itself at rate 0 (claim a); differences = a name minus the baseline at equal rate;
    diff_in_diff = (name_r - name_0) - (base_r - base_0) (claim b: for a lower-is-better metric,
    negative = the name degrades less). Robustness and diff_in_diff for the first three metrics."""
    def ci(a, b):
        return dict(zip(("mean_diff", "lo", "hi"), paired_bootstrap(a, b, n_boot, seed)))

    def v(name, r, m):  # (n_prompts,)
        return np.asarray(runs[name][r]["per_example"][m], dtype=float)
    others, shifted = [n for n in runs if n != baseline], [r for r in rates if r != "0"]
    # robustness pairs a name with itself: the same prompts, only the probe differs
    robust = [{"name": n, "rate": r, "metric": m, **ci(v(n, "0", m), v(n, r, m))}
              for m in metrics[:3] for n in runs for r in shifted]
    diffs = [{"name": n, "baseline": baseline, "rate": r, "metric": m,
              **ci(v(baseline, r, m), v(n, r, m))} for m in metrics for n in others for r in rates]
    # per prompt, each name's own rate-0 quality cancels, leaving how much more (or less) it suffers
    did = [{"name": n, "baseline": baseline, "rate": r, "metric": m,
            **ci(v(baseline, r, m) - v(baseline, "0", m), v(n, r, m) - v(n, "0", m))}
           for m in metrics[:3] for n in others for r in shifted]
    return {"robustness": robust, "differences": diffs, "diff_in_diff": did}


def direction(entry, lower_is_better):
    """+1: the interval says the arm is better (or degrades less), -1: worse, 0: it holds 0,
    None: no interval. Only the interval counts, never the mean: a mean inside noise is noise."""
    if entry is None or not all(isinstance(entry.get(k), (int, float)) for k in ("lo", "hi")):
        return None
    lo, hi = entry["lo"], entry["hi"]
    if lower_is_better:  # a lower value is the good direction: mirror the interval
        lo, hi = -hi, -lo
    return 1 if lo > 0 else -1 if hi < 0 else 0
