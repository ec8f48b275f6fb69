"""Typed change events: what the decode stage hands to the join stage.

Pure: no Kafka, no Faust, no SQL. A :class:`Change` is one row-level change of one
declared Product-database table, already decoded from Debezium's envelope into plain Python
values (``int``, ``str``, ``Decimal``, ``datetime.date``, ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.graph import Key

#: Debezium operation codes, plus ``t`` for a tombstone (Kafka record with a null value).
Op = Literal["c", "u", "d", "r", "t"]

#: One source row: column name -> decoded value.
Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """One change of one source row.

    ``after`` is the row as it now is, or ``None`` when the row no longer exists (a delete
    or a tombstone). ``before`` is Debezium's before-image, informational only: the join
    engine never trusts it, it uses its own copy of the row.
    """

    #: A declared source table (``app.graph``) and the row's key.
    table: str
    key: Key
    after: Row | None
    before: Row | None = None
    op: Op = "u"
    #: Source position (binlog file/pos or GTID), for logs and the dead-letter topic.
    position: str = ""
    #: When the source committed it (Debezium ``source.ts_ms``, epoch ms; 0: unknown).
    ts_ms: int = 0

    @property
    def is_delete(self) -> bool:
        return self.after is None
