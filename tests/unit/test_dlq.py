"""``app.dlq`` without a broker: a stored dead letter's headers read back as the worker
wrote them (``app.records``)."""

from __future__ import annotations

from app.dlq import StoredDeadLetter
from app.records import REASON_HEADER, SOURCE_HEADER, RawRecord, dead_letter_headers


def test_the_origin_of_a_dead_letter_is_the_source_header_the_worker_wrote() -> None:
    headers = dead_letter_headers(RawRecord("p.product.products", 3, 42, b"k", b"v"), "bad")
    dl = StoredDeadLetter(partition=0, offset=7, timestamp_ms=0,
                          reason=headers[REASON_HEADER].decode(),
                          source=headers[SOURCE_HEADER].decode(), key=b"k", value=b"v")
    assert dl.origin == ("p.product.products", 3, 42)
    assert dl.reason == "bad"
    assert StoredDeadLetter(0, 8, 0, "", "not a position", None, None).origin is None
