"""Named stack instances: the same stack on its own state directory and ports.

The user's stack (the demo, their own experiments) is the default instance. The tests run on
the ``test`` instance and the benches on the ``bench`` instance, so that nothing a test or a
bench does (seeded catalogues, killed servers, a purged binlog) ever reaches the user's data.
An instance is nothing but settings: ``<default state dir>-<name>`` and every port shifted by
the instance's offset, so ``viewsync stack --instance test status`` (or the environment from
:func:`instance_env`) names all of it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from app.settings import Settings, stack_consumer_url_keys

#: Port offsets of the named instances (the default instance is offset 0). Every instance
#: stays below Linux's ephemeral range (32768+): a listener there can find its port taken by
#: some client connection's local end ("Address already in use").
INSTANCES: dict[str, int] = {"test": 20_000, "bench": 15_000, "secure": 10_000}

#: The first port of Linux's default ephemeral range (``net.ipv4.ip_local_port_range``).
EPHEMERAL_FIRST = 32_768

#: Settings of the instances beyond their ports and state: ``secure`` is the stack with
#: everything on that ``stack_tls`` serves (Kafka SASL_SSL/SCRAM, TLS-only databases,
#: verified against the stack's own CA) — what the secure end-to-end test runs on.
#: (Loopback-only, local credentials like ``db_password``'s default.)
EXTRA: dict[str, dict[str, Any]] = {
    "secure": {"stack_tls": True, "kafka_security_protocol": "SASL_SSL",
               "kafka_sasl_username": "viewsync", "kafka_sasl_password": "viewsync-local-kafka",
               "db_ssl_mode": "verify-full"},
}

#: Settings fields that are ports of the stack.
PORT_FIELDS = ("product_db_port", "purchase_db_port", "order_db_port", "kafka_port",
               "kafka_controller_port", "connect_port", "registry_port")

#: Endpoint settings that would point away from the instance; an instance derives them
#: (the consumers' database URLs: ``<consumer>_db_url`` of each consumer of the stack).
ENDPOINT_FIELDS = ("source_url", *stack_consumer_url_keys(), "kafka_bootstrap",
                   "schema_registry_url", "connect_url")


def instance_overrides(name: str) -> dict[str, Any]:
    """Settings values of instance ``name`` (``ValueError`` for an unknown name)."""
    if name not in INSTANCES:
        raise ValueError(f"unknown stack instance {name!r}; one of: {', '.join(INSTANCES)}")
    offset = INSTANCES[name]
    base = Settings.model_fields
    values: dict[str, Any] = {f: int(base[f].default) + offset for f in PORT_FIELDS}
    state_default = base["state_dir"].default_factory
    assert state_default is not None
    default_dir = Path(state_default())  # type: ignore[call-arg]
    values["state_dir"] = default_dir.with_name(f"{default_dir.name}-{name}")
    for f in ENDPOINT_FIELDS:
        values[f] = None
    values.update(EXTRA.get(name, {}))
    return values


def instance_env(name: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process that must use instance ``name`` and nothing else.

    Every setting of ``environ`` (default: this process's environment) that could point at
    another stack is dropped: the ``VIEWSYNC_<FIELD>`` variables of :class:`Settings` and
    ``VIEWSYNC_CONFIG_FILE``, except ``VIEWSYNC_JVM_PROFILE`` and ``VIEWSYNC_LOG_LEVEL``.
    Other ``VIEWSYNC_*`` variables (knobs of the tests and benches) stay.
    """
    env = dict(os.environ if environ is None else environ)
    keep = {"jvm_profile", "log_level"}
    drop = {f"VIEWSYNC_{f.upper()}" for f in (*Settings.model_fields, *ENDPOINT_FIELDS)
            if f not in keep}
    drop.add("VIEWSYNC_CONFIG_FILE")
    for key in drop:
        env.pop(key, None)
    for field, value in instance_overrides(name).items():
        if value is not None:
            env[f"VIEWSYNC_{field.upper()}"] = str(value)
    return env
