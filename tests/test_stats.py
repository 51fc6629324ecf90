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


# ----------------------------------------------------------------------------------------------
# Seeds that pair arms, and one generator per comparison


def correlated(rng, S, n, seed_sd, rho, effect=0.0, noise_sd=0.05, prompt_sd=0.3):
    """As simulate, but seed s of "b" shares a part rho of its seed effect's variance with seed s
    of "a" (the same batches), the rest its own."""
    difficulty, shared = rng.normal(0, prompt_sd, n), rng.normal(0, seed_sd, (S, 1))
    return {arm: {"0": np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(0, seed_sd, (S, 1))
                  + difficulty + add + rng.normal(0, noise_sd, (S, n))}
            for arm, add in (("a", 0.0), ("b", effect))}


def test_paired_seeds_narrow_the_interval_and_cover():
    """Where seed s of both arms shares most of its effect, resampling the seeds jointly gives a
    much narrower interval than resampling each arm's seeds on its own (no wider in nine trials
    of ten; a bootstrap of three seeds is a noisy one), and with ten seeds it
    covers the true difference; with three, as any bootstrap of three values, it falls short of
    95% (why the verdict reads the unpaired lo and hi)."""
    rng = np.random.default_rng(4)
    widths, hits = [], {3: 0, 10: 0}
    for trial in range(40):
        for S in (3, 10):
            arms = arms_of(correlated(rng, S=S, n=150, seed_sd=0.1, rho=0.9, effect=0.05))
            e = stats.comparisons(arms, "a", ["0"], ["m"], n_boot=400,
                                  seed=trial)["differences"][0]
            hits[S] += e["paired_lo"] <= 0.05 <= e["paired_hi"]
            if S == 3:
                assert e["lo"] <= e["mean_diff"] <= e["hi"]
                widths.append((e["paired_hi"] - e["paired_lo"]) / width(e))
    # three seeds give a noisy width either way: narrower in nine trials of ten, and by far
    assert np.mean(np.array(widths) <= 1.0) >= 0.9 and np.median(widths) < 0.6, widths
    assert hits[10] >= 35 and hits[3] < hits[10], hits


def test_unshared_seeds_are_not_paired():
    """An arm of other seeds than the baseline's (or of one seed) has no paired interval."""
    rng = np.random.default_rng(5)
    grids = correlated(rng, S=3, n=50, seed_sd=0.1, rho=0.5)
    arms = arms_of({**grids, "c": {"0": grids["b"]["0"][:2]}, "one": {"0": grids["b"]["0"][:1]}})
    res = {e["name"]: e for e in stats.comparisons(arms, "a", ["0"], ["m"], 50, 0)["differences"]}
    assert not np.isnan(res["b"]["paired_lo"])
    assert np.isnan(res["c"]["paired_lo"]) and np.isnan(res["one"]["paired_hi"])
    assert stats.seed_labels(["ce-ft@2:plain/1/16", "pretrained", "x@3"]) == ["2", None, "3"]


def test_a_comparison_draws_the_same_whatever_else_the_file_holds():
    rng = np.random.default_rng(6)
    grids = correlated(rng, S=3, n=80, seed_sd=0.1, rho=0.5)
    grids = {"a": {**grids["a"], "0.1": grids["a"]["0"] - 0.1},
             "b": {**grids["b"], "0.1": grids["b"]["0"] - 0.2}}
    alone = stats.comparisons(arms_of(grids), "a", ["0", "0.1"], ["m"], 100, 7)
    more = {"z": {r: g + 1 for r, g in grids["b"].items()}, **grids}  # another arm, listed first
    beside = stats.comparisons(arms_of(more), "a", ["0", "0.1"], ["m"], 100, 7)
    for family, entries in alone.items():
        assert entries == [e for e in beside[family] if e["name"] != "z"], family
    assert alone != stats.comparisons(arms_of(grids), "a", ["0", "0.1"], ["m"], 100, 8)


# ----------------------------------------------------------------------------------------------
# The rate standardised to the data's lengths


def test_writing_short_valid_texts_does_not_raise_the_standardised_rate():
    """The data: 200 texts of 10..49 bytes. A model that writes only short texts that all parse
    scores 1.0 on plain parses but only the data's share of the bins it reaches; a model of the
    data's lengths that parses 70% of the time in every bin scores 0.7; outputs outside the
    data's lengths earn nothing."""
    ref = np.arange(200) % 40 + 10
    std = stats.length_standardised
    short = std(np.ones(200), np.full(200, 11), ref)  # all in the first bin
    assert np.mean(np.ones(200)) == 1.0 and short["std"] == short["coverage"] == 0.2
    tiny = std(np.ones(200), np.full(200, 3), ref)  # shorter than any of the data's texts
    assert tiny["std"] == tiny["coverage"] == 0.0 and tiny["length_tv"] == 1.0
    assert tiny["shares"][-2:] == [1.0, 0.0]  # all below the data
    parses = (np.arange(200) // 40 + np.arange(200)) % 10 < 7  # 70% in every bin of ref
    match = std(parses.astype(float), ref, ref)
    assert match["std"] == pytest.approx(np.mean(parses)) == pytest.approx(0.7)
    assert match["coverage"] == 1.0 and match["length_tv"] == 0.0
    assert match["edges"][0] == 10 and match["edges"][-1] == 49 and len(match["edges"]) == 6
    # per-example values: their mean is the rate, each output's bin weighed as the data's
    for r in (short, tiny, match):
        assert np.mean(r["per_example"]) == pytest.approx(r["std"], abs=1e-12)


def test_the_standardised_rate_by_hand_and_its_interval():
    """Two bins of the data (lengths 1 and 2, half each): the run has three outputs of length 1
    (two parse) and one of length 2 (it does not): 0.5 x 2/3 + 0.5 x 0 = 1/3, while 2 of 4 parse.
    As a metric of a score file its interval comes from its linearised per-example values."""
    r = stats.length_standardised([1, 1, 0, 0], [1, 1, 1, 2], [1, 2, 1, 2], bins=2)
    assert r["std"] == pytest.approx(1 / 3) and r["coverage"] == 1.0
    assert r["data_shares"] == [0.5, 0.5] and r["shares"] == [0.75, 0.25, 0.0, 0.0]
    assert r["length_tv"] == pytest.approx(0.25)
    # 1/3 + 0.5 (v - 2/3) 4 / 3 in the first bin; 1/3 + 0.5 (0 - 0) 4 in the second
    assert r["per_example"] == pytest.approx([5 / 9, 5 / 9, -1 / 9, 1 / 3])
    with pytest.raises(ValueError):
        stats.length_standardised([1, float("nan")], [1, 2], [1, 2])


# ----------------------------------------------------------------------------------------------
# Per-example scores, compact and exact


@pytest.mark.parametrize("values, code", [
    ([1.0, 0.0, 1.0], "101"),
    ([2.0, 2 / 3, float("nan"), 0.1 + 0.2, 13 / 7], [2, "2/3", None, "0.30000000000000004",
                                                      "13/7"]),
    ([], ""),
])
def test_encode_is_compact_and_lossless(values, code):
    assert stats.encode(values) == code
    back = stats.decode(code)
    assert len(back) == len(values) and all(
        (a == b) or (np.isnan(a) and np.isnan(b)) for a, b in zip(back, values))
    # the shares the metrics divide out come back bit for bit
    shares = [a / b for b in range(1, 30) for a in range(b + 1)]
    assert stats.decode(stats.encode(shares)) == shares
