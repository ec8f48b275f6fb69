"""Logging for every entry point (the CLI, the worker, the pipeline process): one format,
one ``viewsync.*`` namespace. Third-party libraries (Faust, mode, aiokafka, httpx) log only
warnings and errors unless the level is DEBUG: their start-up and recovery chatter says
nothing an operator acts on; the worker's own lines say what it does."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    debug = logging.getLogger().level <= logging.DEBUG
    for noisy in ("httpx", "httpx2", "faust", "mode", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    # Faust's producer back-pressure notes are warnings about nothing wrong.
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
