"""The near-copy walk's core: a greedy pass over a ranking that keeps the exact graph of near-copy pairs
among the rows it walked, and reuses such a graph from an earlier walk.

Rows are taken in rank order; a row is skipped when a row taken before it has a cosine similarity of
at least the threshold with it. Deciding that needs each walked row's near-copy pairs with the rows
walked before it: a walk with no earlier graph finds them with one GEMM per block of the ranking
against every row walked so far, and returns them as a :class:`CopyGraph`. A later walk over a
ranking that shares rows with it (the same target after the pool grew, a new exclusion set) is given
that graph: the pairs of two rows it knows are read from it, and only pairs with a row new to it go
through a GEMM, so that walk costs in proportion to the rows that are new.

Every pair is decided the same way on every path: the float32 GEMM proposes the pairs within a small
slack of the threshold, and each proposed pair's cosine is recomputed in float64 from the two float32
rows (exact products, one summation order). A walk with a graph and one without take and skip the
same rows and report the same cosines, whatever the block sizes.

Imports torch and numpy only (no storage, no wire).
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import torch

from gotd.server.selection.scratch import scratch
from gotd.server.selection.walked import CopyGraph, DistinctRanking

__all__ = ["CopyGraph", "DistinctRanking", "Walk"]

#: GEMM results within this of the threshold are recomputed exactly (float32 rounding of a unit-row
#: inner product is below 1e-6).
_SLACK = 1e-3
#: Walk positions multiplied per GEMM at most.
_COLUMNS = 1 << 16
#: Bytes of one block of float32 inner products, in scratch arrays reused from walk to walk
#: (:mod:`.scratch`: no fresh mapping faulted in per block, and few GEMMs, so few parallel regions):
#: the look-ahead of an incremental Select (a few hundred new rows x k walked rows) is one GEMM.
_PRODUCT_BYTES = 8 << 20
#: A walk keeps its graph while it has walked at most ``_GRAPH_RATIO * k + _GRAPH_SLACK`` rows: beyond,
#: (a pool where most candidates repeat, or a very low threshold) pairing every walked row would cost
#: O(walked^2), and the walk tests new rows against the rows taken only, as a walk without a graph.
_GRAPH_RATIO = 2
_GRAPH_SLACK = 4096


def _exact_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise inner products of float32 rows in float64: the same bits for the same two rows."""
    out: np.ndarray = (a.astype(np.float64) * b.astype(np.float64)).sum(axis=1)
    return out


class Walk:
    """A walk in progress: the rows walked (their float32 embeddings in one growing buffer), which
    were taken, the near-copy pairs found, and the skip records.

    ``vectors[vector_rows[row]]`` (``vectors[row]`` without ``vector_rows``) is a row's unit
    embedding; ``known``: the graph of an earlier walk over the same vectors. The walk's buffers are
    scratch arrays (:mod:`.scratch`) lent until ``scratch`` is closed; nothing the walk returns
    (:meth:`result`, :meth:`graph`) is a view of them.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        k: int,
        cosine: float,
        scratch: ExitStack,
        *,
        known: CopyGraph | None = None,
        vector_rows: np.ndarray | None = None,
    ) -> None:
        if known is not None and known.cosine != cosine:
            known = None
        self.vectors, self.vector_rows, self.known = vectors, vector_rows, known
        self.k, self.cosine, self.scratch = k, cosine, scratch
        cap = max(k, 1) + 1024
        self.buf = self._buffer(cap)
        self.node_rows = np.empty(cap, dtype=np.int64)
        self.taken_flag = np.zeros(cap, dtype=bool)
        self.unknown = np.zeros(cap, dtype=bool)
        self.pairs: list[np.ndarray] = []  # (p, 2) walk positions, earlier first
        self.pair_cos: list[np.ndarray] = []
        if known is not None:
            self.known_pos = np.full(len(known.rows), -1, dtype=np.int64)
            self.known_pairs = np.searchsorted(known.rows, known.pairs).reshape(-1, 2)
        self.taken: list[tuple[int, float]] = []
        self.skipped: list[tuple[int, int, float]] = []
        self.taken_at: list[int] = []
        self.skipped_at: list[int] = []
        self.position = 0
        self.keeps_graph = True
        self.ahead = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
        self.ahead_end = 0
        self.ahead_new = np.zeros(0, dtype=bool)

    def _buffer(self, rows: int) -> np.ndarray:
        """A scratch buffer for ``rows`` walked embeddings."""
        return self.scratch.enter_context(scratch((rows, self.vectors.shape[1]), np.float32))

    def _grow(self, need: int) -> None:
        if need <= len(self.node_rows):
            return
        cap = max(need, 2 * len(self.node_rows))
        buf = self._buffer(cap)
        buf[: self.position] = self.buf[: self.position]
        self.buf = buf
        for name in ("node_rows", "taken_flag", "unknown"):
            old = getattr(self, name)
            new = np.zeros(cap, dtype=old.dtype)
            new[: self.position] = old[: self.position]
            setattr(self, name, new)

    def _fill(self, start: int, rows: np.ndarray) -> None:
        """Put the embeddings of ``rows`` at walk positions ``start:``, gathered straight into the buffer
        (``clip``: no bounds check, so no staging copy; ranked rows are rows of ``vectors``)."""
        at = rows if self.vector_rows is None else self.vector_rows[rows]
        out = self.buf[start : start + len(rows)]
        if self.vectors.dtype == np.float32:
            np.take(self.vectors, at, axis=0, out=out, mode="clip")
        else:
            out[:] = self.vectors[at]

    def look_ahead(self, ranked: list[tuple[int, float]]) -> None:
        """With a known graph, before the blocks of ``ranked`` not walked yet: their pairs that the
        graph lacks, in one GEMM rather than one per block (each row new to the graph against every
        row of ``ranked``, each known row against the new rows before it).

        Up to the last row the graph knows, and only when at most half of those rows are new (for new
        rows, the blocks' triangle of products is half the square); past them, block by block.
        """
        start = self.ahead_end
        if self.known is None or not len(self.known.rows) or len(ranked) <= start or self.position != start:
            return
        rows = np.fromiter((r for r, _ in ranked[start:]), dtype=np.int64, count=len(ranked) - start)
        part_new = ~self._in_known(rows)[1]
        known_at = np.flatnonzero(~part_new)
        if not len(known_at):
            return
        cover = int(known_at[-1]) + 1  # past the last row the graph knows, the walk pairs by block
        rows, part_new = rows[:cover], part_new[:cover]
        if 2 * int(part_new.sum()) > cover:
            return
        end = start + cover
        is_new = np.concatenate([self.ahead_new, part_new])
        self._grow(end)
        self._fill(start, rows)
        new = start + np.flatnonzero(is_new[start:])
        i, x = self._candidates(new, np.arange(end))
        ok = (x != i) & ~(is_new[x] & (x >= start) & (x > i))  # a pair of two new rows: once
        a1, b1 = np.minimum(x[ok], i[ok]), np.maximum(x[ok], i[ok])
        i, x = self._candidates(start + np.flatnonzero(~is_new[start:]), np.flatnonzero(is_new[:start]))
        a_pos, b_pos, cos = self._exact(np.concatenate([a1, x]), np.concatenate([b1, i]))
        order = np.argsort(b_pos, kind="stable")  # every b >= start: the earlier pairs stay sorted
        old_a, old_b, old_cos = self.ahead
        self.ahead = (
            np.concatenate([old_a, a_pos[order]]),
            np.concatenate([old_b, b_pos[order]]),
            np.concatenate([old_cos, cos[order]]),
        )
        self.ahead_new, self.ahead_end = is_new, end

    def step(self, chunk: list[tuple[int, float]]) -> None:
        """Decide the next ranked rows (at most until ``k`` are taken)."""
        rows = np.fromiter((r for r, _ in chunk), dtype=np.int64, count=len(chunk))
        p0, b = self.position, len(rows)
        self._grow(p0 + b)
        if p0 + b > _GRAPH_RATIO * self.k + _GRAPH_SLACK:
            self.keeps_graph = False
        if p0 + b > self.ahead_end:  # inside, the look-ahead put the rows' vectors in place
            self._fill(p0, rows)
        self.node_rows[p0 : p0 + b] = rows
        is_known = self._mark_known(rows, p0)
        self.unknown[p0 : p0 + b] = ~is_known
        a_pos, b_pos, cos = self._pairs(p0, b, is_known)
        take = self._decide(p0, b, a_pos, b_pos)
        total = np.cumsum(take)
        done = len(self.taken)
        stop = b if total[-1] + done < self.k else int(np.searchsorted(total, self.k - done)) + 1
        inside = b_pos < p0 + stop
        a_pos, b_pos, cos = a_pos[inside], b_pos[inside], cos[inside]
        if self.known is not None and stop < b:
            self.known_pos[np.isin(self.known_pos, np.arange(p0 + stop, p0 + b))] = -1
        self.taken_flag[p0 : p0 + stop] = take[:stop]
        self._record(chunk, p0, stop, take, a_pos, b_pos, cos)
        self.pairs.append(np.stack([a_pos, b_pos], axis=1))
        self.pair_cos.append(cos)
        self.position = p0 + stop

    def _in_known(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each of ``rows``' index in the known graph's rows (clipped) and whether the graph holds it."""
        if self.known is None or not len(self.known.rows):
            return np.zeros(len(rows), dtype=np.int64), np.zeros(len(rows), dtype=bool)
        at = np.minimum(np.searchsorted(self.known.rows, rows), len(self.known.rows) - 1)
        held: np.ndarray = self.known.rows[at] == rows
        return at, held

    def _mark_known(self, rows: np.ndarray, p0: int) -> np.ndarray:
        """Which of ``rows`` the known graph holds (their walk positions noted)."""
        at, held = self._in_known(rows)
        if held.any():
            self.known_pos[at[held]] = p0 + np.flatnonzero(held)
        return held

    def _pairs(self, p0: int, b: int, is_known: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every near-copy pair (earlier position, chunk position, cosine) with its later row in the
        chunk that can decide the chunk, exactly decided.

        Keeping the graph: every pair among the rows walked (known-known pairs from the known graph,
        the others proposed by a GEMM). Past the graph's bound (``keeps_graph`` false): the pairs with a
        taken row or two chunk rows only, as a walk that keeps no graph needs.
        """
        end = p0 + b
        chunk = np.arange(p0, end)
        if end <= self.ahead_end:  # pairs with a new row found ahead; known-known pairs below
            a_pos, b_pos, cos = self.ahead
            lo, hi = np.searchsorted(b_pos, [p0, end])
            return self._with_known(p0, is_known, a_pos[lo:hi], b_pos[lo:hi], cos[lo:hi])
        if not self.keeps_graph:
            taken = np.flatnonzero(self.taken_flag[:p0])
            i, x = self._candidates(chunk, np.concatenate([taken, chunk]))
            ok = x < i
            return self._exact(x[ok], i[ok])
        found: list[tuple[np.ndarray, np.ndarray]] = []
        new = chunk[~is_known]
        if len(new):  # new rows against every walked row
            i, x = self._candidates(new, np.arange(end))
            twice = (x >= p0) & self.unknown[x] & (x > i)  # a pair of two new chunk rows: once
            ok = (x != i) & ~twice
            found.append((np.minimum(x[ok], i[ok]), np.maximum(x[ok], i[ok])))
        old = chunk[is_known]
        earlier_new = np.flatnonzero(self.unknown[:p0])
        if len(old) and len(earlier_new):  # known rows against the new rows walked before the chunk
            i, x = self._candidates(old, earlier_new)
            found.append((x, i))
        a_pos = np.concatenate([f[0] for f in found]) if found else np.zeros(0, dtype=np.int64)
        b_pos = np.concatenate([f[1] for f in found]) if found else np.zeros(0, dtype=np.int64)
        return self._with_known(p0, is_known, *self._exact(a_pos, b_pos))

    def _with_known(
        self, p0: int, is_known: np.ndarray, a_pos: np.ndarray, b_pos: np.ndarray, cos: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``a_pos, b_pos, cos`` and the known graph's pairs whose later row is in the chunk."""
        if self.known is None or not is_known.any() or not len(self.known_pairs):
            return a_pos, b_pos, cos
        pos = self.known_pos[self.known_pairs]
        sel = (pos >= 0).all(axis=1) & (pos.max(axis=1) >= p0)
        a_pos = np.concatenate([a_pos, pos[sel].min(axis=1)])
        b_pos = np.concatenate([b_pos, pos[sel].max(axis=1)])
        return a_pos, b_pos, np.concatenate([cos, self.known.cosines[sel]])

    def _candidates(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pairs ``(left[i], right[j])`` of walk positions whose float32 inner product is within the
        slack of the threshold (one GEMM per block of ``right`` of ``_PRODUCT_BYTES``, into scratch
        arrays, so memory stays bounded and off fresh pages)."""
        if not len(left) or not len(right):  # nothing to multiply: no gather of the other side either
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        lhs = torch.from_numpy(self.buf[left])
        got_l: list[np.ndarray] = []
        got_r: list[np.ndarray] = []
        width = min(len(right), _COLUMNS, max(64, _PRODUCT_BYTES // (4 * len(left))))
        with scratch((len(left) * width,), np.float32) as flat, scratch((len(left) * width,), bool) as hit:
            for start in range(0, len(right), width):
                cols = right[start : start + width]
                contiguous = cols[-1] - cols[0] + 1 == len(cols)
                rhs = self.buf[cols[0] : cols[-1] + 1] if contiguous else self.buf[cols]
                products = flat[: len(left) * len(cols)].reshape(len(left), len(cols))
                torch.mm(lhs, torch.from_numpy(rhs).T, out=torch.from_numpy(products))
                close = hit[: products.size].reshape(products.shape)
                i, x = np.nonzero(np.greater_equal(products, self.cosine - _SLACK, out=close))
                got_l.append(left[i])
                got_r.append(cols[x])
        return np.concatenate(got_l), np.concatenate(got_r)

    def _exact(self, a_pos: np.ndarray, b_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The proposed pairs whose exact cosine reaches the threshold, with it."""
        cos = _exact_cosines(self.buf[a_pos], self.buf[b_pos])
        close = cos >= self.cosine
        return a_pos[close], b_pos[close], cos[close]

    def _decide(self, p0: int, b: int, a_pos: np.ndarray, b_pos: np.ndarray) -> np.ndarray:
        """Which chunk rows are taken: no taken row before them within the threshold."""
        take = np.ones(b, dtype=bool)
        before = a_pos < p0
        take[b_pos[before & self.taken_flag[a_pos]] - p0] = False
        inner = np.flatnonzero(~before)
        if len(inner):
            order = inner[np.lexsort((a_pos[inner], b_pos[inner]))]
            j_of, i_of = (b_pos[order] - p0).tolist(), (a_pos[order] - p0).tolist()
            for j, i in zip(j_of, i_of, strict=True):  # ascending j: every i < j is final
                if take[i] and take[j]:
                    take[j] = False
        return take

    def _record(
        self,
        chunk: list[tuple[int, float]],
        p0: int,
        stop: int,
        take: np.ndarray,
        a_pos: np.ndarray,
        b_pos: np.ndarray,
        cos: np.ndarray,
    ) -> None:
        """Append the chunk's taken rows and skip records (each skipped row's most similar taken row,
        the best-ranked of equals)."""
        chosen = np.flatnonzero(take[:stop])
        self.taken.extend(chunk[j] for j in chosen.tolist())
        self.taken_at.extend((p0 + chosen).tolist())
        blocking = self.taken_flag[a_pos]
        a_t, b_t, c_t = a_pos[blocking], b_pos[blocking], cos[blocking]
        order = np.lexsort((a_t, -c_t, b_t))
        first = order[np.r_[True, b_t[order][1:] != b_t[order][:-1]]] if len(order) else order
        of_and_cos = zip(a_t[first].tolist(), c_t[first].tolist(), strict=True)
        best = dict(zip(b_t[first].tolist(), of_and_cos, strict=True))
        for j in np.flatnonzero(~take[:stop]).tolist():
            of, c = best[p0 + j]
            self.skipped.append((int(self.node_rows[p0 + j]), int(self.node_rows[of]), float(c)))
            self.skipped_at.append(p0 + j)

    def result(self, *, exhausted: bool) -> DistinctRanking:
        return DistinctRanking(
            self.taken,
            self.skipped,
            np.asarray(self.taken_at, dtype=np.int64),
            np.asarray(self.skipped_at, dtype=np.int64),
            exhausted,
        )

    def graph(self) -> CopyGraph | None:
        """The near-copy pairs among every row walked (rows named as the ranking named them); None when
        the walk stopped keeping them."""
        if not self.keeps_graph:
            return None
        n = self.position
        rows = self.node_rows[:n]
        pos = np.concatenate(self.pairs) if self.pairs else np.zeros((0, 2), dtype=np.int64)
        cos = np.concatenate(self.pair_cos) if self.pair_cos else np.zeros(0, dtype=np.float64)
        named = np.sort(rows[pos], axis=1) if len(pos) else pos.reshape(0, 2)
        order = np.argsort(rows, kind="stable")
        return CopyGraph(rows[order], named, cos, self.cosine)
