"""Client configurations made from the settings, with their security applied in one place:
Kafka (SASL, TLS) for confluent-kafka, aiokafka and the Java clients of Kafka Connect, and
the schema registry (basic auth). Database TLS is in the URLs themselves
(:meth:`app.settings.Settings.consumer_url`).

Every module that opens a Kafka or registry client takes its configuration from here, so a
secure deployment is one set of settings, not a hunt through the code. Passwords go only
into the client objects (or, for Connect, as ``${env:…}`` references), never into logs.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from app.client_logs import kafka_logging
from app.settings import Settings

#: Environment variables the Kafka Connect worker resolves secrets from (``config.providers
#: =env``), so that no password is stored in a connector config or a properties file.
KAFKA_PASSWORD_ENV = "VIEWSYNC_KAFKA_SASL_PASSWORD"
REGISTRY_PASSWORD_ENV = "VIEWSYNC_REGISTRY_PASSWORD"
TRUSTSTORE_PASSWORD_ENV = "VIEWSYNC_DB_SSL_TRUSTSTORE_PASSWORD"

_JAAS_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def _sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def _kafka_password(settings: Settings) -> str:
    assert settings.kafka_sasl_password is not None  # the settings validate it
    return settings.kafka_sasl_password.get_secret_value()


def kafka_config(settings: Settings, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A confluent-kafka (librdkafka) configuration: ``Producer``, ``Consumer``,
    ``AdminClient``. ``extra`` is merged in (``{"group.id": …}``). The client logs through
    Python logging, repeats collapsed (``app.client_logs``), not to stderr."""
    conf: dict[str, Any] = {"bootstrap.servers": settings.bootstrap(),
                            **kafka_logging(settings.bootstrap())}
    if settings.kafka_security_protocol != "PLAINTEXT":
        conf["security.protocol"] = settings.kafka_security_protocol
    if _sasl(settings):
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username
        conf["sasl.password"] = _kafka_password(settings)
    ca = settings.kafka_ca()
    if settings.kafka_tls() and ca is not None:
        conf["ssl.ca.location"] = str(ca)
    conf.update(extra or {})
    return conf


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the Python Kafka clients (None: no TLS). Verifies the broker's
    certificate and host name against ``kafka_ssl_cafile`` (or the system's CAs)."""
    if not settings.kafka_tls():
        return None
    ca = settings.kafka_ca()
    return ssl.create_default_context(cafile=str(ca) if ca is not None else None)


def aiokafka_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of an aiokafka client: the brokers and their security."""
    kw: dict[str, Any] = {"bootstrap_servers": settings.bootstrap(),
                          "security_protocol": settings.kafka_security_protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        kw["ssl_context"] = context
    if _sasl(settings):
        kw["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kw["sasl_plain_username"] = settings.kafka_sasl_username
        kw["sasl_plain_password"] = _kafka_password(settings)
    return kw


def java_kafka_properties(settings: Settings,
                          password: str = f"${{env:{KAFKA_PASSWORD_ENV}}}") -> dict[str, str]:
    """The security properties of a Java Kafka client (Connect's worker and connector
    clients, Debezium's schema history). The password is a reference the Connect worker
    resolves from its environment unless given."""
    props: dict[str, str] = {}
    if settings.kafka_security_protocol != "PLAINTEXT":
        props["security.protocol"] = settings.kafka_security_protocol
    if _sasl(settings):
        user = (settings.kafka_sasl_username or "").replace('"', '\\"')
        props["sasl.mechanism"] = settings.kafka_sasl_mechanism
        props["sasl.jaas.config"] = (
            f'{_JAAS_MODULES[settings.kafka_sasl_mechanism]} required '
            f'username="{user}" password="{password}";')
    ca = settings.kafka_ca()
    if settings.kafka_tls() and ca is not None:
        props["ssl.truststore.type"] = "PEM"
        props["ssl.truststore.location"] = str(ca)
    return props


def registry_config(settings: Settings) -> dict[str, Any]:
    """A confluent-kafka ``SchemaRegistryClient`` configuration."""
    conf: dict[str, Any] = {"url": settings.registry_url()}
    ca = settings.registry_ca()
    if ca is not None and settings.registry_url().startswith("https:"):
        conf["ssl.ca.location"] = str(ca)
    if settings.registry_username is not None and settings.registry_password is not None:
        conf["basic.auth.user.info"] = (
            f"{settings.registry_username}:{settings.registry_password.get_secret_value()}")
    return conf


def registry_converter_properties(settings: Settings) -> dict[str, str]:
    """Properties of the Apicurio converters in the connector config: the CA of an HTTPS
    registry (a PEM bundle, read by Apicurio's HTTP client) and basic auth (the password
    resolved by the Connect worker from its environment)."""
    props: dict[str, str] = {}
    ca = settings.registry_ca()
    if ca is not None and settings.registry_native_url().startswith("https:"):
        props["apicurio.rest.request.ssl.ca-bundle.location"] = str(ca)
    if settings.registry_username is not None:
        props |= {"apicurio.auth.username": settings.registry_username,
                  "apicurio.auth.password": f"${{env:{REGISTRY_PASSWORD_ENV}}}"}
    return props


#: ``db_ssl_mode`` in the Debezium MariaDB connector's terms (``database.ssl.mode``).
_DEBEZIUM_SSL_MODES = {"disable": "disable", "require": "trust", "verify-ca": "verify-ca",
                       "verify-full": "verify-full"}


def connector_security(settings: Settings) -> dict[str, str]:
    """What a connector config needs for the secure settings: Debezium's schema-history
    clients to Kafka, the converters' registry auth, TLS to the source database. Secrets
    are ``${env:…}`` references the Connect worker resolves."""
    props: dict[str, str] = {}
    for prefix in ("schema.history.internal.producer.", "schema.history.internal.consumer."):
        props.update({prefix + k: v for k, v in java_kafka_properties(settings).items()})
    for prefix in ("key.converter.", "value.converter."):
        props.update({prefix + k: v for k, v in registry_converter_properties(settings).items()})
    props["database.ssl.mode"] = _DEBEZIUM_SSL_MODES[settings.db_ssl_mode]
    truststore = settings.db_truststore()
    if settings.db_ssl_mode.startswith("verify") and truststore is not None:
        props["database.ssl.truststore"] = str(truststore)
        props["database.ssl.truststore.password"] = f"${{env:{TRUSTSTORE_PASSWORD_ENV}}}"
    return props


def connect_worker_env(settings: Settings) -> dict[str, str]:
    """The secrets a Kafka Connect worker resolves (``${env:…}``) for these settings."""
    env = {"VIEWSYNC_DB_PASSWORD": settings.db_password.get_secret_value(),
           TRUSTSTORE_PASSWORD_ENV: settings.db_ssl_truststore_password.get_secret_value()}
    if settings.kafka_sasl_password is not None:
        env[KAFKA_PASSWORD_ENV] = settings.kafka_sasl_password.get_secret_value()
    if settings.registry_password is not None:
        env[REGISTRY_PASSWORD_ENV] = settings.registry_password.get_secret_value()
    return env
