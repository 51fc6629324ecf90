"""
The tasks every model is scored on: two synthetic ones with exact checkers, and text. Shared by
evaluate.py (which writes a task's files and scores decoded outputs) and the tests; no command line.

- The copy task (a string, "=", the same string): a one-slot error costs exactly one edit.
- The text task: held-out prompts of a corpus and their true continuations, scored by a judge.
- The grammar task: open-ended sentences from a small probabilistic context-free grammar with
  number agreement, whose words range from 1 to 12 bytes. A masked diffusion model that commits a
  byte far to the right must guess how long the words before it will be, so positional
  uncertainty arises by itself, and an exact recognizer scores every output.

Papers and references:
- Ye et al. 2026 (arXiv 2601.22947): the slack CTC fine-tune these tasks are meant to probe.
- Wagner & Fischer 1974, "The String-to-String Correction Problem": the edit-distance recursion.
- Graves et al. 2006, "Connectionist Temporal Classification": per-position outputs read out
  independently, the source of the dropped-and-doubled error pattern measured here.
"""

import functools
import itertools
import random
import string

import numpy as np
import torch

import common
import ctc_slack
import data
import mdlm


# ----------------------------------------------------------------------------------------------
# The copy task. A string s of n letters, n uniform in [min_len, max_len]; prompt s + "=", answer
# s. The answer is known, so a letter that lands one slot off costs exactly one edit.

ALPHABET = string.ascii_lowercase  # 26 one-byte tokens
SEP = "="  # ends every prompt: "where the copy starts"


def copy_examples(n, min_len, max_len, seed):
    """n examples {"prompt": s + "=", "response": s}
    with n distinct strings s, fixed by the seed."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
    # sum of 26^n over the lengths: drawing more distinct strings than exist would never finish
    if n > sum(len(ALPHABET) ** k for k in range(min_len, max_len + 1)):
        raise ValueError(f"there are fewer than {n} strings of {min_len}..{max_len} letters")
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        s = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(min_len, max_len)))
        if s not in seen:  # distinct, so a test string can never also be a training string
            seen.add(s)
            out.append({"prompt": s + SEP, "response": s})
    return out


def levenshtein(a, b):
    """Fewest insertions, deletions and substitutions that turn sequence a into b (str or list).

        D[i][j] = min(D[i-1][j] + 1, D[i][j-1] + 1, D[i-1][j-1] + [a_i != b_j]),  D[i][0] = i,
        D[0][j] = j  (Wagner & Fischer 1974), kept one row at a time: O(|a| |b|) time,
        O(|b|) memory.
    """
    prev = list(range(len(b) + 1))  # row i = 0: turning "" into b[:j] takes j insertions
    for i, x in enumerate(a, 1):
        cur = [i]  # column j = 0: deleting all i letters of a[:i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


# ----------------------------------------------------------------------------------------------
# The grammar task. A small probabilistic context-free grammar, n in {sg, pl}:
#
#     Text  -> S | S " " S | S " " S " " S              (1, 2 or 3 sentences, uniform)
#     S     -> NP_n VP_n "."                            (subject and verb agree in number)
#     NP_n  -> Det_n N_n | Det_n Adj N_n                (Adj with probability 0.4)
#     VP_n  -> Vt_n NP_m | Vt_n | Vi_n                  (0.45 / 0.15 / 0.4; object number m free)
#     Det   -> "a" before a consonant letter, "an" before a vowel letter (a, e, i, o, u)
#
# Words run from 1 byte ("a") to 12 ("hippopotamus", "caterpillars"), so where the verb starts
# depends on which noun came first; agreement and a/an make "a valid sentence" much stricter than
# "lexicon words in a row". Categories are disjoint (only "the" has two numbers), so a sentence
# has one parse and the left-to-right recognizer below is exact.

DETERMINERS = {"a": ("sg",), "an": ("sg",), "this": ("sg",), "one": ("sg",), "the": ("sg", "pl"),
               "some": ("pl",), "two": ("pl",), "many": ("pl",), "these": ("pl",)}
NOUNS = [("ox", "oxen"), ("cat", "cats"), ("eel", "eels"), ("mouse", "mice"), ("badger", "badgers"),
         ("tortoise", "tortoises"), ("caterpillar", "caterpillars"),
         ("hippopotamus", "hippopotami")]
ADJECTIVES = ["red", "old", "tiny", "happy", "striped", "enormous", "invisible", "magnificent"]
TRANSITIVE = [("sees", "see"), ("chases", "chase"), ("likes", "like"), ("follows", "follow"),
              ("tickles", "tickle"), ("remembers", "remember")]
INTRANSITIVE = [("runs", "run"), ("sleeps", "sleep"), ("hides", "hide"),
                ("disappears", "disappear")]
VOWELS = "aeiou"  # no lexicon word starts with a silent h or a "you" sound, so letters decide a/an
P_ADJ, P_VT_OBJ, P_VT = 0.4, 0.45, 0.15  # P(Vi) = 1 - P_VT_OBJ - P_VT = 0.4
NUMBERS = ("sg", "pl")

# word form -> number, one table per category (sg forms first in each pair above)
_NOUN_NUM = {w: n for pair in NOUNS for n, w in zip(NUMBERS, pair)}
_VT_NUM = {w: n for pair in TRANSITIVE for n, w in zip(NUMBERS, pair)}
_VI_NUM = {w: n for pair in INTRANSITIVE for n, w in zip(NUMBERS, pair)}
GRAMMAR_LEXICON = frozenset([*DETERMINERS, *_NOUN_NUM, *ADJECTIVES, *_VT_NUM, *_VI_NUM])


def _sample_np(rng, num):
    """Det (Adj) N of number num, as a list of words."""
    adj = rng.choice(ADJECTIVES) if rng.random() < P_ADJ else None
    noun = NOUNS[rng.randrange(len(NOUNS))][NUMBERS.index(num)]
    nxt = adj or noun  # the article agrees with the sound of the word right after it
    dets = [d for d, nums in DETERMINERS.items() if num in nums and d not in ("a", "an")]
    if num == "sg":
        dets.append("an" if nxt[0] in VOWELS else "a")
    return [rng.choice(dets)] + ([adj] if adj else []) + [noun]


def _sample_sentence(rng):
    """One sentence S as a string ending in "."."""
    num = rng.choice(NUMBERS)
    words, u, k = _sample_np(rng, num), rng.random(), NUMBERS.index(num)
    if u < P_VT_OBJ:
        words += [rng.choice(TRANSITIVE)[k]] + _sample_np(rng, rng.choice(NUMBERS))
    elif u < P_VT_OBJ + P_VT:
        words.append(rng.choice(TRANSITIVE)[k])
    else:
        words.append(rng.choice(INTRANSITIVE)[k])
    return " ".join(words) + "."


@functools.lru_cache(maxsize=None)
def _shortest_sentence():
    """Bytes of the shortest sentence, Det N V "." (2880 candidates, each checked)."""
    verbs = [*_VT_NUM, *_VI_NUM]
    return min(len(" ".join(w)) + 1 for w in itertools.product(DETERMINERS, _NOUN_NUM, verbs)
               if _is_sentence(list(w)))


def grammar_examples(n, seed, prompt_words=1, max_bytes=None, *, min_bytes=0, sentences=(1, 3)):
    """n examples {"prompt": the first prompt_words words + " ", "response": the rest of a text
    of sentences[0]..sentences[1] sentences (uniform)}, fixed by the seed. prompt_words=0: an
    empty prompt, the whole text is the response (unconditional generation). Texts of fewer than
    min_bytes or more than max_bytes bytes (prompt and response together) are drawn again, so
    that every example fits a canvas and the lengths lie in a chosen band."""
    lo, hi = sentences
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= sentences[0] <= sentences[1], got {sentences}")
    if not 0 <= prompt_words < lo * 7:  # a sentence has at most 7 words; the response needs one
        raise ValueError(f"prompt_words must lie in 0..{lo * 7 - 1}, got {prompt_words}")
    if max_bytes is not None and max_bytes < max(min_bytes, lo * (_shortest_sentence() + 1) - 1):
        raise ValueError(f"max_bytes {max_bytes} is shorter than min_bytes or than {lo} of the "
                         f"shortest sentence ({_shortest_sentence()} bytes)")
    # one generator drives every choice, in a fixed order: the same seed, the same examples
    rng, out, tries = random.Random(seed), [], 0
    while len(out) < n:
        text = " ".join(_sample_sentence(rng) for _ in range(rng.randint(lo, hi)))
        words = text.split(" ")
        size = len(text.encode())
        fits = min_bytes <= size and (max_bytes is None or size <= max_bytes)
        if fits and len(words) > prompt_words:  # the response must hold at least one word
            # the prompt keeps its trailing space, so the response starts with a word's first
            # byte and the model never has to guess the separator after the prompt
            prompt = " ".join(words[:prompt_words]) + " " if prompt_words else ""
            out.append({"prompt": prompt, "response": " ".join(words[prompt_words:])})
            tries = 0
            continue
        tries += 1  # rejection sampling; give up when the constraints (nearly) never hold
        if tries > 100_000:
            raise ValueError(f"no text of {lo}..{hi} sentences and {min_bytes}..{max_bytes} "
                             f"bytes with more than {prompt_words} words was drawn")
    return out


def _parse_np(words, i):
    """(end, number) of the noun phrase Det (Adj) N at words[i:], or None."""
    nums = DETERMINERS.get(words[i]) if i < len(words) else None
    if nums is None:
        return None
    j = i + 1 + (i + 1 < len(words) and words[i + 1] in ADJECTIVES)  # the optional adjective
    if j >= len(words) or _NOUN_NUM.get(words[j]) not in nums:
        return None  # no noun, or one whose number the determiner does not allow
    if words[i] in ("a", "an") and (words[i] == "an") != (words[i + 1][0] in VOWELS):
        return None  # "a ox", "an cat"
    return j + 1, _NOUN_NUM[words[j]]


def _is_sentence(words):
    """True when the words (no final ".") are NP_n VP_n exactly."""
    np_ = _parse_np(words, 0)  # the subject fixes the number the verb must agree with
    if np_ is None or np_[0] >= len(words):
        return False
    j, num = np_
    verb, rest = words[j], len(words) - j - 1
    if _VI_NUM.get(verb) == num:
        return rest == 0
    if _VT_NUM.get(verb) == num:  # with no object, or with a whole noun phrase of any number
        return rest == 0 or (_parse_np(words, j + 1) or (0,))[0] == len(words)
    return False


def grammar_words(text):
    """The words of a text as grammar_check counts them: split at whitespace, a final "." cut off,
    a lone "." dropped."""
    return [w for w in (w[:-1] if w.endswith(".") else w for w in text.split()) if w]


def first_sentence(text):
    """The first sentence of a grammar text, its period included."""
    head = text.split(". ")[0]
    return head if head.endswith(".") else head + "."


def grammar_check(text):
    """Exact counts for a generated text (prompt + continuation):
    - parses: the text is >= 1 grammatical sentences joined by single spaces, nothing else;
    - sentences: non-blank pieces of text.split(".") (a trailing unterminated piece included);
    - valid_sentences: those pieces that end in "." and, stripped of surrounding whitespace, are
      grammatical words separated by single spaces;
    - words: whitespace-separated words, a final "." stripped (a lone "." is no word);
    - lexicon_words: those words that are word forms of GRAMMAR_LEXICON."""
    # "." only ever ends a sentence here (no abbreviations, no numbers), so splitting at it
    # recovers the sentences; a model's garbage between periods becomes one invalid piece
    pieces = text.split(".")
    ended = [p for p in pieces[:-1] if p.strip()]  # each of these was followed by a "."
    tail = [pieces[-1]] if pieces[-1].strip() else []  # text after the last ".", if any
    valid = [p.strip() for p in ended if _is_sentence(p.strip().split(" "))]
    cores = grammar_words(text)
    # strict form: the canonical joining of the valid sentences must give back the text exactly
    canonical = " ".join(s + "." for s in valid)
    return {"parses": bool(valid) and len(valid) == len(ended) + len(tail) and canonical == text,
            "sentences": len(ended) + len(tail), "valid_sentences": len(valid),
            "words": len(cores), "lexicon_words": sum(w in GRAMMAR_LEXICON for w in cores)}


@torch.no_grad()
def end_probability(model, texts, T, per_length=20, start=False):
    """{L: (number of texts, data's P(end | L), model's mean P(EOS) after the first sentence)}.
    The model's EOS is weighed against every other next token except SLACK, which only defers
    the choice (a slack-trained model puts mass there when it is unsure of the position).
    start: the model was trained with EOS as a start token before each prompt (train.py --bos)."""
    eos, slack, mask = mdlm.special_ids(model.cfg.vocab_size)
    groups = {}
    for text in texts:
        groups.setdefault(len(first_sentence(text).encode()), []).append(text)
    out = {}
    for L, group in sorted(groups.items()):
        P = L + start  # each prompt: the start token, if any, and the L bytes
        if P >= T:
            continue
        firsts = [[eos] * start + mdlm.encode(first_sentence(t)) for t in group[:per_length]]
        canvas, _ = ctc_slack.masked_canvas(firsts, prompt_lengths=P, canvas_length=T,
                                            mask_id=mask)  # (n, T): decoding's start canvas
        p = model(canvas.to(next(model.parameters()).device)).float().softmax(-1)[:, P]  # (n, V)
        p_end = (p[:, eos] / (1 - p[:, slack])).mean().item()
        ends = sum(first_sentence(t) == t for t in group) / len(group)
        out[L] = (len(group), ends, p_end)
    return out


# ----------------------------------------------------------------------------------------------
# The signature of an independent per-position readout. A CTC model predicts every position on
# its own, so when it is unsure where a token goes, two neighbouring positions can both emit the
# same token: one token is dropped and its neighbour doubled, the length unchanged ("abcd" ->
# "accd" or "aacd"). That is exactly one substitution whose new value is the reference's token
# just to the left or right of it.


def dropped_doubled(out, ref):
    """True when out is ref with one token dropped and a neighbour of it doubled (same length).
    Strings, bytes and lists all work: only positions and equality are used."""
    out, ref = list(out), list(ref)
    if len(out) != len(ref):
        return False
    diff = [i for i, (a, b) in enumerate(zip(out, ref)) if a != b]
    if len(diff) != 1:
        return False  # identical (nothing dropped), or more than one change
    i = diff[0]
    return (i > 0 and out[i] == ref[i - 1]) or (i + 1 < len(ref) and out[i] == ref[i + 1])


def dropped_doubled_word(word, lexicon=GRAMMAR_LEXICON):
    """True when word is not in the lexicon but is a lexicon word of the same length with one
    character dropped and a neighbour doubled: "badder" (badger, g dropped, d doubled) is;
    "bader" (another length) and "bodger" (o is no neighbour's letter) are not."""
    if word in lexicon:
        return False
    return any(dropped_doubled(word, w) for w in lexicon if len(w) == len(word))


# ----------------------------------------------------------------------------------------------
# The text task: prompts cut from the held-out part of a corpus, with their true continuations.


def held_out_examples(val_ids, n, prompt_len, length):
    """n {"prompt", "response"} pairs at evenly spaced offsets of the held-out bytes: prompt_len
    bytes of prompt, then the `length` true bytes after it (what real text scores)."""
    span, ids = prompt_len + length, np.asarray(val_ids, dtype=np.uint8)
    if n < 1 or prompt_len < 1 or length < 1 or len(ids) < span + 3:  # 3: a cut moves <= 3 bytes
        raise common.UserError(f"need >= 1 prompt and >= {span + 3} held-out bytes, have "
                               f"{len(ids)}")
    # cuts move forward to the next character start (UTF-8 continuation bytes are 10xxxxxx), so
    # that prompt and response are whole characters and encode back to exactly these bytes
    starts = np.append(np.flatnonzero(ids & 0xC0 != 0x80), len(ids))

    def cut(k):  # the first character start >= k
        return int(starts[np.searchsorted(starts, k)])

    def text(a, b):  # bad bytes read as U+FFFD
        return ids[a:b].tobytes().decode("utf-8", errors="replace")
    # evenly spaced, not random: the prompts cover the whole split instead of clustering
    starts_at = (cut(o) for o in np.linspace(0, len(ids) - span - 3, n))
    cuts = [(a, cut(a + prompt_len)) for a in starts_at]
    return [{"prompt": text(a, b), "response": text(b, cut(b + length))} for a, b in cuts]


def held_out_token_examples(val_ids, n, prompt_len, length, vocab):
    """As held_out_examples, for a token file: prompt_ids and response_ids at evenly spaced
    offsets, and their text where the vocabulary's tokenizer is at hand (else null)."""
    span = prompt_len + length
    if n < 1 or prompt_len < 1 or length < 1 or len(val_ids) < span:
        raise common.UserError(f"need >= 1 prompt and >= {span} held-out tokens, have "
                             f"{len(val_ids)}")
    offsets = np.linspace(0, len(val_ids) - span, n).astype(np.int64)
    rows = data.windows(val_ids, offsets, span).tolist()
    return [{"prompt_ids": r[:prompt_len], "response_ids": r[prompt_len:],
             "prompt": vocab.decode(r[:prompt_len]), "response": vocab.decode(r[prompt_len:])}
            for r in rows]


# ----------------------------------------------------------------------------------------------
# The metrics of one output, per task (evaluate.py score averages them), checked by hand in the
# tests. The primary metric of a task comes first.

METRICS = {"copy": ("exact", "cer", "dropped_doubled", "length_error", "length"),
           "grammar": ("parses_std", "parses", "valid", "lexicon", "dropped_doubled", "length",
                       "sentences", "words", "sentence_words", "word_bytes"),
           "text": ("judge_nll", "entropy", "distinct_2", "length")}
LOWER = "lower is better"  # table titles say which way is good; other metrics: higher is better
BETTER = {"cer": LOWER, "dropped_doubled": LOWER, "judge_nll": LOWER, "entropy": "bits",
          "length": "bytes", "sentences": "per text", "words": "per text", "word_bytes": "bytes",
          "sentence_words": "per sentence", "length_error": "bytes, output - answer"}
NAN = float("nan")  # "no value": an empty output has no entropy; JSON writes it as null
#
# Why several per task: a model stuck in a loop ("the the the ...") is predictable, so the judge
# gives it a flattering perplexity; byte entropy and distinct-n measure variety instead.
# dropped_doubled counts the probe's signature: a token moved one slot leaves a gap and a duplicate.
#
# The primary metric must not reward writing less. The share of grammar outputs that parse does:
# a short text of short words has less to get wrong. So grammar's primary is parses_std, the parse
# rate standardised to the data's length distribution (stats.length_standardised: per length bin
# of the data's quantiles, the share that parses, weighted by the data's share of the bin; a bin
# the model never reaches counts 0). evaluate.py score derives it from each run's parses and
# lengths. Copy's exact match cannot be raised by length (an output of another length is never the
# answer): it stays the primary, with the length error beside it.
STANDARDISED = {"grammar": {"metric": "parses_std", "of": "parses", "length": "length"}}
VALID = {"copy": "exact", "grammar": "parses"}  # what makes an output valid, for distinct_valid


def unigram_entropy(ids):
    """H = -sum_v p(v) log2 p(v) with p the byte histogram of `ids`, in bits; nan if empty. 0 for
    one repeated byte, 8 for uniform random bytes, 4 to 4.5 for English; it flags a narrow
    vocabulary."""
    if len(ids) == 0:
        return NAN
    counts = np.bincount(np.asarray(ids, dtype=np.int64))  # (max id + 1,) per byte value
    p = counts[counts > 0] / len(ids)  # empirical p(v) of the bytes that occur (0 log 0 = 0)
    return float(abs(-(p * np.log2(p)).sum()))  # abs: a constant sequence gives 0, not -0


def distinct_n(ids, n):
    """Unique n-grams / all n-grams of `ids` (1 = no repetition); nan if shorter than n. Catches a
    phrase repeated verbatim, which keeps its byte histogram; it falls with length even for real
    text."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]  # overlapping, in order
    return len(set(grams)) / len(grams) if grams else NAN


@torch.no_grad()
def judge_nll(judge, prompt_ids, cont_ids):
    """(sum_j -log p_judge(c_j | prompt, c_<j) in nats, number of bytes scored) for continuation c.
    The judge reads at most seq_len tokens: a longer prompt keeps its last bytes, and the
    continuation is cut to fit seq_len + 1 (the last byte is only a target). The prompt is context,
    never scored."""
    # Why an AR judge: an MDLM has no exact likelihood of its own samples, and a model should not
    # grade itself; a causal model gives the exact probability of any text, one fixed reader for all
    if len(prompt_ids) == 0:
        raise ValueError("the judge needs a prompt byte to predict the first output byte from")
    prompt = list(prompt_ids)[-judge.cfg.seq_len:]  # the nearest context wins
    cont = list(cont_ids)[:judge.cfg.seq_len + 1 - len(prompt)]  # P + C <= seq_len + 1
    if not cont:
        return 0.0, 0
    x = torch.tensor([prompt + cont], dtype=torch.long, device=next(judge.parameters()).device)
    log_p = judge(x[:, :-1]).float().log_softmax(-1)  # (1, P + C - 1, V): position i predicts i + 1
    # continuation byte j sits at position P + j and is predicted from position P + j - 1
    picked = log_p[:, len(prompt) - 1:].gather(-1, x[:, len(prompt):, None])  # (1, C, 1)
    return -picked.sum().item(), len(cont)


def copy_metrics(ref, gen):
    """exact, cer, dropped_doubled, length_error (output bytes - answer bytes) and length of one
    copy output against its known answer."""
    out, want = gen["output"], ref["response"]
    # CER = edit distance / answer length: a letter one slot off costs exactly one edit
    cer = levenshtein(out, want) / len(want) if want else NAN
    return {"exact": float(out == want), "cer": cer,
            "dropped_doubled": float(dropped_doubled(out, want)),
            "length_error": float(len(out.encode("utf-8")) - len(want.encode("utf-8"))),
            "length": float(len(out.encode("utf-8")))}


def grammar_metrics(ref, gen):
    """parses, valid, lexicon, dropped_doubled, length of one grammar output, and the length taken
    apart (few sentences, or short ones of short words?): sentences, words, sentence_words (words
    per sentence), word_bytes. All of prompt + output (the prompt opens the sentence) but
    dropped_doubled and length: output alone."""
    out = gen["output"]
    g = grammar_check(ref["prompt"] + out)
    words = grammar_words(out)  # the output's words, counted as grammar_check counts them
    g["bad"] = sum(dropped_doubled_word(w, GRAMMAR_LEXICON) for w in words)
    text_words = grammar_words(ref["prompt"] + out)
    # shares of nothing are 0: an empty output earns nothing
    valid = g["valid_sentences"] / g["sentences"] if g["sentences"] else 0.0
    lexicon = g["lexicon_words"] / g["words"] if g["words"] else 0.0
    return {"parses": float(g["parses"]), "valid": valid, "lexicon": lexicon,
            "dropped_doubled": g["bad"] / max(len(words), 1),
            "length": float(len(out.encode("utf-8"))), "sentences": float(g["sentences"]),
            "words": float(g["words"]),
            "sentence_words": g["words"] / g["sentences"] if g["sentences"] else NAN,
            "word_bytes": float(np.mean(
                [len(w.encode("utf-8")) for w in text_words])) if text_words else NAN}


def text_metrics(judge, vocab, ref, gen):
    """judge_nll (per token: per byte for a byte model), entropy, distinct_2, length; an empty
    output: nan but length 0. Ids as decoded where a record carries them, else the text through
    the judge's vocabulary; either must be ids of that vocabulary."""
    def ids_of(rec, key):
        ids = rec.get(f"{key}_ids")
        ids = ids if isinstance(ids, list) else vocab.encode(rec.get(key) or "", key)
        if any(not 0 <= i < vocab.n_tokens for i in ids):
            raise common.UserError(f"a {key} holds ids outside the judge's vocabulary of "
                                 f"{vocab.n_tokens} ids: decoded by a model of another one?")
        return ids
    ids, prompt = ids_of(gen, "output"), ids_of(ref, "prompt")
    nll, n = judge_nll(judge, prompt, ids)
    # per token, so that continuations of different lengths are comparable
    return {"judge_nll": nll / n if n else NAN, "entropy": unigram_entropy(ids),
            "distinct_2": distinct_n(ids, 2), "length": float(len(ids))}
