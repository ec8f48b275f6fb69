"""The state stores: the RocksDB store keeps rows, indexes and positions across a reopen and
refuses a directory of another format (the join behaviour on both stores is in test_join)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.join import JoinEngine
from app.state import RocksStore, StateFormatError
from tests.unit.test_join import Harness, small_catalog


def test_rocksdb_store_keeps_rows_indexes_and_positions_across_a_reopen(tmp_path: Path) -> None:
    store = RocksStore(tmp_path)
    h = Harness(store=store)
    small_catalog(h)
    h.pipeline.positions = {("t.products", 0): 7, ("t.batches", 3): 256, ("t.x", 1): 1 << 33}
    h.pipeline.commit()
    rows = {t: dict(h.state.store(t)) for t in ("categories", "products", "batches")}
    indexes = h.engine.indexes()
    store.close()
    again = RocksStore(tmp_path)
    try:
        assert again.positions() == {("t.products", 0): 7, ("t.batches", 3): 256,
                                     ("t.x", 1): 1 << 33}
        assert {t: dict(again.state.store(t)) for t in rows} == rows
        assert JoinEngine(again.state).indexes() == indexes
    finally:
        again.close()


def test_a_store_of_another_format_is_refused_with_what_to_do(tmp_path: Path) -> None:
    from rocksdict import Options, Rdict

    db = Rdict(str(tmp_path), Options(raw_mode=True))
    db.put(b"m:format", b"viewsync-state-1")
    db.close()
    with pytest.raises(StateFormatError, match="delete the directory"):
        RocksStore(tmp_path)
