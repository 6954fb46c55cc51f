"""The sample order without memory: a keyed bijection of [0, n) per (seed, epoch), computed for any index alone.

A balanced Feistel network on ``2h`` bits (``4^h >= n``), 6 rounds whose round function mixes the right half with a
64-bit key (splitmix64's finalizer), is a permutation of [0, 4^h); cycle-walking (apply it again while the value is
>= n) restricts it to a permutation of [0, n). Every process, DataLoader worker and node computes the rows of the
global sample indices it needs from (seed, epoch, index) alone: O(1) memory, nothing to rebuild, resume needs only the
global sample index.
"""

from __future__ import annotations

import hashlib

import numpy as np

ROUNDS = 6
_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _C1
    x = (x ^ (x >> np.uint64(27))) * _C2
    return x ^ (x >> np.uint64(31))


def round_keys(seed: int, epoch: int) -> np.ndarray:
    h = hashlib.blake2b(f"mosaic-bert-order:{int(seed)}:{int(epoch)}".encode(), digest_size=8 * ROUNDS).digest()
    return np.frombuffer(h, dtype="<u8").astype(np.uint64)


def _feistel(x: np.ndarray, keys: np.ndarray, half: int) -> np.ndarray:
    mask, sh = np.uint64((1 << half) - 1), np.uint64(half)
    left, right = x >> sh, x & mask
    with np.errstate(over="ignore"):
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
    return (left << sh) | right


def permute(seed: int, epoch: int, n: int, i) -> np.ndarray:
    """Position ``i`` (array, 0 <= i < n) of the (seed, epoch) permutation of [0, n)."""
    i = np.asarray(i, dtype=np.int64)
    if n <= 0:
        raise ValueError("cannot order an empty split")
    if i.size and (i.min() < 0 or i.max() >= n):
        raise IndexError(f"positions out of range [0, {n})")
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    keys = round_keys(seed, epoch)
    y = _feistel(i.astype(np.uint64), keys, half)
    out_of_range = y >= np.uint64(n)
    while out_of_range.any():   # cycle-walk: < 4 applications on average
        y[out_of_range] = _feistel(y[out_of_range], keys, half)
        out_of_range = y >= np.uint64(n)
    return y.astype(np.int64)


def global_rows(seed: int, n: int, g) -> np.ndarray:
    """Rows for global sample indices ``g``: epoch ``g // n`` of the data, position ``g % n`` in its permutation."""
    g = np.asarray(g, dtype=np.int64)
    epochs = g // n
    out = np.empty_like(g)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = permute(seed, int(e), n, g[sel] % n)
    return out
