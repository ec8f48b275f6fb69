"""Logging for every entry point (the CLI, the worker, the pipeline process): one format,
one ``viewsync.*`` namespace, the chattiest third-party loggers turned down."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Per-request HTTP lines and Faust's producer back-pressure notes drown the useful ones.
    for noisy in ("httpx", "httpx2", "faust.transport.producer", "aiokafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
