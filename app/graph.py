"""The declared source graph: the Product DB's tables, their keys, references and hierarchies.

Pure: no Kafka, no Faust, no SQL. What a team declares in the views file's ``[sources]``
tables (``app.views`` parses and validates it) is a small graph, and everything about the
source schema is derived from it — the decoder's contracts, the join state and its reverse
indexes, the fan-out of a change, column pruning, visibility, verify's queries:

* a :class:`Source` — one table, its primary key (one column, integer or string; a
  composite key is refused), the columns any view reads;
* a :class:`Reference` — many-to-one, with a name: ``column`` of the source names the key of
  ``target``; *required* (the row is visible only if it resolves to a visible row: SQL's
  inner join) or *optional* (NULL, dangling or invisible: every column reached through it is
  NULL — a LEFT JOIN of the whole branch);
* a :class:`Hierarchy` — a self-reference (``parent``) with *path* columns: a label column
  of every ancestor from the root down, joined by ``separator``. A row of a hierarchy is
  visible only if its path exists: every ancestor exists and the chain reaches a root (a
  NULL parent) without a cycle.

References between different tables must not form a cycle (a hierarchy is the only
self-reference), so visibility is well defined: a row is visible iff it exists, its path
exists (in a hierarchy) and every required reference resolves to a visible row.

Keys compare exactly: an integer as an integer, a string byte for byte (whatever the
source column's collation: MariaDB's default one equates ``acme`` and ``ACME``, viewsync
does not — two such keys are two rows).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

#: A source row's key: an integer or a string (compared exactly).
Key = int | str

KeyType = Literal["int", "string"]


@dataclass(frozen=True, slots=True)
class Reference:
    """``source.column`` names a key of ``target``; ``name`` is how a view follows it."""

    source: str
    name: str
    column: str
    target: str
    required: bool = True

    @property
    def index(self) -> str:
        """The name of its reverse index (target key -> keys of the referencing rows)."""
        return f"{self.source}.{self.name}"


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """A self-reference of ``source`` through ``parent``, and its path columns."""

    source: str
    parent: str
    separator: str
    #: Path name -> the label column it joins (root first).
    paths: Mapping[str, str]

    @property
    def index(self) -> str:
        """The name of its reverse index (parent key -> child keys); ``^`` keeps it apart
        from a reference's (``<table>.<name>``: a name cannot hold ``^``)."""
        return f"{self.source}^children"


@dataclass(frozen=True)
class Source:
    name: str
    key: str
    key_type: KeyType
    #: Every column the worker keeps of a row (the key, the references, what views read).
    columns: tuple[str, ...]
    references: tuple[Reference, ...] = ()
    hierarchy: Hierarchy | None = None

    def reference(self, name: str) -> Reference | None:
        for ref in self.references:
            if ref.name == name:
                return ref
        return None


@dataclass(frozen=True)
class Graph:
    """Every declared source, in declaration order."""

    sources: tuple[Source, ...]
    _by_name: dict[str, Source] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {s.name: s for s in self.sources})

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def source(self, name: str) -> Source:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no source table {name!r}") from None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sources)

    @cached_property
    def references(self) -> tuple[Reference, ...]:
        return tuple(r for s in self.sources for r in s.references)

    @cached_property
    def hierarchies(self) -> tuple[Hierarchy, ...]:
        return tuple(s.hierarchy for s in self.sources if s.hierarchy is not None)

    @cached_property
    def index_columns(self) -> dict[str, tuple[str, str]]:
        """Every reverse index: name -> (source table, referencing column)."""
        out = {r.index: (r.source, r.column) for r in self.references}
        out.update({h.index: (h.source, h.parent) for h in self.hierarchies})
        return out

    @cached_property
    def _referrers(self) -> dict[str, tuple[Reference, ...]]:
        out: dict[str, list[Reference]] = {s.name: [] for s in self.sources}
        for r in self.references:
            out[r.target].append(r)
        return {t: tuple(refs) for t, refs in out.items()}

    def referrers(self, target: str) -> tuple[Reference, ...]:
        """The references (of other tables) that point at ``target``."""
        return self._referrers[target]

    def fingerprint(self) -> str:
        """A stable text of everything the join state depends on (a state kept for another
        graph is rebuilt)."""
        parts = []
        for s in self.sources:
            refs = ";".join(f"{r.name}:{r.column}>{r.target}" for r in s.references)
            h = s.hierarchy
            hier = "" if h is None else f"{h.parent}"
            parts.append(f"{s.name}({s.key}:{s.key_type})[{','.join(s.columns)}]{{{refs}}}^{hier}")
        return "|".join(parts)

    def check_acyclic(self) -> None:
        """Raise ``ValueError`` when references between tables form a cycle."""
        state: dict[str, int] = {}  # 1: on the stack, 2: done

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                loop = [*trail[trail.index(name):], name]
                raise ValueError(f"references form a cycle: {' -> '.join(loop)} (only a "
                                 "hierarchy may refer to its own table)")
            state[name] = 1
            for r in self.source(name).references:
                visit(r.target, [*trail, name])
            state[name] = 2

        for s in self.sources:
            visit(s.name, [])


def shard_of(key: Key, shards: int) -> int:
    """The shard of a view row by its key: an integer modulo the shard count; a string by a
    stable hash of its UTF-8 bytes (CRC-32: the same in every process and version)."""
    if isinstance(key, int):
        return key % shards
    return zlib.crc32(key.encode("utf-8")) % shards


def walk(path: tuple[str, ...], start: Source, graph: Graph) -> Iterator[tuple[Source, Reference]]:
    """The references a column path follows from ``start`` (all but its last segment), with
    the source each starts from; raises ``ValueError`` naming the segment that is wrong."""
    current = start
    for hop in path[:-1]:
        ref = current.reference(hop)
        if ref is None:
            names = [r.name for r in current.references] or ["none"]
            raise ValueError(f"{current.name} has no reference {hop!r} (references: "
                             f"{', '.join(names)})")
        yield current, ref
        current = graph.source(ref.target)
