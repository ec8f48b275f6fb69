"""The ``viewsync`` command. Thin: each subcommand loads the settings and calls one function.

Every option can also be set through a ``VIEWSYNC_*`` environment variable or a TOML file
(``--config`` / ``VIEWSYNC_CONFIG_FILE``); see ``app.settings``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from app.logs import setup_logging
from app.settings import ConfigError, Settings, load_settings

EXIT_CONFIG = 2
EXIT_FAILED = 1


def cmd_stack(args: argparse.Namespace, s: Settings) -> int:
    from app.stack.instances import instance_overrides
    from app.stack.manager import Stack

    if args.instance:
        s = load_settings(args.config, **instance_overrides(args.instance))
    stack = Stack(s)
    if args.action == "up":
        stack.up(connector=not args.no_connector)
    elif args.action == "down":
        stack.down(purge=args.purge)
    elif args.action == "status":
        rows = stack.status()
        print(f"{'component':<12} {'port':>5} {'pid':>8}  health")
        for name, port, pid, ok in rows:
            print(f"{name:<12} {port:>5} {pid if pid else '-':>8}  {'up' if ok else 'DOWN'}")
        return 0 if all(ok for *_, ok in rows) else EXIT_FAILED
    elif args.action == "env":
        print("\n".join(stack.env_lines()))
    elif args.action == "logs":
        print(stack.logs(args.component, args.lines))
    return 0


def cmd_connectors(args: argparse.Namespace, s: Settings) -> int:
    from app.connectors import ConnectClient

    client = ConnectClient(s)
    if args.action == "apply":
        changed = client.apply()
        print(f"{client.name}: {'applied' if changed else 'unchanged'}")
        st = client.wait_running(timeout=args.timeout)
        print(f"{client.name}: {st['connector']['state']}")
    elif args.action == "status":
        print(json.dumps(client.status(), indent=2))
    elif args.action == "delete":
        print(f"{client.name}: {'deleted' if client.delete() else 'was not registered'}")
    elif args.action == "resnapshot":
        from app.resnapshot import resnapshot

        result = resnapshot(s, timeout=args.timeout)
        print(json.dumps({"snapshot_records": result.snapshot_records,
                          "tombstones": result.tombstones,
                          "seconds": round(result.seconds, 1)}))
    elif args.action == "restart":
        client.restart()
        client.wait_running(timeout=args.timeout)
        print(f"{client.name}: restarted, RUNNING")
    return 0


def cmd_worker(args: argparse.Namespace, s: Settings) -> int:
    from app.worker import run_worker

    return run_worker(s)


def cmd_demo(args: argparse.Namespace, s: Settings) -> int:
    from app.demo import seed

    seed(s, products=args.products, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from app.stack.instances import INSTANCES

    p = argparse.ArgumentParser(
        prog="viewsync",
        description="Real-time denormalized views of the Product database in every "
        "consumer's own database.",
    )
    p.add_argument("--config", help="TOML settings file (env: VIEWSYNC_CONFIG_FILE)")
    sub = p.add_subparsers(dest="command", required=True)

    st = sub.add_parser("stack", help="run the local stack (Kafka, Connect, registry, DBs)")
    st.add_argument(
        "--instance", choices=sorted(INSTANCES),
        help="a stack of its own (state directory and ports): 'test' is the one the tests "
        "use, 'bench' the benches'; default: your stack")
    st_sub = st.add_subparsers(dest="action", required=True)
    up = st_sub.add_parser("up", help="install, start, health-check and bootstrap (idempotent)")
    up.add_argument("--no-connector", action="store_true", help="do not register the connector")
    down = st_sub.add_parser("down", help="stop every component (data kept)")
    down.add_argument("--purge", action="store_true", help="also delete the state directory")
    st_sub.add_parser("status", help="each component's port, pid and health (exit 1 if any down)")
    st_sub.add_parser("env", help="print export lines for the stack's endpoints")
    logs = st_sub.add_parser("logs", help="show the last lines of component logs")
    logs.add_argument("component", nargs="?", help="one component (default: all)")
    logs.add_argument("-n", "--lines", type=int, default=40)
    st.set_defaults(func=cmd_stack)

    co = sub.add_parser("connectors", help="manage the Debezium source connector")
    co_sub = co.add_subparsers(dest="action", required=True)
    for name, helptext in (("apply", "create or update from connectors/ (idempotent)"),
                           ("status", "connector and task states"),
                           ("restart", "restart the connector and its tasks"),
                           ("delete", "remove the connector (topics and offsets stay)")):
        a = co_sub.add_parser(name, help=helptext)
        a.add_argument("--timeout", type=float, default=120.0)
    rs = co_sub.add_parser(
        "resnapshot", help="recover from a binlog gap: a fresh snapshot, then tombstones for "
        "the rows it no longer has (exact; idempotent; see README)")
    rs.add_argument("--timeout", type=float, default=3600.0,
                    help="seconds to wait for the snapshot (default 3600)")
    co.set_defaults(func=cmd_connectors)

    wk = sub.add_parser("worker", help="run the stream worker (decode → join → project → sink)")
    wk.set_defaults(func=cmd_worker)

    de = sub.add_parser("demo", help="sample data for the Product database")
    de_sub = de.add_subparsers(dest="action", required=True)
    seed_p = de_sub.add_parser("seed", help="insert a realistic catalogue")
    seed_p.add_argument("--products", type=int, default=1000)
    seed_p.add_argument("--seed", type=int, default=1)
    de.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"viewsync: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from app.connectors import ConnectError
        from app.stack.manager import StackError

        if isinstance(exc, (StackError, ConnectError, ConfigError)):
            print(f"viewsync: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
