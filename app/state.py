"""State: the worker's copy of the source tables, the join indexes over them, and how far in
each source partition that copy has read.

The join engine (``app.join``) reads and writes a :class:`SourceState`: four key -> row
stores and the reverse indexes of the foreign keys the views follow. Two implementations
keep it:

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

import pickle
import struct
from collections.abc import Collection, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from app.changes import SOURCE_TABLES, SourceTable
from app.positions import Positions

#: One key -> row store of the state.
Store = MutableMapping[int, dict[str, Any]]

#: Index names.
CHILDREN: Final = "category_children"
CATEGORY_PRODUCTS: Final = "category_products"
WARRANTY_PRODUCTS: Final = "warranty_products"
PRODUCT_BATCHES: Final = "product_batches"


@dataclass(frozen=True, slots=True)
class ForeignKey:
    """A reference ``table.column -> <referenced table>.id`` kept as the reverse index ``index``."""

    table: SourceTable
    column: str
    index: str


#: Every reference the views follow, one reverse index each.
FOREIGN_KEYS: Final[tuple[ForeignKey, ...]] = (
    ForeignKey("categories", "parent_id", CHILDREN),
    ForeignKey("products", "category_id", CATEGORY_PRODUCTS),
    ForeignKey("products", "warranty_type_id", WARRANTY_PRODUCTS),
    ForeignKey("batches", "product_id", PRODUCT_BATCHES),
)


class Index(Protocol):
    """A reverse index: referenced id -> ids of the rows that reference it."""

    def add(self, ref: int, key: int) -> None: ...

    def discard(self, ref: int, key: int) -> None: ...

    def get(self, ref: int) -> Collection[int]: ...

    def clear(self) -> None: ...

    def snapshot(self) -> dict[int, frozenset[int]]:
        """Every entry (for tests and diagnostics; reads the whole index)."""
        ...


class MemoryIndex:
    """:class:`Index` on a dict of sets."""

    def __init__(self) -> None:
        self._map: dict[int, set[int]] = {}

    def add(self, ref: int, key: int) -> None:
        self._map.setdefault(ref, set()).add(key)

    def discard(self, ref: int, key: int) -> None:
        keys = self._map.get(ref)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._map[ref]

    def get(self, ref: int) -> Collection[int]:
        return self._map.get(ref, ())

    def clear(self) -> None:
        self._map.clear()

    def snapshot(self) -> dict[int, frozenset[int]]:
        return {ref: frozenset(keys) for ref, keys in self._map.items()}


def _empty_store() -> Store:
    return {}


def _memory_indexes() -> dict[str, Index]:
    return {fk.index: MemoryIndex() for fk in FOREIGN_KEYS}


@dataclass
class SourceState:
    """The worker's copy of the four source tables and the reverse indexes over them.

    Built from rows alone (``SourceState(products={...})``), its indexes are computed from
    those rows; a persistent store passes indexes that it keeps itself.
    """

    categories: Store = field(default_factory=_empty_store)
    warranty_types: Store = field(default_factory=_empty_store)
    products: Store = field(default_factory=_empty_store)
    batches: Store = field(default_factory=_empty_store)
    indexes: dict[str, Index] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.indexes:
            self.indexes = _memory_indexes()
            self.rebuild_indexes()

    def store(self, table: SourceTable) -> Store:
        """The store of ``table``."""
        if table == "categories":
            return self.categories
        if table == "warranty_types":
            return self.warranty_types
        if table == "products":
            return self.products
        if table == "batches":
            return self.batches
        raise ValueError(f"unknown source table: {table!r}")

    def rebuild_indexes(self) -> None:
        """Recompute every reverse index from the rows (reads every row)."""
        for fk in FOREIGN_KEYS:
            index = self.indexes[fk.index]
            index.clear()
            for key, row in self.store(fk.table).items():
                ref = row.get(fk.column)
                if ref is not None:
                    index.add(ref, key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SourceState):
            return NotImplemented
        return all(dict(self.store(t)) == dict(other.store(t)) for t in SOURCE_TABLES)


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

    def __init__(self) -> None:
        self.state = SourceState()
        self._positions: Positions = {}

    def positions(self) -> Positions:
        return dict(self._positions)

    def commit(self, positions: Positions) -> None:
        self._positions.update(positions)

    def close(self) -> None:
        pass


# --- RocksDB ----------------------------------------------------------------------------------

#: Bumped when the on-disk layout changes; a store of another format is refused.
STATE_FORMAT: Final = b"viewsync-state-2"
_META_FORMAT: Final = b"m:format"
_ROW: Final = b"r"
_IDX: Final = b"x"
_POS: Final = b"p"
_KEY = struct.Struct(">q")
_DELETED: Final = object()


def _row_prefix(table: SourceTable) -> bytes:
    return _ROW + bytes((SOURCE_TABLES.index(table),))


def _index_prefix(index: str) -> bytes:
    return _IDX + bytes(([fk.index for fk in FOREIGN_KEYS].index(index),))


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


class _RocksTable(MutableMapping[int, dict[str, Any]]):
    """One table's rows: reads see the writes not yet committed (kept in ``pending``)."""

    def __init__(self, db: Any, table: SourceTable) -> None:
        self._db = db
        self._prefix = _row_prefix(table)
        self.pending: dict[int, Any] = {}

    def _k(self, key: int) -> bytes:
        return self._prefix + _KEY.pack(key)

    def get(self, key: int, default: Any = None) -> Any:
        row = self.pending.get(key)
        if row is None:
            raw = self._db.get(self._prefix + _KEY.pack(key))
            return default if raw is None else pickle.loads(raw)
        return default if row is _DELETED else row

    def __getitem__(self, key: int) -> dict[str, Any]:
        row = self.get(key)
        if row is None:
            raise KeyError(key)
        return row  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.get(key) is not None

    def __setitem__(self, key: int, row: dict[str, Any]) -> None:
        self.pending[key] = row

    def __delitem__(self, key: int) -> None:
        self.pending[key] = _DELETED

    def _stored_keys(self) -> Iterator[int]:
        n = len(self._prefix)
        for k, _it in _scan(self._db, self._prefix):
            yield _KEY.unpack(k[n:])[0]

    def __iter__(self) -> Iterator[int]:
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

    def __init__(self, db: Any, index: str) -> None:
        self._db = db
        self._prefix = _index_prefix(index)
        self._pending: dict[int, dict[int, bool]] = {}  # ref -> key -> present

    def add(self, ref: int, key: int) -> None:
        self._pending.setdefault(ref, {})[key] = True

    def discard(self, ref: int, key: int) -> None:
        self._pending.setdefault(ref, {})[key] = False

    def _scan(self, prefix: bytes) -> Iterator[bytes]:
        return (k for k, _it in _scan(self._db, prefix))

    def get(self, ref: int) -> Collection[int]:
        prefix = self._prefix + _KEY.pack(ref)
        n = len(prefix)
        keys = {_KEY.unpack(k[n:])[0] for k in self._scan(prefix)}
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

    def snapshot(self) -> dict[int, frozenset[int]]:
        n = len(self._prefix)
        refs = {_KEY.unpack(k[n : n + 8])[0] for k in self._scan(self._prefix)}
        refs |= set(self._pending)
        out = {ref: frozenset(self.get(ref)) for ref in refs}
        return {ref: keys for ref, keys in out.items() if keys}

    def flush(self, batch: Any) -> None:
        for ref, keys in self._pending.items():
            head = self._prefix + _KEY.pack(ref)
            for key, present in keys.items():
                if present:
                    batch.put(head + _KEY.pack(key), b"")
                else:
                    batch.delete(head + _KEY.pack(key))
        self._pending.clear()


class StateFormatError(Exception):
    """The data directory holds a store this version cannot read."""


class RocksStore:
    """:class:`StateStore` in RocksDB at ``path`` (one directory per worker process)."""

    def __init__(self, path: Path) -> None:
        from rocksdict import Options, Rdict

        path.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self._db = Rdict(str(path), opts)
        fmt = self._db.get(_META_FORMAT)
        if fmt is None:
            it = self._db.iter()
            it.seek_to_first()
            if it.valid():
                raise StateFormatError(f"{path} holds data of an unknown state format")
            self._db.put(_META_FORMAT, STATE_FORMAT)
        elif fmt != STATE_FORMAT:
            raise StateFormatError(
                f"{path} holds state format {fmt.decode(errors='replace')!r}; this version "
                f"reads {STATE_FORMAT.decode()!r}: delete the directory, the worker rebuilds "
                "it from the source topics")
        self._tables = {t: _RocksTable(self._db, t) for t in SOURCE_TABLES}
        self._indexes = {fk.index: _RocksIndex(self._db, fk.index) for fk in FOREIGN_KEYS}
        self.state = SourceState(
            categories=self._tables["categories"],
            warranty_types=self._tables["warranty_types"],
            products=self._tables["products"],
            batches=self._tables["batches"],
            indexes=dict(self._indexes),
        )

    def positions(self) -> Positions:
        out: Positions = {}
        for k, it in _scan(self._db, _POS):
            topic, partition = k[1:-5].decode(), struct.unpack(">i", k[-4:])[0]
            out[(topic, partition)] = _KEY.unpack(it.value())[0]
        return out

    def commit(self, positions: Positions) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for table in self._tables.values():
            table.flush(batch)
        for index in self._indexes.values():
            index.flush(batch)
        for (topic, partition), offset in positions.items():
            batch.put(_pos_key(topic, partition), _KEY.pack(offset))
        self._db.write(batch)

    def close(self) -> None:
        self._db.close()
