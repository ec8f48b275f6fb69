"""Source positions and the arithmetic on them: how far behind, how many records to go.

A :data:`Positions` maps a source partition ``(topic, partition)`` to the next offset to
read (one past the last record reached). Lag, "records to go" and "has this state reached
that target" are computed here and nowhere else. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping

#: (topic, partition) -> next offset.
Positions = dict[tuple[str, int], int]


def reached(*positions: Mapping[tuple[str, int], int]) -> Positions:
    """The furthest of several positions, partition by partition (say, what a worker has
    written and what its state store already held)."""
    out: Positions = {}
    for p in positions:
        for tp, off in p.items():
            out[tp] = max(off, out.get(tp, off))
    return out


def lag(ends: Mapping[tuple[str, int], int], done: Mapping[tuple[str, int], int]
        ) -> Positions:
    """Per partition of ``ends``: the records between ``done`` and the end (never < 0)."""
    return {tp: max(0, end - done.get(tp, 0)) for tp, end in ends.items()}


def records_to_go(target: Mapping[tuple[str, int], int],
                  done: Mapping[tuple[str, int], int]) -> int:
    """Records between ``done`` and ``target``, summed over the partitions of ``target``."""
    return sum(lag(target, done).values())


def behind(done: Mapping[tuple[str, int], int], target: Mapping[tuple[str, int], int]) -> bool:
    """Whether ``done`` has not reached ``target`` in some partition."""
    return any(done.get(tp, 0) < off for tp, off in target.items())
