"""State: the worker's copy of the source tables, the join indexes over them, and how far in
each source partition that copy has read.

The join engine (``app.join``) reads and writes a :class:`SourceState`: one key -> row
store per declared source table and one reverse index per reference and hierarchy of the
declared graph (``app.graph``). Two implementations keep it:

* :class:`MemoryStore`: plain dicts; nothing survives the process (tests, and a worker that
  rebuilds its state from the compacted source topics at every start);
* :class:`RocksStore`: RocksDB (``rocksdict``) in the worker's data directory. Rows, index
  entries and source positions are written in one atomic batch per :meth:`commit`, so after
  any crash the store is a state the engine once had, together with the source position it
  had reached. A restart opens the store and reads only what is new: no changelog, no scan.

The state is materialized straight from the source topics (which the connector and
``viewsync stack up`` create compacted), never written to Kafka: the worker writes no second
copy of every source row.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import struct
from collections.abc import Collection, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Final, Protocol

from app.graph import Graph, Key, KeyType
from app.positions import Positions

log = logging.getLogger("viewsync.state")

#: One key -> row store of the state.
Store = MutableMapping[Key, dict[str, Any]]


class Index(Protocol):
    """A reverse index: referenced key -> keys of the rows that reference it."""

    def add(self, ref: Key, key: Key) -> None: ...

    def discard(self, ref: Key, key: Key) -> None: ...

    def get(self, ref: Key) -> Collection[Key]: ...

    def clear(self) -> None: ...

    def snapshot(self) -> dict[Key, frozenset[Key]]:
        """Every entry (for tests and diagnostics; reads the whole index)."""
        ...


class MemoryIndex:
    """:class:`Index` on a dict of sets."""

    def __init__(self) -> None:
        self._map: dict[Key, set[Key]] = {}

    def add(self, ref: Key, key: Key) -> None:
        self._map.setdefault(ref, set()).add(key)

    def discard(self, ref: Key, key: Key) -> None:
        keys = self._map.get(ref)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._map[ref]

    def get(self, ref: Key) -> Collection[Key]:
        return self._map.get(ref, ())

    def clear(self) -> None:
        self._map.clear()

    def snapshot(self) -> dict[Key, frozenset[Key]]:
        return {ref: frozenset(keys) for ref, keys in self._map.items()}


class SourceState:
    """The worker's copy of the declared source tables and the reverse indexes over them.

    Built from rows alone (``SourceState(graph, {"products": {...}})``), its indexes are
    computed from those rows; a persistent store passes indexes that it keeps itself.
    """

    def __init__(self, graph: Graph, tables: Mapping[str, Store] | None = None,
                 indexes: Mapping[str, Index] | None = None) -> None:
        self.graph = graph
        given = dict(tables or {})
        unknown = set(given) - set(graph.names)
        if unknown:
            raise ValueError(f"unknown source table(s): {sorted(unknown)}")
        self.tables: dict[str, Store] = {t: given.get(t, {}) for t in graph.names}
        if indexes is None:
            self.indexes: dict[str, Index] = {i: MemoryIndex() for i in graph.index_columns}
            self.rebuild_indexes()
        else:
            self.indexes = dict(indexes)

    def store(self, table: str) -> Store:
        """The store of ``table``."""
        try:
            return self.tables[table]
        except KeyError:
            raise ValueError(f"unknown source table: {table!r}") from None

    def rebuild_indexes(self) -> None:
        """Recompute every reverse index from the rows (reads every row)."""
        for name, (table, column) in self.graph.index_columns.items():
            index = self.indexes[name]
            index.clear()
            for key, row in self.store(table).items():
                ref = row.get(column)
                if ref is not None:
                    index.add(ref, key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SourceState):
            return NotImplemented
        return (self.graph.names == other.graph.names
                and all(dict(self.store(t)) == dict(other.store(t)) for t in self.graph.names))

    __hash__ = None  # type: ignore[assignment]


class StateStore(Protocol):
    """Where a :class:`SourceState` lives between batches, with its source positions."""

    state: SourceState

    def positions(self) -> Positions:
        """The source positions as of the last :meth:`commit` (empty for a new store)."""
        ...

    def commit(self, positions: Positions) -> None:
        """Make every change applied since the last commit durable, with ``positions``."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """:class:`StateStore` in plain dicts: nothing survives the process."""

    def __init__(self, graph: Graph) -> None:
        self.state = SourceState(graph)
        self._positions: Positions = {}

    def positions(self) -> Positions:
        return dict(self._positions)

    def commit(self, positions: Positions) -> None:
        self._positions.update(positions)

    def close(self) -> None:
        pass


# --- RocksDB ----------------------------------------------------------------------------------

#: Bumped when the on-disk layout changes. A store of another format, or kept for another
#: source graph (``Graph.fingerprint``), is emptied and rebuilt from the source topics.
STATE_FORMAT: Final = b"viewsync-state-3"
_META_FORMAT: Final = b"m:format"
_META_GRAPH: Final = b"m:graph"
_ROW: Final = b"r"
_IDX: Final = b"x"
_POS: Final = b"p"
_INT = struct.Struct(">q")
_LEN = struct.Struct(">H")
_DELETED: Final = object()


class _Keys:
    """The byte form of one key type: an integer as 8 big-endian bytes, a string as its
    UTF-8 bytes (``last``: the rest of a RocksDB key) or with a 2-byte length (inside)."""

    def __init__(self, key_type: KeyType) -> None:
        self.int = key_type == "int"

    def last(self, key: Key) -> bytes:
        if self.int:
            return _INT.pack(key)
        return str(key).encode()

    def inner(self, key: Key) -> bytes:
        if self.int:
            return _INT.pack(key)
        raw = str(key).encode()
        return _LEN.pack(len(raw)) + raw

    def from_last(self, raw: bytes) -> Key:
        return int(_INT.unpack(raw)[0]) if self.int else raw.decode()

    def from_inner(self, raw: bytes) -> tuple[Key, bytes]:
        """The key at the start of ``raw``, and what follows it."""
        if self.int:
            return int(_INT.unpack(raw[:8])[0]), raw[8:]
        (n,) = _LEN.unpack(raw[:2])
        return raw[2:2 + n].decode(), raw[2 + n:]

    def accepts(self, key: object) -> bool:
        return isinstance(key, int) if self.int else isinstance(key, str)


def _scan(db: Any, prefix: bytes) -> Iterator[tuple[bytes, Any]]:
    """Every (key, iterator) of ``db`` whose key starts with ``prefix``, in key order; the
    iterator's ``value()`` is the current entry's value."""
    it = db.iter()
    it.seek(prefix)
    while it.valid():
        k = it.key()
        if not k.startswith(prefix):
            return
        yield k, it
        it.next()


def _pos_key(topic: str, partition: int) -> bytes:
    return _POS + topic.encode() + b"\x00" + struct.pack(">i", partition)


class _RocksTable(MutableMapping[Key, dict[str, Any]]):
    """One table's rows: reads see the writes not yet committed (kept in ``pending``)."""

    def __init__(self, db: Any, table: str, key_type: KeyType) -> None:
        self._db = db
        self._prefix = _ROW + table.encode() + b"\x00"
        self._keys = _Keys(key_type)
        self.pending: dict[Key, Any] = {}

    def _k(self, key: Key) -> bytes:
        return self._prefix + self._keys.last(key)

    def get(self, key: Key, default: Any = None) -> Any:
        row = self.pending.get(key)
        if row is None:
            if not self._keys.accepts(key):
                return default
            raw = self._db.get(self._k(key))
            return default if raw is None else pickle.loads(raw)
        return default if row is _DELETED else row

    def __getitem__(self, key: Key) -> dict[str, Any]:
        row = self.get(key)
        if row is None:
            raise KeyError(key)
        return row  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int | str) and self.get(key) is not None

    def __setitem__(self, key: Key, row: dict[str, Any]) -> None:
        self.pending[key] = row

    def __delitem__(self, key: Key) -> None:
        self.pending[key] = _DELETED

    def _stored_keys(self) -> Iterator[Key]:
        n = len(self._prefix)
        for k, _it in _scan(self._db, self._prefix):
            yield self._keys.from_last(k[n:])

    def __iter__(self) -> Iterator[Key]:
        for key in self._stored_keys():
            if key not in self.pending:
                yield key
        for key, row in self.pending.items():
            if row is not _DELETED:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def flush(self, batch: Any) -> None:
        for key, row in self.pending.items():
            if row is _DELETED:
                batch.delete(self._k(key))
            else:
                batch.put(self._k(key), pickle.dumps(row, protocol=5))
        self.pending.clear()


class _RocksIndex:
    """:class:`Index` as one RocksDB key per entry (``prefix + ref + key``)."""

    def __init__(self, db: Any, index: str, ref_type: KeyType, key_type: KeyType) -> None:
        self._db = db
        self._prefix = _IDX + index.encode() + b"\x00"
        self._refs = _Keys(ref_type)
        self._keys = _Keys(key_type)
        self._pending: dict[Key, dict[Key, bool]] = {}  # ref -> key -> present

    def add(self, ref: Key, key: Key) -> None:
        self._pending.setdefault(ref, {})[key] = True

    def discard(self, ref: Key, key: Key) -> None:
        self._pending.setdefault(ref, {})[key] = False

    def _scan(self, prefix: bytes) -> Iterator[bytes]:
        return (k for k, _it in _scan(self._db, prefix))

    def get(self, ref: Key) -> Collection[Key]:
        keys: set[Key] = set()
        if self._refs.accepts(ref):
            prefix = self._prefix + self._refs.inner(ref)
            n = len(prefix)
            keys = {self._keys.from_last(k[n:]) for k in self._scan(prefix)}
        pending = self._pending.get(ref)
        if pending:
            for key, present in pending.items():
                if present:
                    keys.add(key)
                else:
                    keys.discard(key)
        return keys

    def clear(self) -> None:
        self._pending.clear()
        for k in list(self._scan(self._prefix)):
            self._db.delete(k)

    def snapshot(self) -> dict[Key, frozenset[Key]]:
        n = len(self._prefix)
        refs = {self._refs.from_inner(k[n:])[0] for k in self._scan(self._prefix)}
        refs |= set(self._pending)
        out = {ref: frozenset(self.get(ref)) for ref in refs}
        return {ref: keys for ref, keys in out.items() if keys}

    def flush(self, batch: Any) -> None:
        for ref, keys in self._pending.items():
            if not self._refs.accepts(ref):
                continue  # a reference of another type than the target's key: never found
            head = self._prefix + self._refs.inner(ref)
            for key, present in keys.items():
                if present:
                    batch.put(head + self._keys.last(key), b"")
                else:
                    batch.delete(head + self._keys.last(key))
        self._pending.clear()


class StateFormatError(Exception):
    """The data directory holds something that is not a viewsync state store."""


class RocksStore:
    """:class:`StateStore` in RocksDB at ``path`` (one directory per worker process).

    A store written by another version (another format) or for another source graph (a
    table, column or reference added to the views file) is emptied first: the worker then
    restores the state from the source topics (``app.restore``), which hold every row."""

    def __init__(self, path: Path, graph: Graph) -> None:
        from rocksdict import Options, Rdict

        path.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self._db = Rdict(str(path), opts)
        fmt, kept = self._db.get(_META_FORMAT), self._db.get(_META_GRAPH)
        wanted = graph.fingerprint().encode()
        if fmt is None:
            it = self._db.iter()
            it.seek_to_first()
            if it.valid():
                raise StateFormatError(f"{path} holds data of an unknown state format")
        elif fmt != STATE_FORMAT or kept != wanted:
            why = ("of another version" if fmt != STATE_FORMAT
                   else "for another source graph (the views file's [sources] changed)")
            log.warning("the state store in %s was written %s: it is emptied and rebuilt "
                        "from the source topics", path, why)
            self._db.close()
            shutil.rmtree(path)
            path.mkdir(parents=True)
            self._db = Rdict(str(path), opts)
        self._db.put(_META_FORMAT, STATE_FORMAT)
        self._db.put(_META_GRAPH, wanted)
        self._tables = {s.name: _RocksTable(self._db, s.name, s.key_type)
                        for s in graph.sources}
        self._indexes = {
            r.index: _RocksIndex(self._db, r.index, graph.source(r.target).key_type,
                                 graph.source(r.source).key_type)
            for r in graph.references}
        for h in graph.hierarchies:
            kt = graph.source(h.source).key_type
            self._indexes[h.index] = _RocksIndex(self._db, h.index, kt, kt)
        self.state = SourceState(graph, dict(self._tables), dict(self._indexes))

    def positions(self) -> Positions:
        out: Positions = {}
        for k, it in _scan(self._db, _POS):
            topic, partition = k[1:-5].decode(), struct.unpack(">i", k[-4:])[0]
            out[(topic, partition)] = _INT.unpack(it.value())[0]
        return out

    def commit(self, positions: Positions) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for table in self._tables.values():
            table.flush(batch)
        for index in self._indexes.values():
            index.flush(batch)
        for (topic, partition), offset in positions.items():
            batch.put(_pos_key(topic, partition), _INT.pack(offset))
        self._db.write(batch)

    def close(self) -> None:
        self._db.close()
