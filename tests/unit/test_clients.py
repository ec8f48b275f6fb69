"""Client configurations from the secure settings (``app.clients``): what each library gets,
and that no password lands where it could be stored or logged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import faust
import pytest

from app.clients import (
    aiokafka_config,
    connect_worker_env,
    connector_security,
    java_kafka_properties,
    kafka_config,
    registry_config,
)
from app.connectors import SOURCE_CONFIG, render
from app.settings import ConfigError, Settings, load_settings
from app.worker import broker_credentials

KAFKA_PW = "kafka-s3cret"
REGISTRY_PW = "registry-s3cret"


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    """A real (throwaway) CA certificate: the TLS contexts load it."""
    path = tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=test CA", "-keyout", str(tmp_path / "ca.key"),
                    "-out", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture
def secure(ca: Path) -> Settings:
    return load_settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc",
        kafka_sasl_password=KAFKA_PW, kafka_ssl_cafile=ca, registry_username="reg",
        registry_password=REGISTRY_PW, db_ssl_mode="verify-full", db_ssl_cafile=ca)


def test_plaintext_is_the_plain_bootstrap() -> None:
    s = load_settings()
    conf = kafka_config(s)
    assert conf.pop("logger").extra == {"kafka_bootstrap": s.bootstrap()}  # app.client_logs
    assert callable(conf.pop("error_cb"))
    assert conf == {"bootstrap.servers": s.bootstrap()}
    assert kafka_config(s, {"group.id": "g"})["group.id"] == "g"
    assert java_kafka_properties(s) == {}
    assert registry_config(s) == {"url": s.registry_url()}
    assert broker_credentials(s) is None
    assert connector_security(s) == {"database.ssl.mode": "disable"}


def test_sasl_ssl_for_every_kafka_client(secure: Settings, ca: Path) -> None:
    conf = kafka_config(secure)
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("svc", KAFKA_PW)
    assert conf["ssl.ca.location"] == str(ca)

    aio = aiokafka_config(secure)
    assert aio["security_protocol"] == "SASL_SSL"
    assert aio["sasl_plain_password"] == KAFKA_PW
    assert aio["ssl_context"].check_hostname  # the broker's name is verified

    creds = broker_credentials(secure)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.ssl_context is not None
    assert KAFKA_PW not in repr(creds)

    java = java_kafka_properties(secure)
    assert java["ssl.truststore.type"] == "PEM" and java["ssl.truststore.location"] == str(ca)
    assert "ScramLoginModule required" in java["sasl.jaas.config"]
    assert "${env:VIEWSYNC_KAFKA_SASL_PASSWORD}" in java["sasl.jaas.config"]


def test_registry_basic_auth(secure: Settings) -> None:
    assert registry_config(secure)["basic.auth.user.info"] == f"reg:{REGISTRY_PW}"


def test_an_https_registry_is_verified_with_its_ca(ca: Path) -> None:
    s = load_settings(schema_registry_url="https://registry.example:8443/apis/ccompat/v7",
                      registry_ssl_cafile=ca)
    assert registry_config(s)["ssl.ca.location"] == str(ca)
    _name, config = render(SOURCE_CONFIG, s)
    for side in ("key", "value"):
        assert config[f"{side}.converter.apicurio.registry.url"] == (
            "https://registry.example:8443/apis/registry/v2")
        assert config[f"{side}.converter.apicurio.rest.request.ssl.ca-bundle.location"] == (
            str(ca))
    # Over plain HTTP a CA means nothing to either client.
    plain = load_settings(registry_ssl_cafile=ca)
    assert "ssl.ca.location" not in registry_config(plain)
    assert not any("ca-bundle" in k for k in render(SOURCE_CONFIG, plain)[1])


def test_the_local_stack_with_tls_serves_the_registry_over_https(tmp_path: Path) -> None:
    s = load_settings(stack_tls=True, state_dir=tmp_path)
    assert s.registry_url().startswith("https://")
    assert registry_config(s)["ssl.ca.location"] == str(tmp_path / "tls" / "ca.pem")


def test_connector_config_holds_references_not_secrets(secure: Settings) -> None:
    _name, config = render(SOURCE_CONFIG, secure)
    assert config["database.ssl.mode"] == "verify-full"
    assert config["schema.history.internal.producer.security.protocol"] == "SASL_SSL"
    assert config["schema.history.internal.consumer.sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["value.converter.apicurio.auth.username"] == "reg"
    assert config["value.converter.apicurio.auth.password"] == "${env:VIEWSYNC_REGISTRY_PASSWORD}"
    for value in config.values():
        assert KAFKA_PW not in value and REGISTRY_PW not in value
    env = connect_worker_env(secure)
    assert env["VIEWSYNC_KAFKA_SASL_PASSWORD"] == KAFKA_PW
    assert env["VIEWSYNC_REGISTRY_PASSWORD"] == REGISTRY_PW


def test_database_urls_carry_tls(secure: Settings, ca: Path) -> None:
    pg = secure.consumer_url("order")
    assert "sslmode=verify-full" in pg and f"sslrootcert={str(ca).replace('/', '%2F')}" in pg
    my = secure.consumer_url("purchase")
    assert "ssl_check_hostname=true" in my and "ssl_ca=" in my
    assert "ssl_ca=" in secure.product_url()
    # A URL's own TLS parameters win.
    own = load_settings(db_ssl_mode="require", order_db_url="postgresql+psycopg://u:p@h/db"
                        "?sslmode=verify-ca&sslrootcert=%2Fx.pem")
    assert own.consumer_url("order") == ("postgresql+psycopg://u:p@h/db"
                                         "?sslmode=verify-ca&sslrootcert=%2Fx.pem")
    req = load_settings(db_ssl_mode="require")
    assert "ssl_check_hostname=false" in req.consumer_url("purchase")
    assert "ssl_ca" not in req.consumer_url("purchase")


def test_secrets_are_not_in_the_settings_repr(secure: Settings) -> None:
    assert KAFKA_PW not in repr(secure) and REGISTRY_PW not in repr(secure)


@pytest.mark.parametrize(("values", "field"), [
    ({"kafka_security_protocol": "SASL_SSL"}, "kafka_sasl_username"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"}, "kafka_sasl_password"),
    ({"registry_username": "u"}, "registry_password"),
    ({"db_ssl_mode": "verify-full"}, "db_ssl_cafile"),
    ({"kafka_ssl_cafile": "/nonexistent/ca.pem"}, "kafka_ssl_cafile"),
    ({"registry_ssl_cafile": "/nonexistent/ca.pem"}, "registry_ssl_cafile"),
    ({"db_ssl_mode": "sometimes"}, "db_ssl_mode"),
])
def test_bad_security_settings_name_the_field(values: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_settings(**values)
