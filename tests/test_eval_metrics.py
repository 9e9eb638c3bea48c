"""Evaluation metrics (issue 7) on hand-made inputs: precision, KN bigram perplexity, token budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gotd.lab.evaluation.metrics import BigramKN, precision, tokenize, truncate_to_budget
from gotd.lab.evaluation.run import task_sizes


def test_precision_counts_target_rows() -> None:
    is_target = np.array([True, False, True, False])
    assert precision([0, 2, 3], is_target) == pytest.approx(2 / 3)
    assert precision(np.array([1, 3]), is_target) == 0.0
    assert math.isnan(precision([], is_target))


def test_tokenize_matches_nltk_wordpunct() -> None:
    from nltk.tokenize import WordPunctTokenizer

    text = "Euler's identity, e^(iπ) + 1 = 0, is—famously—“beautiful”!! 3.14 naïve"
    assert tokenize(text) == WordPunctTokenizer().tokenize(text.lower())
    assert tokenize("Hello, world!!") == ["hello", ",", "world", "!!"]


def test_bigram_kneser_ney_matches_hand_computation() -> None:
    # Training "<s> a b </s>", "<s> a </s>"; V = {a, b, c, </s>}; D = 0.5.
    # Bigram types 4; continuation counts a:1, b:1, </s>:2 (3 types).
    # P1(a) = P1(b) = (1 - .5)/4 + .5*3/4/4 = .21875; P1(c) = .09375; P1(</s>) = .46875.
    lm = BigramKN(vocab_size=4, discount=0.5).fit([["a", "b"], ["a"]])
    assert lm.unigram("a") == pytest.approx(0.21875)
    assert lm.unigram("c") == pytest.approx(0.09375)
    assert lm.unigram("</s>") == pytest.approx(0.46875)
    p_a = (2 - 0.5) / 2 + 0.5 * 1 / 2 * 0.21875  # P(a | <s>)
    p_c = 0.5 * 2 / 2 * 0.09375  # P(c | a): unseen bigram, all mass from the backoff
    p_end = 0.46875  # P(</s> | c): c never a history
    assert lm.prob("<s>", "a") == pytest.approx(p_a)
    assert lm.prob("a", "c") == pytest.approx(p_c)
    assert lm.perplexity([["a", "c"]]) == pytest.approx((p_a * p_c * p_end) ** (-1 / 3))


@pytest.mark.parametrize("history", ["<s>", "a", "b", "c", "zzz"])
def test_bigram_distribution_sums_to_one(history: str) -> None:
    vocab = ["a", "b", "c", "d", "</s>"]
    lm = BigramKN(vocab_size=len(vocab)).fit([["a", "b", "a"], ["c", "a", "b"], ["b"]])
    assert sum(lm.prob(history, w) for w in vocab) == pytest.approx(1.0)


def test_untrained_bigram_is_uniform_and_vocab_is_checked() -> None:
    assert BigramKN(vocab_size=10).fit([]).perplexity([["x", "y"]]) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="vocab_size"):
        BigramKN(vocab_size=2).fit([["a", "b", "c"]])


def test_truncate_to_budget_keeps_rank_order_and_cuts_the_last_document() -> None:
    docs = [["a", "b", "c"], ["d", "e"], ["f"]]
    assert truncate_to_budget(docs, 4) == ([["a", "b", "c"], ["d"]], True)
    assert truncate_to_budget(docs, 5) == ([["a", "b", "c"], ["d", "e"]], False)
    assert truncate_to_budget(docs, 0) == ([], False)
    assert truncate_to_budget(docs, 100) == ([["a", "b", "c"], ["d", "e"], ["f"]], False)
    with pytest.raises(ValueError, match="budget"):
        truncate_to_budget(docs, -1)


def test_cut_document_has_no_end_marker() -> None:
    open_lm = BigramKN(vocab_size=3).fit([["a"]], open_last=True)
    closed_lm = BigramKN(vocab_size=3).fit([["a"]])
    assert open_lm.prob("a", "</s>") == pytest.approx(open_lm.unigram("</s>"))
    assert closed_lm.prob("a", "</s>") > open_lm.prob("a", "</s>")


def test_task_sizes() -> None:
    assert task_sizes(3000, (0.02, 0.05, 0.1)) == [60, 150, 300]
    assert task_sizes(10, (0.02,)) == [1]
    with pytest.raises(ValueError, match="fractions"):
        task_sizes(100, (0.0,))
