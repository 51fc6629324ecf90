"""stats.py: the two-level bootstrap over training seeds and prompts against simulated results
whose truth is known, and the reading rule of an interval."""
import numpy as np
import pytest

import stats


def arms_of(grids):
    """{arm: {rate: cell}} from {arm: {rate: (S, n) array}}, as group_seeds builds it."""
    runs = {}
    for arm, by_rate in grids.items():
        for r, g in by_rate.items():
            for s, row in enumerate(np.atleast_2d(g)):
                runs.setdefault(f"{arm}@{s}", {})[r] = {
                    "summary": {"m": float(np.nanmean(row))}, "per_example": {"m": row.tolist()},
                    "realised_shift": 0.0}
    return stats.group_seeds(runs, ["m"])


def simulate(rng, S, n, seed_sd, prompt_sd, noise_sd, effect=0.0):
    """Two arms decoding the same n prompts: each seed of an arm shifts all its prompts by a seed
    effect (sd seed_sd), each prompt has a difficulty shared by every arm (sd prompt_sd), and
    every cell has its own noise. The arm "b" is better than "a" by `effect`."""
    difficulty = rng.normal(0, prompt_sd, n)
    return {arm: {"0": rng.normal(0, seed_sd, (S, 1)) + difficulty + add
                  + rng.normal(0, noise_sd, (S, n))}
            for arm, add in (("a", 0.0), ("b", effect))}


def width(e):
    return e["hi"] - e["lo"]


def test_seeds_that_dominate_widen_the_interval():
    """When seeds disagree and prompts barely do, the prompts-only interval (seed-averaged
    values) is far too narrow and the two-level one is not: it widens several times, and it
    covers the true difference about 95% of the time where the prompts-only one mostly misses."""
    rng = np.random.default_rng(0)
    hits, hits_prompts, ratios = 0, 0, []
    for trial in range(60):
        arms = arms_of(simulate(rng, S=3, n=200, seed_sd=0.1, prompt_sd=0.3, noise_sd=0.05))
        e = stats.comparisons(arms, "a", ["0"], ["m"], n_boot=400, seed=trial)["differences"][0]
        assert e["name"] == "b" and e["n_seeds"] == 3
        ratios.append(width(e) / (e["prompts_hi"] - e["prompts_lo"]))
        hits += e["lo"] <= 0 <= e["hi"]  # the truth is 0
        hits_prompts += e["prompts_lo"] <= 0 <= e["prompts_hi"]
    assert np.median(ratios) > 3, np.median(ratios)
    assert hits / 60 > 0.85 and hits_prompts / 60 < 0.5, (hits, hits_prompts)


def test_when_seeds_agree_the_interval_stays_close():
    """With no seed effect at all, resampling seeds counts the cells' noise a second time: the
    two-level interval errs on the wide side (Owen 2007), by a bounded factor, and covers."""
    rng = np.random.default_rng(1)
    ratios, hits = [], 0
    for trial in range(20):
        arms = arms_of(simulate(rng, S=3, n=300, seed_sd=0.0, prompt_sd=1.0, noise_sd=0.3))
        e = stats.comparisons(arms, "a", ["0"], ["m"], n_boot=500, seed=trial)["differences"][0]
        ratios.append(width(e) / (e["prompts_hi"] - e["prompts_lo"]))
        hits += e["lo"] <= 0 <= e["hi"]
    assert 1.0 <= np.median(ratios) < 1.8 and hits >= 19, (np.median(ratios), hits)


def test_a_real_effect_is_found_and_the_intervals_repeat():
    rng = np.random.default_rng(2)
    arms = arms_of(simulate(rng, S=3, n=300, seed_sd=0.02, prompt_sd=1.0, noise_sd=0.1,
                            effect=0.3))
    res = stats.comparisons(arms, "a", ["0"], ["m"], n_boot=1000, seed=5)
    e = res["differences"][0]
    assert e["lo"] > 0 and e["mean_diff"] == pytest.approx(0.3, abs=0.05)
    assert stats.direction(e, lower_is_better=False) == 1
    assert stats.direction(e, lower_is_better=True) == -1
    assert res == stats.comparisons(arms, "a", ["0"], ["m"], n_boot=1000, seed=5)


def test_degradation_retained_share_and_one_seed():
    """Rates: each arm against itself at shift 0, seed by seed; the share it retains; an arm of
    one seed (the pretrained model) has a prompts-only interval, the same as the paired one."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0.5, 1.0, (3, 100))
    grids = {"a": {"0": base, "0.1": base * 0.5},
             "b": {"0": base, "0.1": base * 0.8},
             "one": {"0": base[:1], "0.1": base[:1] * 0.9}}
    res = stats.comparisons(arms_of(grids), "a", ["0", "0.1"], ["m"], n_boot=500, seed=0)
    kept = {e["name"]: e for e in res["retained"]}
    assert kept["a"]["mean_diff"] == pytest.approx(0.5) and kept["b"]["mean_diff"] == pytest.approx(
        0.8)
    did = {e["name"]: e for e in res["diff_in_diff"]}
    assert did["b"]["lo"] > 0  # b loses less than a
    one = {e["name"]: e for e in res["differences"]}["one"]
    assert one["n_seeds"] == 1


def test_an_interval_touching_zero_reads_as_no_difference():
    """The verdict's rule reads an interval, not a mean; an end within floating-point noise of
    zero touches zero."""
    assert stats.direction({"lo": 0.01, "hi": 0.2}, False) == 1
    assert stats.direction({"lo": -0.2, "hi": -1.37e-18}, False) == 0  # a floating-point 0
    assert stats.direction({"lo": -0.2, "hi": -0.01}, False) == -1
    assert stats.direction({"lo": -0.2, "hi": -0.01}, True) == 1  # lower is better: mirrored
    assert stats.direction(None, False) is None
