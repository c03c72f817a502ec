"""Server choice within one upstream: pure, no I/O.

Each balancer picks one position among ``candidates`` (the positions of the
servers that may take a request now: up, not yet tried for this request).
Weights are shares: a server of weight 3 gets three requests for each one a
server of weight 1 gets, interleaved, not in bursts.

* :class:`WeightedRoundRobin` is nginx's smooth weighted round robin
  (``ngx_http_upstream_get_peer``): every pick adds each candidate's weight
  to its running score, takes the highest, and subtracts the candidates'
  total from it.  Weights 5, 1, 1 give ``a a b a c a a``, never ``a a a a a``.
* :func:`least_loaded` picks the lowest load per weight (``load / weight``,
  compared without division), where the caller's load counts requests in
  flight *and* open WebSocket tunnels: a tunnel lasts hours, so a server with
  many of them is busy even when no request is in flight.  Ties go through
  the weighted round robin, so equal servers still alternate.
* :func:`rendezvous` is weighted rendezvous hashing (highest random weight):
  each server scores ``-weight / ln(h)`` for a hash ``h`` in (0, 1) of the key
  and the server's name, and the best score wins.  A key keeps its server
  while that server is up; when one goes down only its keys move, spread over
  the others by weight, and they come back when it does.  The hash is
  BLAKE2b, not Python's ``hash()``, so every replica and every restart maps a
  key the same way.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence


class WeightedRoundRobin:
    """Smooth weighted round robin over positions ``0 .. len(weights) - 1``."""

    __slots__ = ("_current", "weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = tuple(weights)
        self._current = [0] * len(self.weights)

    def pick(self, candidates: Sequence[int]) -> int:
        """The next position among ``candidates`` (not empty)."""
        weights = self.weights
        current = self._current
        best = -1
        total = 0
        for index in candidates:
            weight = weights[index]
            current[index] += weight
            total += weight
            if best < 0 or current[index] > current[best]:
                best = index
        current[best] -= total
        return best


def least_loaded(
    candidates: Sequence[int],
    loads: Sequence[int],
    weights: Sequence[int],
    rotation: WeightedRoundRobin,
) -> int:
    """The candidate with the lowest ``load / weight``; ties in weighted turn."""
    best: list[int] = []
    best_load = best_weight = 0
    for index in candidates:
        load, weight = loads[index], weights[index]
        if not best or load * best_weight < best_load * weight:
            best = [index]
            best_load, best_weight = load, weight
        elif load * best_weight == best_load * weight:
            best.append(index)
    return best[0] if len(best) == 1 else rotation.pick(best)


#: 2**64, to turn a 64-bit hash into a number in (0, 1).
_SPAN = float(1 << 64)


def rendezvous(
    candidates: Sequence[int], key: bytes, names: Sequence[bytes], weights: Sequence[int]
) -> int:
    """The candidate with the highest weighted score for ``key``."""
    best = -1
    best_score = 0.0
    for index in candidates:
        digest = hashlib.blake2b(names[index] + b"\0" + key, digest_size=8).digest()
        # (h + 1) / (2**64 + 1) lies strictly inside (0, 1): the log is negative.
        unit = (int.from_bytes(digest, "big") + 1) / (_SPAN + 1)
        score = -weights[index] / math.log(unit)
        if best < 0 or score > best_score:
            best, best_score = index, score
    return best
