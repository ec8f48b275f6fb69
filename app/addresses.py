"""The syntax of the endpoints a deployment is given: a Kafka bootstrap list, an HTTP(S)
endpoint, a SQLAlchemy database URL. Each check returns what is wrong (``None``: nothing),
so that ``app.settings`` refuses a value that cannot work before anything starts, instead of
a client library retrying an unparseable address forever.

The problems never repeat a database URL or its password: they name what is wrong with it
(the part, the backend), not the value.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

#: A DNS name: dot-separated labels of letters, digits, hyphens (and underscores, which
#: container networks use), none starting or ending with a hyphen.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def host_problem(host: str) -> str | None:
    """What is wrong with ``host`` as a DNS name, an IPv4 address or an IPv6 address
    (unbracketed here)."""
    if not host:
        return "no host"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not an IPv6 address"
        return None
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not an IPv4 address"
        return None
    name = host.removesuffix(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return f"{host!r} is not a host name"
    return None


def _port_problem(port: str) -> str | None:
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not a number from 1 to 65535"
    return None


def bootstrap_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a Kafka bootstrap list: comma-separated
    ``host:port`` (a DNS name, an IPv4 address or a bracketed IPv6 address; a port from 1
    to 65535)."""
    servers = [s.strip() for s in value.split(",")]
    if not any(servers):
        return "no broker address (expected host:port[,host:port…])"
    for server in servers:
        if not server:
            return "an empty address between commas"
        if "://" in server:
            return f"{server!r}: expected host:port, without a scheme"
        m = re.fullmatch(r"\[([^\]]*)\]:([^:]*)|([^:\[\]]*):([^:]*)", server)
        if m is None:
            if ":" not in server:
                return f"{server!r} has no port (expected host:port)"
            return (f"{server!r} is not host:port (an IPv6 address goes in brackets: "
                    "[::1]:9092)")
        if m.group(1) is not None:  # in brackets: an IPv6 address
            host, port = m.group(1), m.group(2)
            problem = host_problem(host) if ":" in host else f"{host!r} is not an IPv6 address"
        else:
            host, port = m.group(3), m.group(4)
            problem = host_problem(host)
        problem = problem or _port_problem(port)
        if problem:
            return f"{server!r}: {problem}"
    return None


def http_url_problem(value: str) -> str | None:
    """What is wrong with ``value`` as an ``http://`` or ``https://`` URL with a host (the
    value itself is not repeated: it may carry credentials)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as exc:  # a bad port, an unbalanced IPv6 bracket
        return f"not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return (f"the scheme is {parts.scheme!r}, expected http or https" if parts.scheme
                else "not a URL (expected http://host:port/…)")
    host = parts.hostname or ""
    problem = host_problem(host)
    if problem:
        return problem if host else "no host in the URL"
    if port is not None and not 1 <= port <= 65535:
        return f"port {port} is not from 1 to 65535"
    return None


def database_url_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a SQLAlchemy database URL: it must parse
    (``sqlalchemy.engine.make_url``), name a dialect SQLAlchemy has, and a port (when
    given) from 1 to 65535. The URL and its password are never repeated."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(value.strip())
    except (ArgumentError, ValueError):
        return "not a SQLAlchemy URL (expected dialect+driver://user:password@host:port/db)"
    if url.port is not None and not 1 <= url.port <= 65535:
        return f"port {url.port} is not from 1 to 65535"
    if url.host:
        problem = host_problem(url.host)
        if problem:
            return problem
    try:
        url.get_dialect()
    except NoSuchModuleError:
        return f"SQLAlchemy has no dialect {url.drivername!r}"
    except Exception as exc:  # a dialect that cannot load (a missing DBAPI module)
        return f"the dialect {url.drivername!r} does not load ({type(exc).__name__})"
    return None
