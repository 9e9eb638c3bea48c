"""Quality metrics of a selection: label precision, held-out bigram perplexity, OT distance, tokens.

The bigram language model is a cheap proxy for "warming up fine-tuning": trained on the selected
texts, scored on held-out texts of the target label. It is interpolated Kneser-Ney (Chen & Goodman,
1999) with one absolute discount per order, interpolated down to a uniform distribution over a fixed
vocabulary shared by every method of a task, so perplexities of different selections are comparable
and an unseen held-out word never has probability zero.

References
----------
.. [1] S. F. Chen and J. Goodman, "An Empirical Study of Smoothing Techniques for Language
   Modeling", Harvard TR-10-98, 1998 (interpolated Kneser-Ney).
.. [2] R. Kneser and H. Ney, "Improved backing-off for M-gram language modeling", ICASSP 1995.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gotd.server.ot.sinkhorn import sinkhorn

__all__ = [
    "BOS",
    "EOS",
    "BigramKN",
    "OTDistance",
    "count_tokens",
    "ot_distance",
    "precision",
    "tokenize",
    "truncate_to_budget",
]

BOS = "<s>"
EOS = "</s>"
#: The pattern of NLTK's WordPunctTokenizer (runs of word characters, runs of punctuation).
_TOKEN = re.compile(r"\w+|[^\w\s]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word-punct tokens: ``\\w+|[^\\w\\s]+`` (NLTK's WordPunctTokenizer pattern)."""
    return _TOKEN.findall(text.lower())


def count_tokens(docs: Iterable[Sequence[str]]) -> int:
    """Total number of tokens of tokenised documents (sentence markers not counted)."""
    return sum(len(d) for d in docs)


def precision(selected: Sequence[int] | np.ndarray, is_target: np.ndarray) -> float:
    """Fraction of selected pool rows whose label is the target label.

    Parameters
    ----------
    selected : sequence of int
        Pool rows.
    is_target : numpy.ndarray of bool, shape (n,)
        Label indicator of every pool row.

    Returns
    -------
    float
        In [0, 1]; NaN for an empty selection.
    """
    rows = np.asarray(selected, dtype=np.int64)
    if rows.size == 0:
        return math.nan
    return float(np.asarray(is_target, dtype=bool)[rows].mean())


def truncate_to_budget(docs: Sequence[Sequence[str]], budget: int) -> tuple[list[list[str]], bool]:
    """The first ``budget`` tokens of ranked documents, whole documents first, the last one cut.

    Parameters
    ----------
    docs : sequence of token lists
        Selected documents in rank order.
    budget : int
        Token budget (>= 0).

    Returns
    -------
    docs : list of list of str
        A prefix of ``docs`` whose token count is ``min(budget, total)``.
    cut : bool
        True when the last returned document is a strict prefix of itself (train it with
        ``BigramKN.fit(docs, open_last=True)``: a cut document has no end-of-sentence).
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    out: list[list[str]] = []
    left, cut = budget, False
    for doc in docs:
        if left <= 0:
            break
        out.append(list(doc[:left]))
        cut = len(doc) > left
        left -= len(out[-1])
    return out, cut


@dataclass(slots=True)
class BigramKN:
    """Interpolated Kneser-Ney bigram model over a fixed vocabulary.

    .. math::

        P(w \\mid v) &= \\frac{\\max(c(v w) - D, 0)}{c(v)} + \\frac{D\\,N_{1+}(v\\,\\bullet)}{c(v)}
            P_1(w) \\quad (c(v) > 0;\\ P_1(w) \\text{ otherwise}) \\\\
        P_1(w) &= \\frac{\\max(N_{1+}(\\bullet\\,w) - D, 0)}{N_{1+}(\\bullet\\bullet)}
            + \\frac{D\\,|\\{w: N_{1+}(\\bullet\\,w) > 0\\}|}{N_{1+}(\\bullet\\bullet)}\\,\\frac{1}{V}

    where :math:`c(v) = \\sum_w c(v w)`, :math:`N_{1+}` counts distinct bigram types, and ``V`` is the
    size of the prediction vocabulary (words and ``</s>``). An untrained model is uniform, ``1/V``.

    Parameters
    ----------
    vocab_size : int
        ``V``: distinct words of every text a task can score, plus one for ``</s>``.
    discount : float
        Absolute discount ``D`` in (0, 1), the same for both orders (Chen & Goodman's default 0.75).
    """

    vocab_size: int
    discount: float = 0.75
    _bigrams: Counter[tuple[str, str]] | None = None
    _history: Counter[str] | None = None
    _followers: Counter[str] | None = None
    _continuation: Counter[str] | None = None
    _types: int = 0

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        if not 0 < self.discount < 1:
            raise ValueError(f"discount must be in (0, 1), got {self.discount}")

    def fit(self, docs: Sequence[Sequence[str]], *, open_last: bool = False) -> BigramKN:
        """Count the bigrams of ``<s> w1 .. wn </s>`` of every document; returns ``self``.

        With ``open_last`` the last document gets no ``</s>`` (it was cut by
        :func:`truncate_to_budget`, so its true end is unknown).
        """
        bigrams: Counter[tuple[str, str]] = Counter()
        for i, doc in enumerate(docs):
            seq = [BOS, *doc] if open_last and i == len(docs) - 1 else [BOS, *doc, EOS]
            bigrams.update(itertools.pairwise(seq))
        history: Counter[str] = Counter()
        followers: Counter[str] = Counter()
        continuation: Counter[str] = Counter()
        for (v, w), c in bigrams.items():
            history[v] += c
            followers[v] += 1
            continuation[w] += 1
        if len(continuation) > self.vocab_size:
            raise ValueError(f"{len(continuation)} word types seen, more than vocab_size {self.vocab_size}")
        self._bigrams, self._history, self._followers = bigrams, history, followers
        self._continuation, self._types = continuation, len(bigrams)
        return self

    def unigram(self, w: str) -> float:
        """The lower-order (continuation) probability :math:`P_1(w)`."""
        if not self._types or self._continuation is None:
            return 1.0 / self.vocab_size
        d, total = self.discount, self._types
        seen = max(self._continuation[w] - d, 0.0) / total
        return seen + d * len(self._continuation) / total / self.vocab_size

    def prob(self, v: str, w: str) -> float:
        """:math:`P(w \\mid v)`."""
        p1 = self.unigram(w)
        if self._history is None or self._bigrams is None or self._followers is None:
            return p1
        cv = self._history[v]
        if cv == 0:
            return p1
        d = self.discount
        return max(self._bigrams[v, w] - d, 0.0) / cv + d * self._followers[v] / cv * p1

    def perplexity(self, docs: Iterable[Sequence[str]]) -> float:
        """Perplexity of ``docs``: :math:`\\exp(-\\frac1N\\sum \\log P(w_i \\mid w_{i-1}))`.

        The sum runs over every word and the ``</s>`` of each document (``N`` terms).
        """
        total, n = 0.0, 0
        for doc in docs:
            seq = [BOS, *doc, EOS]
            for v, w in itertools.pairwise(seq):
                total += math.log(self.prob(v, w))
                n += 1
        if n == 0:
            raise ValueError("perplexity of an empty evaluation set")
        return math.exp(-total / n)


@dataclass(frozen=True, slots=True)
class OTDistance:
    """Entropic OT cost between a selection and the held-out targets, with the solver's account."""

    value: float
    converged: bool
    n_iter: int


def ot_distance(x: np.ndarray, y: np.ndarray, *, eps: float, tol: float = 1e-4) -> OTDistance:
    """Entropic OT cost :math:`\\langle a, f\\rangle + \\langle b, g\\rangle` (uniform weights, squared L2).

    Parameters
    ----------
    x : numpy.ndarray, shape (n, d)
        Selected embeddings.
    y : numpy.ndarray, shape (m, d)
        Held-out target embeddings.
    eps : float
        Regularisation (the selection's).
    tol : float
        L1 marginal error at which Sinkhorn stops.
    """
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    result = sinkhorn(xt, yt, eps=eps, tol=tol, max_iter=5000)
    return OTDistance(value=result.cost, converged=result.converged, n_iter=result.n_iter)
