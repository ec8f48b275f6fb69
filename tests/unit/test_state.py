"""The state stores: one store per declared table and one reverse index per reference and
hierarchy; the RocksDB store keeps rows, indexes and positions across a reopen, empties a
store of another format or another graph, and refuses a directory that is not a store (the
join behaviour on both stores is in test_join and test_catalog)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from app.changes import Change
from app.join import JoinEngine
from app.state import MemoryStore, RocksStore, SourceState, StateFormatError
from app.views import parse_definitions
from tests.unit.test_join import GRAPH, Harness, cat, prod, small_catalog


def test_a_state_holds_one_store_per_declared_table_and_one_index_per_link() -> None:
    state = SourceState(GRAPH)
    assert list(state.tables) == ["categories", "warranty_types", "products", "batches"]
    assert set(state.indexes) == {"categories^children", "products.category",
                                  "products.warranty", "batches.product"}
    with pytest.raises(ValueError, match="unknown source table"):
        state.store("brands")
    with pytest.raises(ValueError, match=r"unknown source table\(s\): \['brands'\]"):
        SourceState(GRAPH, {"brands": {}})


def test_indexes_are_built_from_the_rows_given() -> None:
    state = SourceState(GRAPH, {"categories": {1: cat(1, None, "A"), 2: cat(2, 1, "B")},
                                "products": {10: prod(10, 2, 7), 11: prod(11, 9)}})
    idx = JoinEngine(state).indexes()
    assert idx["categories^children"] == {1: {2}}
    assert idx["products.category"] == {2: {10}, 9: {11}}
    assert idx["products.warranty"] == {7: {10}}
    assert idx["batches.product"] == {}


def test_a_memory_store_keeps_positions_in_the_process_only() -> None:
    store = MemoryStore(GRAPH)
    assert store.positions() == {}
    store.commit({("t", 0): 3})
    store.commit({("t", 1): 5})
    assert store.positions() == {("t", 0): 3, ("t", 1): 5}
    assert MemoryStore(GRAPH).positions() == {}


def test_rocksdb_store_keeps_rows_indexes_and_positions_across_a_reopen(tmp_path: Path) -> None:
    store = RocksStore(tmp_path, GRAPH)
    h = Harness(store=store)
    small_catalog(h)
    h.put("products", prod(2**62, 2**40 + 1, 2**33))  # big ids, dangling references
    h.pipeline.positions = {("t.products", 0): 7, ("t.batches", 3): 256, ("t.x", 1): 1 << 33}
    h.pipeline.commit()
    rows = {t: dict(h.state.store(t)) for t in GRAPH.names}
    indexes = h.engine.indexes()
    store.close()
    again = RocksStore(tmp_path, GRAPH)
    try:
        assert again.positions() == {("t.products", 0): 7, ("t.batches", 3): 256,
                                     ("t.x", 1): 1 << 33}
        assert {t: dict(again.state.store(t)) for t in rows} == rows
        assert JoinEngine(again.state).indexes() == indexes
        again.state.rebuild_indexes()  # the kept indexes are the ones the rows give
        assert JoinEngine(again.state).indexes() == indexes
    finally:
        again.close()


def test_uncommitted_writes_are_read_back_and_lost_by_a_crash(tmp_path: Path) -> None:
    store = RocksStore(tmp_path, GRAPH)
    h = Harness(store=store)
    h.put("categories", cat(1, None, "A"))  # committed by the harness
    h.pipeline.apply(Change("categories", 2, after=cat(2, 1, "B")))
    assert 2 in h.state.store("categories")  # read back before the commit
    assert h.engine.indexes()["categories^children"] == {1: {2}}
    store.close()  # no commit: the write is lost with the process
    again = RocksStore(tmp_path, GRAPH)
    try:
        assert dict(again.state.store("categories")) == {1: cat(1, None, "A")}
        assert JoinEngine(again.state).indexes()["categories^children"] == {}
    finally:
        again.close()


def test_a_store_of_another_format_is_emptied_and_rebuilt(tmp_path: Path) -> None:
    from rocksdict import Options, Rdict

    db = Rdict(str(tmp_path), Options(raw_mode=True))
    db.put(b"m:format", b"viewsync-state-1")
    db.put(b"rproducts\x00whatever", b"old")
    db.close()
    store = RocksStore(tmp_path, GRAPH)
    try:
        assert store.positions() == {}
        assert all(not dict(store.state.store(t)) for t in GRAPH.names)
    finally:
        store.close()


def test_a_store_kept_for_another_graph_is_emptied(tmp_path: Path) -> None:
    store = RocksStore(tmp_path, GRAPH)
    h = Harness(store=store)
    small_catalog(h)
    h.pipeline.positions = {("t", 0): 9}
    h.pipeline.commit()
    store.close()
    other = parse_definitions(tomllib.loads(OTHER)).graph
    again = RocksStore(tmp_path, other)
    try:
        assert again.positions() == {} and not dict(again.state.store("things"))
    finally:
        again.close()
    same = RocksStore(tmp_path, other)  # and kept from then on
    same.close()


OTHER = """
[sources.things]
key = "id"
columns = ["name"]

[views.c.thing_view]
grain = "things"
key = "id"
columns = [{ name = "id", source = "id", type = "bigint" }]
"""


def test_a_directory_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    from rocksdict import Options, Rdict

    db = Rdict(str(tmp_path), Options(raw_mode=True))
    db.put(b"something", b"else")
    db.close()
    with pytest.raises(StateFormatError, match="unknown state format"):
        RocksStore(tmp_path, GRAPH)
