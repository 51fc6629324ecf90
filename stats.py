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

Seeds pair arms. Arms fine-tuned with the same training seed draw the same batches, so where an
arm and the baseline hold the same seeds (ARM@1, ARM@2, ... beside BASE@1, BASE@2, ...) a
difference resamples their seeds jointly: seed s of the arm stays with seed s of the baseline, as
each prompt stays with itself. What the two seeds of a pair share (their batches) then cancels in
the difference instead of being counted twice; where they share nothing, the paired and the
unpaired draws have the same spread. Every comparison draws its replicates from a generator
seeded by the bootstrap's seed and the names it compares, so it gets the same interval whatever
other arms the file holds.

The length-standardised rate (length_standardised): a rate that a model cannot raise by writing
shorter texts than the data, the data's length distribution taken as the standard population
(direct standardisation, as in epidemiology's age-standardised rates).
"""

import hashlib
import re
from fractions import Fraction

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
# The resampling. A comparison (an arm against the baseline, or an arm against itself at shift 0)
# draws the prompts once for all its metrics and rates (common random numbers: its differences
# and its changes in degradation see the same prompts), and the seeds of each arm once, or once
# for both arms where they hold the same seeds.


def seed_labels(names):
    """The training seeds of an arm's runs: "ce-ft@2:plain/1/16" -> "2"; None for a run named
    without one (the pretrained model)."""
    return [m.group(1) if (m := re.search(r"@([^:]*)", n)) else None for n in names]


def generator(seed, *names):
    """The generator of one comparison: the bootstrap's seed and the compared names, hashed, so
    that a comparison draws the same replicates whatever other arms a file holds."""
    key = hashlib.sha256("\0".join([str(seed), *names]).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(key[:16], "little"))


class Resampler:
    """n_boot replicates of the prompts (counts, (n_boot, n)) and of each arm's seeds, drawn
    from the comparison's own generator. paired: one draw of seeds serves both arms (their seed
    lists are equal, in the same order)."""

    def __init__(self, n_prompts, n_boot, seed, names, paired=False):
        self.rng = generator(seed, *names)
        self.n_boot, self.paired = n_boot, paired
        self.prompts = self.rng.multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts),
                                            size=n_boot)  # (n_boot, n) how often each is drawn
        self.seeds = {}

    def seed_counts(self, arm, n_seeds):
        key = "paired" if self.paired else arm
        if key not in self.seeds:
            self.seeds[key] = self.rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds),
                                                   size=self.n_boot)  # (n_boot, S)
        return self.seeds[key]

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
    prompts_lo, prompts_hi (the prompts-only interval of the seed-averaged values), paired_lo,
    paired_hi (the seeds resampled jointly with the baseline's; nan where the arm and the
    baseline do not hold the same seeds), n_seeds}:
        robustness    an arm at rate r minus itself at 0, seed by seed and prompt by prompt
        differences   an arm minus the baseline at equal rate
        diff_in_diff  (arm_r - arm_0) - (base_r - base_0): how much more (or less) it degrades
        retained      arm_r / arm_0: the share of its shift-0 score an arm keeps under the probe
    robustness, diff_in_diff and retained for the first four metrics, differences for all.
    lo and hi, which the verdict reads, resample each arm's seeds on their own: with three seeds
    the percentile interval of the paired draw falls short of 95% coverage on simulated seeds
    (tests/test_stats.py), like any bootstrap of three values, while the unpaired one errs wide."""
    n = len(next(iter(arms.values()))["0"]["per_example"][metrics[0]])
    draws = {}  # (arm, baseline or None, paired): the Resampler of that comparison

    def resampler(arm, base=None, paired=False):  # its generator seeded from the names
        names = (arm,) if base is None else (arm, base, "paired seeds" if paired else "")
        if names not in draws:
            draws[names] = Resampler(n, n_boot, seed, names, paired=paired)
        return draws[names]

    def pairs(arm):  # the arm and the baseline hold the same seeds, in the same order
        labels = seed_labels(arms[arm]["0"]["seeds"])
        return (len(labels) > 1 and None not in labels
                and labels == seed_labels(arms[baseline]["0"]["seeds"]))

    def grid(arm, r, m, minus=None):  # (S, n); minus: the same arm at another rate subtracted
        g = np.asarray(arms[arm][r]["per_seed"][m], dtype=float)
        return g - np.asarray(arms[arm][minus]["per_seed"][m], dtype=float) if minus else g

    def diff(arm, a, b, paired=False):  # replicates of the grid a of arm minus b of baseline
        if paired and not pairs(arm):
            return None
        rs = resampler(arm, baseline, paired)
        return rs.means(arm, a) - rs.means(baseline, b)

    def entry(arm, r, m, point, reps, pair=None, paired=None):
        # pair: seed-averaged (a, b), for the prompts-only interval of b - a; paired: the
        # replicates with jointly resampled seeds
        p = paired_bootstrap(*pair, n_boot, seed) if pair else (NAN, NAN, NAN)
        q = interval(point, paired) if paired is not None else {"lo": NAN, "hi": NAN}
        return {"name": arm, "baseline": baseline, "rate": r, "metric": m, **interval(point, reps),
                "prompts_lo": p[1], "prompts_hi": p[2], "paired_lo": q["lo"],
                "paired_hi": q["hi"], "n_seeds": len(arms[arm][r]["seeds"])}

    def avg(arm, r, m):  # (n,) the per-prompt values averaged over seeds
        return np.asarray(arms[arm][r]["per_example"][m], dtype=float)
    out = {"robustness": [], "differences": [], "diff_in_diff": [], "retained": []}
    for m in metrics:
        for arm in arms:
            for r in rates:
                if arm != baseline:
                    a, b = grid(arm, r, m), grid(baseline, r, m)
                    out["differences"].append(entry(
                        arm, r, m, grand_mean(a) - grand_mean(b), diff(arm, a, b),
                        (avg(baseline, r, m), avg(arm, r, m)), diff(arm, a, b, paired=True)))
                if m not in metrics[:4] or r == "0":
                    continue
                rs, drop = resampler(arm), grid(arm, r, m, minus="0")  # (S, n): each change
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
                        diff(arm, drop, base_drop),
                        (avg(baseline, r, m) - avg(baseline, "0", m),
                         avg(arm, r, m) - avg(arm, "0", m)), diff(arm, drop, base_drop, True)))
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


# ----------------------------------------------------------------------------------------------
# A rate standardised to the data's lengths. The share of outputs that parse rewards writing less:
# a short text has less to get wrong. So the outputs are put in length bins, and the rate is
#     std = sum_b w_b * (rate of the outputs in bin b),  w_b = the data's share of bin b,
# a bin the arm never reaches counting 0; coverage = sum of w_b over the bins it reaches. Writing
# only short texts reaches only the short bins: std <= their weight, whatever their rate. A model
# whose outputs have the data's lengths, or whose rate does not depend on length, scores its rate.
# The bins: LENGTH_BINS bins at the data's quantiles, so each holds about an equal share of the
# data's texts and each bin's rate rests on comparable numbers of data-like outputs, on any task
# (8-byte texts or 200-byte ones). They span the data's lengths only: an output shorter or longer
# than every text of the data is in no bin (the data never writes it), so it earns nothing.

LENGTH_BINS = 5


def length_edges(ref_lengths, bins=LENGTH_BINS):
    """The bin edges: the data's quantiles 0, 1/bins, ..., 1 (equal ones merged)."""
    q = np.linspace(0, 1, bins + 1)
    edges = np.unique(np.quantile(np.asarray(ref_lengths, dtype=float), q))
    return np.repeat(edges, 2) if len(edges) == 1 else edges  # one length: the bin [L, L]


def length_bin(lengths, edges):
    """The bin of each length: b with edges[b] <= L < edges[b + 1] (the last bin closed), -1
    outside the data's range."""
    lengths = np.asarray(lengths, dtype=float)
    b = np.searchsorted(edges, lengths, side="right") - 1
    b = np.where(lengths == edges[-1], len(edges) - 2, b)
    return np.where((lengths < edges[0]) | (lengths > edges[-1]), -1, b)


def length_standardised(values, lengths, ref_lengths, bins=LENGTH_BINS):
    """{std, coverage, edges, data_shares, shares (the outputs' share of each bin, then of
    shorter and of longer than the data), length_tv (total variation between the two length
    histograms over those bins and the two outside), per_example}. per_example is the
    linearised value of each output, std + w_b (v_i - rate_b) n / n_b for an output in bin b
    (std for one in no bin): its mean is std exactly and the bootstrap of its mean is the
    delta-method spread of std (Deville 1999, "Variance estimation for complex statistics and
    estimators: linearization and residual techniques"), with the data's shares held fixed."""
    v, L = np.asarray(values, dtype=float), np.asarray(lengths, dtype=float)
    if np.isnan(v).any() or len(v) != len(L) or len(v) == 0:
        raise ValueError("need as many values as lengths, none nan, at least one")
    edges = length_edges(ref_lengths, bins)
    K, ref_bin, b = len(edges) - 1, length_bin(ref_lengths, edges), length_bin(L, edges)
    w = np.bincount(ref_bin, minlength=K) / len(ref_bin)  # the data lie in its own bins
    inside = b >= 0
    n_b = np.bincount(b[inside], minlength=K)
    rate = np.bincount(b[inside], weights=v[inside], minlength=K) / np.maximum(n_b, 1)
    std = float(w @ rate)  # an empty bin's rate is 0
    per = np.full(len(v), std)
    bi = b[inside]
    per[inside] += w[bi] * (v[inside] - rate[bi]) * len(v) / n_b[bi]
    shares = np.concatenate([n_b, [(L < edges[0]).sum(), (L > edges[-1]).sum()]]) / len(L)
    tv = 0.5 * float(np.abs(shares - np.concatenate([w, [0.0, 0.0]])).sum())
    return {"std": std, "coverage": float(w[n_b > 0].sum()), "edges": edges.tolist(),
            "data_shares": w.tolist(), "shares": shares.tolist(), "length_tv": tv,
            "per_example": per.tolist()}


# ----------------------------------------------------------------------------------------------
# Per-example scores in a compact form, exact: runs/collect.py commits them beside each score
# file, and recompute() redoes every interval of the file from them. A list of 0s and 1s is a
# string of flags ("0110"); any other list holds integers, "p/q" for a value that is exactly the
# division of two integers (the metrics' shares: 2 of 3 words), null for nan, and else the
# shortest decimal that reads back as the same float.


def encode(values):
    """A list of floats as a flags string or a list of tokens (see above), lossless."""
    vals = [NAN if v is None else float(v) for v in values]
    if all(v in (0.0, 1.0) for v in vals):
        return "".join("1" if v else "0" for v in vals)
    out = []
    for v in vals:
        if np.isnan(v):
            out.append(None)
        elif v.is_integer() and abs(v) < 2 ** 53:
            out.append(int(v))
        else:
            f = Fraction(v).limit_denominator(10 ** 6)
            out.append(f"{f.numerator}/{f.denominator}" if f.numerator / f.denominator == v
                       else repr(v))
    return out


def decode(code):
    """The floats an encode() result stands for."""
    if isinstance(code, str):
        return [float(c == "1") for c in code]
    out = []
    for t in code:
        if t is None:
            out.append(NAN)
        elif isinstance(t, str) and "/" in t:
            p, q = t.split("/")
            out.append(int(p) / int(q))  # correctly rounded, as the metric's own division
        else:
            out.append(float(t))
    return out


def examples_of(res):
    """The compact per-example scores of a score file (results.json): each run's values per rate
    and metric, the reference's, and the prompt indices; the length-standardised metric is left
    out (recompute() derives it from the values it standardises and the lengths)."""
    derived = (res.get("standardised") or {}).get("metric")

    def pack(per):
        return {m: encode(v) for m, v in per.items() if m != derived}
    return {"prompt_indices": res["prompt_indices"],
            "reference": pack(res["reference"]["per_example"]) if res.get("reference") else None,
            "runs": {name: {r: pack(cell["per_example"]) for r, cell in by_rate.items()}
                     for name, by_rate in res["runs"].items()}}


def unpack(res, examples):
    """{run: {rate: {summary, per_example, realised_shift}}} from a slim score file (the summaries
    and shifts) and its compact per-example scores; the standardised metric derived again."""
    std = res.get("standardised")
    ref_len = decode(examples["reference"][std["length"]]) if std else None
    runs = {}
    for name, by_rate in examples["runs"].items():
        runs[name] = {}
        for r, codes in by_rate.items():
            per = {m: decode(c) for m, c in codes.items()}
            if std:
                per[std["metric"]] = length_standardised(per[std["of"]], per[std["length"]],
                                                         ref_len, std["bins"])["per_example"]
            cell = res["runs"][name][r]
            runs[name][r] = {"summary": cell["summary"], "realised_shift": cell["realised_shift"],
                             "per_example": {m: per[m] for m in res["metrics"]}}
    return runs


def recompute(res, examples):
    """Every interval of a score file, {family: entries}, from the slim file and its compact
    per-example scores, with the bootstrap's replicates and seed the file records."""
    arms = group_seeds(unpack(res, examples), res["metrics"])
    s = res["settings"]
    return comparisons(arms, res["baseline"], res["rates"], res["metrics"], s["n_boot"],
                       s["seed"])
