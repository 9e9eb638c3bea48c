"""The uni- and bigrams of a batch of texts and their ``xxh3_64`` hashes, computed in numpy.

The sketches (:mod:`gotd.server.selection.sketches`) hash every n-gram of every text with
``xxh3_64`` (seed 0). One Python call per n-gram and one Python string per token bound ingest, so
this module does both steps over whole arrays, with results identical to the text-by-text
definition (:func:`gotd.server.selection.sketches.ngrams` and ``xxhash.xxh3_64_intdigest``):

- *Tokens.* ``\\w+|[^\\w\\s]+`` over a lower-cased text finds the maximal runs of word characters and
  the maximal runs of characters that are neither word nor space. Each code point gets its class from
  a table (``\\w`` is ``str.isalnum()`` or ``_``, ``\\s`` is ``str.isspace()``, exactly the predicates of
  :mod:`re` for ``str`` patterns; a test checks the table against the pattern for every code point),
  and tokens are the runs of equal non-space classes.
- *n-gram bytes.* The UTF-8 bytes of the tokens are gathered into one buffer with a single space
  after each token, so a unigram and the bigram ``"first second"`` are both slices of it.
- *Hash.* ``xxh3_64`` of a slice up to 128 bytes long is computed with uint64 array arithmetic (the
  short-input paths of XXH3: 1-3, 4-8, 9-16 and 17-128 bytes; the 64x64 to 128-bit multiply from
  32-bit halves); longer slices, rare in text, are hashed by ``xxhash`` one by one.

Reference: Y. Collet, "xxHash: XXH3 algorithm", xxHash 0.8 (https://github.com/Cyan4973/xxHash).
"""

from __future__ import annotations

import threading

import numpy as np
import xxhash

from gotd.cache.sketch_rows import ranges

__all__ = ["batch_ngram_hashes", "char_classes", "xxh3_slices"]

_U64 = np.uint64
_M32 = _U64(0xFFFFFFFF)
_PRIME64_1 = _U64(0x9E3779B185EBCA87)
_PRIME64_2 = _U64(0xC2B2AE3D27D4EB4F)
_PRIME64_3 = _U64(0x165667B19E3779F9)
_PRIME_MX1 = _U64(0x165667919E3779F9)
_PRIME_MX2 = _U64(0x9FB21C651E98DF25)
_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
_LONGEST = 128  # longer slices are hashed by xxhash itself
_PAD = 16  # zero bytes after a buffer, so that an 8-byte read at any offset stays inside it
_WORD, _PUNCT = 1, 2  # character classes (0: space)
_PLANE = 1 << 16
_CHUNK = 1 << 14  # slices hashed per pass (each uint64 temporary: 128 KiB)


def _secret64(offset: int) -> np.uint64:
    return _U64(int.from_bytes(_SECRET[offset : offset + 8], "little"))


def _secret32(offset: int) -> int:
    return int.from_bytes(_SECRET[offset : offset + 4], "little")


_FLIP_1TO3 = _U64(_secret32(0) ^ _secret32(4))
_FLIP_4TO8 = _secret64(8) ^ _secret64(16)
_FLIP_9TO16 = (_secret64(24) ^ _secret64(32), _secret64(40) ^ _secret64(48))


def _shr(x: np.ndarray, n: int) -> np.ndarray:
    out: np.ndarray = x >> _U64(n)
    return out


def _rotl(x: np.ndarray, n: int) -> np.ndarray:
    out: np.ndarray = (x << _U64(n)) | (x >> _U64(64 - n))
    return out


def _fold(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Low xor high 64 bits of the 128-bit products ``a * b`` (XXH3_mul128_fold64), from 32-bit halves."""
    a_lo, a_hi, b_lo, b_hi = a & _M32, _shr(a, 32), b & _M32, _shr(b, 32)
    lo_lo, hi_lo, lo_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi
    cross = _shr(lo_lo, 32) + (hi_lo & _M32) + lo_hi  # < 2**64: no carry is lost
    high = a_hi * b_hi + _shr(hi_lo, 32) + _shr(cross, 32)
    out: np.ndarray = ((cross << _U64(32)) | (lo_lo & _M32)) ^ high
    return out


def _avalanche(h: np.ndarray) -> np.ndarray:
    h = (h ^ _shr(h, 37)) * _PRIME_MX1
    out: np.ndarray = h ^ _shr(h, 32)
    return out


def _xxh64_avalanche(h: np.ndarray) -> np.ndarray:
    h = (h ^ _shr(h, 33)) * _PRIME64_2
    h = (h ^ _shr(h, 29)) * _PRIME64_3
    out: np.ndarray = h ^ _shr(h, 32)
    return out


def _rrmxmx(h: np.ndarray, length: np.ndarray) -> np.ndarray:
    h = (h ^ _rotl(h, 49) ^ _rotl(h, 24)) * _PRIME_MX2
    h = (h ^ (_shr(h, 35) + length)) * _PRIME_MX2
    out: np.ndarray = h ^ _shr(h, 28)
    return out


def _words(buf: np.ndarray) -> np.ndarray:
    """``w[i]`` = the little-endian uint64 of ``buf[i : i + 8]`` (a strided view, no copy; ``buf`` ends
    with at least 8 bytes of padding)."""
    view: np.ndarray = np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))
    return view


def _mix16(words: np.ndarray, at: np.ndarray, secret: int) -> np.ndarray:
    """XXH3_mix16B of the 16 bytes at ``at`` with the secret at ``secret`` (seed 0)."""
    return _fold(words[at] ^ _secret64(secret), words[at + 8] ^ _secret64(secret + 8))


def xxh3_slices(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """``xxh3_64(buf[start[i] : start[i] + length[i]], seed=0)`` for every ``i``, uint64.

    The slices are ordered by length (a radix sort of the clipped lengths), so that each of XXH3's
    short-input paths runs over one contiguous run of them, in chunks that keep the temporaries in
    the cache.

    Parameters
    ----------
    buf : numpy.ndarray, shape (size + 16,), uint8
        The bytes, followed by at least 16 bytes of padding (any value).
    start, length : numpy.ndarray, shape (n,), int64
        The slices; lengths >= 1.

    Returns
    -------
    numpy.ndarray, shape (n,), uint64
    """
    out = np.empty(len(start), dtype=np.uint64)
    words = _words(buf)
    order = np.argsort(np.minimum(length, _LONGEST + 1).astype(np.uint8), kind="stable")
    edges = np.searchsorted(length[order], [1, 4, 9, 17, _LONGEST + 1, np.iinfo(np.int64).max])
    for path, lo, hi in zip(_PATHS, edges[:-2], edges[1:-1], strict=True):
        for at in range(int(lo), int(hi), _CHUNK):
            part = order[at : min(int(hi), at + _CHUNK)]
            out[part] = path(buf, words, start[part], length[part])
    for i in order[edges[-2] :].tolist():
        out[i] = xxhash.xxh3_64_intdigest(buf[start[i] : start[i] + length[i]].tobytes())
    return out


def _len_1to3(buf: np.ndarray, _words: np.ndarray, s: np.ndarray, n: np.ndarray) -> np.ndarray:
    combined = (
        (buf[s].astype(np.uint64) << _U64(16))
        | (buf[s + (n >> 1)].astype(np.uint64) << _U64(24))
        | buf[s + n - 1].astype(np.uint64)
        | (n.astype(np.uint64) << _U64(8))
    )
    return _xxh64_avalanche(combined ^ _FLIP_1TO3)


def _len_4to8(_buf: np.ndarray, words: np.ndarray, s: np.ndarray, n: np.ndarray) -> np.ndarray:
    joined = (words[s + n - 4] & _M32) + ((words[s] & _M32) << _U64(32))
    return _rrmxmx(joined ^ _FLIP_4TO8, n.astype(np.uint64))


def _len_9to16(_buf: np.ndarray, words: np.ndarray, s: np.ndarray, n: np.ndarray) -> np.ndarray:
    lo, hi = words[s] ^ _FLIP_9TO16[0], words[s + n - 8] ^ _FLIP_9TO16[1]
    return _avalanche(n.astype(np.uint64) + lo.byteswap() + hi + _fold(lo, hi))


def _len_17to128(_buf: np.ndarray, words: np.ndarray, s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """XXH3_len_17to128_64b: pairs of 16-byte mixes from both ends, one more pair per 32 bytes past
    32 (``n`` ascending, so the slices of each round are a suffix)."""
    acc = n.astype(np.uint64) * _PRIME64_1
    for i in range(4):
        first = int(np.searchsorted(n, 32 * i, side="right")) if i else 0
        if first == len(n):
            break
        at, size = s[first:], n[first:]
        head = _mix16(words, at + 16 * i, 32 * i)
        acc[first:] += head + _mix16(words, at + size - 16 * (i + 1), 32 * i + 16)
    return _avalanche(acc)


_PATHS = (_len_1to3, _len_4to8, _len_9to16, _len_17to128)


class _Classes:
    """Character class (0 space, 1 word, 2 other) per code point, built a 65,536-code-point plane at a
    time when a text first needs it (under a lock: concurrent ingests share it; a reader keeps the
    table it looked up, which only ever grows)."""

    def __init__(self) -> None:
        self.table = np.zeros(0, dtype=np.uint8)
        self._grow = threading.Lock()

    def of(self, points: np.ndarray) -> np.ndarray:
        top = int(points.max()) if len(points) else 0
        table = self.table
        if len(table) <= top:
            with self._grow:
                table = self.table
                while len(table) <= top:
                    table = np.concatenate([table, _plane(len(table) // _PLANE)])
                self.table = table
        found: np.ndarray = table[points]
        return found


def _plane(plane: int) -> np.ndarray:
    chars = [chr(c) for c in range(plane * _PLANE, (plane + 1) * _PLANE)]
    word = np.fromiter((c.isalnum() or c == "_" for c in chars), dtype=bool, count=_PLANE)
    space = np.fromiter((c.isspace() for c in chars), dtype=bool, count=_PLANE)
    return np.where(word, _WORD, np.where(space, 0, _PUNCT)).astype(np.uint8)


_CLASSES = _Classes()


def char_classes(points: np.ndarray) -> np.ndarray:
    """Class of each code point: 0 for ``\\s``, 1 for ``\\w``, 2 for anything else (uint8)."""
    return _CLASSES.of(points)


def batch_ngram_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(text index, xxh3_64)`` of every uni- and bigram occurrence of the lower-cased ``texts``.

    The n-grams are those of :func:`gotd.server.selection.sketches.ngrams` (``order=2``): tokens of
    ``\\w+|[^\\w\\s]+`` and each pair of adjacent tokens of a text joined by one space, unigrams of the
    batch first, then its bigrams.

    Returns
    -------
    tuple of numpy.ndarray
        Owners (int64) and hashes (uint64), one per n-gram occurrence.

    Raises
    ------
    UnicodeEncodeError
        A text holds a lone surrogate (as ``str.encode`` does for the text-by-text hashes).
    """
    lowered = [text.lower() for text in texts]
    joined = " ".join(lowered)  # a space ends every token, so no token spans two texts
    raw = joined.encode("utf-8")
    points = np.frombuffer(joined.encode("utf-32-le"), dtype="<u4")
    classes = char_classes(points)
    change = np.ones(len(points), dtype=bool)
    np.not_equal(classes[1:], classes[:-1], out=change[1:])
    runs = np.flatnonzero(change)
    ends = np.append(runs[1:], len(points))
    token = classes[runs] != 0
    first, last = runs[token], ends[token]
    data = np.frombuffer(raw, dtype=np.uint8)
    if len(raw) == len(points):  # ASCII: code point offsets are byte offsets
        byte_first, size = first, last - first
    else:  # the byte where each code point starts: any byte but a continuation byte 0b10xxxxxx
        offsets = np.append(np.flatnonzero((data & 0xC0) != 0x80), len(raw))
        byte_first = offsets[first]
        size = offsets[last] - byte_first
    text_first = np.zeros(len(lowered), dtype=np.int64)
    np.cumsum([len(text) + 1 for text in lowered[:-1]], out=text_first[1:])
    owner = np.searchsorted(text_first, first, side="right") - 1
    pair = np.flatnonzero(owner[:-1] == owner[1:])
    buf, pair_at = _bigram_bytes(data, byte_first, size, pair)
    starts = np.concatenate([byte_first, pair_at])
    lengths = np.concatenate([size, size[pair] + 1 + size[pair + 1]])
    owners = np.concatenate([owner, owner[pair]])
    return owners, xxh3_slices(buf, starts, lengths)


def _bigram_bytes(
    raw: np.ndarray, first: np.ndarray, size: np.ndarray, pair: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A padded buffer holding ``raw`` and the bytes of every bigram ``pair[i]`` (token ``pair[i]``, a
    space, token ``pair[i] + 1``), and the offset of each bigram in it.

    Where one space byte separates the two tokens in ``raw``, the bigram is already a slice of it;
    the others (no gap, as in ``word,``, or other white space) are copied after ``raw``.
    """
    end = first[pair] + size[pair]
    padded = np.concatenate([raw, np.zeros(1, dtype=np.uint8)])  # the byte after the last token
    spaced = (first[pair + 1] == end + 1) & (padded[end] == 0x20)
    copy = pair[~spaced]
    step = size[copy] + 1 + size[copy + 1]
    at = np.zeros(len(copy), dtype=np.int64)
    np.cumsum(step[:-1], out=at[1:])
    total = int(step.sum())
    second = at + size[copy] + 1  # where the second token goes
    source = np.arange(total, dtype=np.int64)
    source += np.repeat(first[copy] - at, step)
    tail = np.repeat(first[copy + 1] - first[copy] - size[copy] - 1, size[copy + 1])
    source[ranges(second, size[copy + 1])] += tail
    buf = np.zeros(len(raw) + _PAD + total + _PAD, dtype=np.uint8)
    buf[: len(raw)] = raw
    extra = buf[len(raw) + _PAD : len(raw) + _PAD + total]
    extra[:] = padded[source]
    extra[second - 1] = 0x20
    pair_at = first[pair]
    pair_at[~spaced] = len(raw) + _PAD + at
    return buf, pair_at
