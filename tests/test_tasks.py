"""Tests of tasks.py: the copy task, and the grammar task's generator and exact recognizer
(against an independent one written from the finite set of sentence patterns). CPU, seconds."""
import itertools
import random

import pytest

import tasks


# ----------------------------------------------------------------------------------------------
# The copy task


def test_copy_examples_match_the_original_generator():
    """The same seed gives the same strings as before the move (values recorded from it)."""
    got = [r["prompt"] for r in tasks.copy_examples(4, 3, 9, 1337)]
    assert got == ["rwlssxf=", "kmuzljmwg=", "vldnumcqw=", "lmmzxzjv="]
    assert ([r["response"] for r in tasks.copy_examples(3, 8, 8, 0)]
            == ["ynbiqpmz", "plsgqeje", "tzirwzte"])
    recs = tasks.copy_examples(500, 2, 4, 7)
    assert len({r["response"] for r in recs}) == 500
    assert all(r["prompt"] == r["response"] + "=" and 2 <= len(r["response"]) <= 4 for r in recs)
    with pytest.raises(ValueError):
        tasks.copy_examples(27, 1, 1, 0)  # only 26 one-letter strings
    with pytest.raises(ValueError):
        tasks.copy_examples(1, 3, 2, 0)


def test_levenshtein():
    assert tasks.levenshtein("abcdef", "abdef") == 1 and tasks.levenshtein("abcdef", "abccdef") == 1
    assert tasks.levenshtein("kitten", "sitting") == 3 and tasks.levenshtein("", "abc") == 3
    assert tasks.levenshtein([1, 2, 3], [1, 2, 3]) == 0 and tasks.levenshtein("ab", "ba") == 2


# ----------------------------------------------------------------------------------------------
# The grammar task


def oracle(words):
    """An independent recognizer: every word's possible (category, number) tags, matched against
    the finite list of category patterns of a sentence under both subject and object numbers."""
    tags = {}
    for cat, pairs in (("N", tasks.NOUNS), ("Vt", tasks.TRANSITIVE), ("Vi", tasks.INTRANSITIVE)):
        for sg, pl in pairs:
            tags.setdefault(sg, set()).add((cat, "sg"))
            tags.setdefault(pl, set()).add((cat, "pl"))
    for d, nums in tasks.DETERMINERS.items():
        tags.setdefault(d, set()).update(("Det", n) for n in nums)
    for a in tasks.ADJECTIVES:
        tags.setdefault(a, set()).add(("Adj", None))  # adjectives do not inflect
    nps = [["Det", "N"], ["Det", "Adj", "N"]]
    for subj, verb, obj in itertools.product(nps, ["Vi", "Vt"], [[]] + nps):
        pat = subj + [verb] + obj
        if (verb == "Vi" and obj) or len(pat) != len(words):
            continue
        for num, onum in itertools.product(("sg", "pl"), repeat=2):
            need = [num] * (len(subj) + 1) + [onum] * len(obj)
            if all((c, None if c == "Adj" else n) in tags.get(w, ())
                   for w, c, n in zip(words, pat, need)):
                # a before a consonant letter, an before a vowel letter
                if all((w == "an") == (words[k + 1][0] in "aeiou")
                       for k, w in enumerate(words) if w in ("a", "an")):
                    return True
    return False


def test_every_generated_text_parses():
    texts = [r["prompt"] + r["response"] for s in range(3) for r in tasks.grammar_examples(700, s)]
    seen, n_sent = set(), set()
    for t in texts:
        c = tasks.grammar_check(t)
        assert c["parses"] and c["sentences"] == c["valid_sentences"], t
        assert c["words"] == c["lexicon_words"] == len(t.split(" "))
        seen.update(w.rstrip(".") for w in t.split(" "))
        n_sent.add(c["sentences"])
    assert seen == tasks.GRAMMAR_LEXICON and n_sent == {1, 2, 3}  # every word form and length


def test_grammar_examples_prompts_determinism_and_max_bytes():
    a = tasks.grammar_examples(200, 5, prompt_words=2)
    assert a == tasks.grammar_examples(200, 5, prompt_words=2)  # the same seed, the same texts
    assert a != tasks.grammar_examples(200, 6, prompt_words=2)
    for r in a:
        assert r["prompt"].endswith(" ") and len(r["prompt"].split()) == 2 and r["response"]
        assert not r["response"].startswith(" ") and r["response"].endswith(".")
    short = tasks.grammar_examples(300, 1, max_bytes=24)
    assert all(len((r["prompt"] + r["response"]).encode()) <= 24 for r in short)
    assert max(len(r["prompt"] + r["response"]) for r in tasks.grammar_examples(300, 1)) > 24
    with pytest.raises(ValueError):
        tasks.grammar_examples(1, 0, max_bytes=8)  # no sentence is that short
    with pytest.raises(ValueError):
        tasks.grammar_examples(1, 0, prompt_words=-1)
    # prompt_words=0: unconditional, the whole text is the response
    free = tasks.grammar_examples(50, 2, prompt_words=0, max_bytes=40)
    assert all(r["prompt"] == "" and tasks.grammar_check(r["response"])["parses"] for r in free)
    # a band of lengths and of sentence counts
    band = tasks.grammar_examples(100, 3, min_bytes=150, max_bytes=200, sentences=(5, 8))
    sizes = [len((r["prompt"] + r["response"]).encode()) for r in band]
    assert min(sizes) >= 150 and max(sizes) <= 200
    counts = [tasks.grammar_check(r["prompt"] + r["response"])["sentences"] for r in band]
    assert min(counts) >= 5 and max(counts) <= 8
    # the default draws are the ones the earlier signature made (seeded task files stay the same)
    assert tasks.grammar_examples(5, 9) == tasks.grammar_examples(5, 9, sentences=(1, 3))


def test_lexicon():
    lex = tasks.GRAMMAR_LEXICON
    assert 40 <= len(lex) <= 70 and all(w.isascii() and w.isalpha() and w.islower() for w in lex)
    assert min(map(len, lex)) <= 2 and max(map(len, lex)) >= 11  # 1..12 bytes: a wide spread
    assert sum(len(w) <= 3 for w in lex) >= 5 and sum(len(w) >= 9 for w in lex) >= 5


@pytest.mark.parametrize("text", [
    "the cat runs.", "an ox runs.", "a red ox runs.", "an old cat sleeps.", "the oxen run.",
    "two hippopotami remember an enormous eel.", "this tortoise sees.", "the mice see the mouse.",
    "some caterpillars chase a hippopotamus. one eel hides. these cats disappear.",
])
def test_grammatical(text):
    c = tasks.grammar_check(text)
    assert c["parses"] and c["valid_sentences"] == c["sentences"] == text.count(".")


@pytest.mark.parametrize("text", [
    "the cats runs.", "the cat run.", "a cats run.", "two cat runs.", "these ox runs.",  # agreement
    "a ox runs.", "an cat runs.", "a old cat runs.", "an red ox runs.",  # a/an
    "the dog runs.", "The cat runs.", "the cat runs quickly.",  # unknown words
    "the cat runs the ox.", "the cat sees the.", "the cat sees ox.", "the red big cat runs.",
    "cat runs.", "the cat.", "the cat runs", "", " ", ".", "the cat runs..",  # structure
    "the  cat runs.", "the cat runs.  an ox runs.", " the cat runs.", "the cat runs. ",  # spaces
    "the cat runs.an ox runs.", "the cat runs. the", "the cat runs.\n", "the cat runs. xyz.",
])
def test_ungrammatical(text):
    assert not tasks.grammar_check(text)["parses"]


def test_grammar_counts_on_a_hand_made_text():
    c = tasks.grammar_check("the cat runs. a cats sleep.  two dog see an ox. one eel hides. the")
    assert c == {"parses": False, "sentences": 5, "valid_sentences": 2, "words": 15,
                 "lexicon_words": 14}  # "dog" is no word of the lexicon
    assert tasks.grammar_check("") == {"parses": False, "sentences": 0, "valid_sentences": 0,
                                      "words": 0, "lexicon_words": 0}
    assert tasks.grammar_check("the cat runs . .")["words"] == 3  # a lone "." is no word


def test_recognizer_matches_the_pattern_oracle():
    """Mutants of generated sentences (replace, delete, insert, swap words): the recognizer and
    the independent pattern oracle agree on every one, grammatical or not."""
    rng, lex = random.Random(0), sorted(tasks.GRAMMAR_LEXICON)
    results = []
    for r in tasks.grammar_examples(1500, 3):
        words = (r["prompt"] + r["response"]).split(". ")[0].rstrip(".").split(" ")
        for _ in range(rng.randint(0, 2)):
            k, op = rng.randrange(len(words)), rng.randrange(4)
            if op == 0:
                words[k] = rng.choice(lex)
            elif op == 1 and len(words) > 1:
                del words[k]
            elif op == 2:
                words.insert(k, rng.choice(lex))
            elif k + 1 < len(words):
                words[k], words[k + 1] = words[k + 1], words[k]
        got = tasks.grammar_check(" ".join(words) + ".")["parses"]
        assert got == oracle(words), words
        results.append(got)
    assert 300 < sum(results) < 1200  # both kinds occur often


# ----------------------------------------------------------------------------------------------
# Dropped and doubled


def test_dropped_doubled():
    assert tasks.dropped_doubled("accd", "abcd") and tasks.dropped_doubled("aacd", "abcd")
    assert tasks.dropped_doubled("abdd", "abcd") and tasks.dropped_doubled("bbcd", "abcd")
    assert tasks.dropped_doubled([1, 3, 3], [1, 2, 3]) and tasks.dropped_doubled(b"xyy", b"xyz")
    assert not tasks.dropped_doubled("abcd", "abcd")  # identical
    assert not tasks.dropped_doubled("axcd", "abcd")  # a substitution by no neighbour
    assert not tasks.dropped_doubled("adcd", "abcd")  # d is two slots away, not a neighbour
    assert not tasks.dropped_doubled("accc", "abcd")  # two changes
    assert not tasks.dropped_doubled("acd", "abcd") and not tasks.dropped_doubled("abbcd", "abcd")
    assert not tasks.dropped_doubled("", "") and not tasks.dropped_doubled("a", "b")


def test_dropped_doubled_word():
    assert tasks.dropped_doubled_word("badder")  # badger: g dropped, d doubled
    assert tasks.dropped_doubled_word("catt") and tasks.dropped_doubled_word("hippopotamss")
    assert not tasks.dropped_doubled_word("badger")  # in the lexicon
    assert not tasks.dropped_doubled_word("bodger") and not tasks.dropped_doubled_word("bader")
    assert tasks.dropped_doubled_word("zz", ["xz"]) and not tasks.dropped_doubled_word("xy", ["xz"])
