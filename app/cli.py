"""The ``viewsync`` command (typer + rich). Thin: each command loads the settings and calls
one function of the package.

Every option can also be set through a ``VIEWSYNC_*`` environment variable or a TOML file
(``--config`` / ``VIEWSYNC_CONFIG_FILE``); see ``app.settings``. Tables and progress bars
are drawn by rich, in colour only on a terminal (plain text under systemd, Docker or a
pipe); ``--json`` gives a script one JSON document on stdout.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from app.logs import setup_logging
from app.settings import ConfigError, Settings, load_settings

EXIT_CONFIG = 2
EXIT_FAILED = 1

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

cli = typer.Typer(
    name="viewsync", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False,
    help="Real-time denormalized views of the Product database in every consumer's own "
    "database.")
stack_cli = typer.Typer(no_args_is_help=True,
                        help="Run the local stack (Kafka, Connect, registry, databases).")
connectors_cli = typer.Typer(no_args_is_help=True,
                             help="Manage the Debezium source connector (Connect REST API).")
dlq_cli = typer.Typer(no_args_is_help=True,
                      help="The dead-letter topic: list, show, replay.")
schemas_cli = typer.Typer(no_args_is_help=True,
                          help="The registry's source schemas against the declared tables.")
demo_cli = typer.Typer(no_args_is_help=True, help="Sample data for the Product database.")
shards_cli = typer.Typer(no_args_is_help=True,
                         help="The shards of a deployment: who writes which view rows.")
cli.add_typer(stack_cli, name="stack")
cli.add_typer(connectors_cli, name="connectors")
cli.add_typer(dlq_cli, name="dlq")
cli.add_typer(schemas_cli, name="schemas")
cli.add_typer(demo_cli, name="demo")
cli.add_typer(shards_cli, name="shards")

JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait.")]


def fail(msg: str, code: int = EXIT_FAILED) -> NoReturn:
    err.print(f"viewsync: {msg}", markup=False, highlight=False)
    raise typer.Exit(code)


def settings(ctx: typer.Context) -> Settings:
    """The settings of this invocation (``--config``, the environment; for ``stack``, the
    chosen instance), validated once, before anything starts."""
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "settings" not in obj:
        overrides: dict[str, Any] = {}
        if obj.get("instance"):
            from app.stack.instances import instance_overrides

            overrides = instance_overrides(obj["instance"])
        try:
            obj["settings"] = load_settings(obj.get("config"), **overrides)
        except ConfigError as exc:
            fail(str(exc), EXIT_CONFIG)
        setup_logging(obj["settings"].log_level)
    s: Settings = obj["settings"]
    return s


def table(*columns: str) -> Table:
    """A borderless table: aligned columns that read well in a terminal and in a log."""
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, justify="right" if c in {"port", "pid", "offset", "version"} else "left")
    return t


@cli.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option(
        "--config", help="TOML settings file (env: VIEWSYNC_CONFIG_FILE).")] = None,
) -> None:
    ctx.ensure_object(dict)["config"] = config


# ------------------------------------------------------------------ stack
class Instance(enum.StrEnum):
    test = "test"
    bench = "bench"
    secure = "secure"


@stack_cli.callback()
def stack_options(
    ctx: typer.Context,
    instance: Annotated[Instance | None, typer.Option(
        help="A stack of its own (state directory and ports): 'test' is the one the tests "
        "use, 'bench' the benches'. Default: your stack.")] = None,
) -> None:
    ctx.ensure_object(dict)["instance"] = instance.value if instance else None


def _stack(ctx: typer.Context) -> Any:
    from app.stack.manager import Stack

    return Stack(settings(ctx))


@stack_cli.command("up")
def stack_up(ctx: typer.Context, no_connector: Annotated[bool, typer.Option(
        help="Do not register the connector.")] = False) -> None:
    """Install what is missing, start every component, health-check, bootstrap (idempotent)."""
    _stack(ctx).up(connector=not no_connector)


@stack_cli.command("down")
def stack_down(ctx: typer.Context, purge: Annotated[bool, typer.Option(
        help="Also delete the state directory.")] = False) -> None:
    """Stop every component (data kept)."""
    _stack(ctx).down(purge=purge)


@stack_cli.command("status")
def stack_status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Each component's port, pid and health (exit 1 if any is down)."""
    rows = _stack(ctx).status()
    if as_json:
        print(json.dumps([{"component": n, "port": p, "pid": pid, "up": ok}
                          for n, p, pid, ok in rows]))
    else:
        t = table("component", "port", "pid", "health")
        for name, port, pid, ok in rows:
            t.add_row(name, str(port), str(pid) if pid else "-",
                      "[green]up[/]" if ok else "[red]DOWN[/]")
        out.print(t)
    if not all(ok for *_, ok in rows):
        raise typer.Exit(EXIT_FAILED)


@stack_cli.command("env")
def stack_env(ctx: typer.Context) -> None:
    """Print `export` lines for the stack's endpoints."""
    print("\n".join(_stack(ctx).env_lines()))


@stack_cli.command("logs")
def stack_logs(ctx: typer.Context,
               component: Annotated[str | None, typer.Argument(
                   help="One component (default: all).")] = None,
               lines: Annotated[int, typer.Option("-n", "--lines")] = 40) -> None:
    """Show the last lines of component logs."""
    print(_stack(ctx).logs(component, lines))


# ------------------------------------------------------------------ connectors
def _client(ctx: typer.Context) -> Any:
    from app.connectors import ConnectClient

    return ConnectClient(settings(ctx))


@connectors_cli.command("apply")
def connectors_apply(ctx: typer.Context, timeout: TimeoutOpt = 120.0) -> None:
    """Create or update the connector from connectors/ (idempotent)."""
    client = _client(ctx)
    changed = client.apply()
    out.print(f"{client.name}: {'applied' if changed else 'unchanged'}")
    st = client.wait_running(timeout=timeout)
    out.print(f"{client.name}: {st['connector']['state']}")


@connectors_cli.command("status")
def connectors_status(ctx: typer.Context) -> None:
    """Connector and task states (JSON, as Connect reports them)."""
    print(json.dumps(_client(ctx).status(), indent=2))


@connectors_cli.command("restart")
def connectors_restart(ctx: typer.Context, timeout: TimeoutOpt = 120.0) -> None:
    """Restart the connector and its tasks."""
    client = _client(ctx)
    client.restart()
    client.wait_running(timeout=timeout)
    out.print(f"{client.name}: restarted, RUNNING")


@connectors_cli.command("delete")
def connectors_delete(ctx: typer.Context) -> None:
    """Remove the connector (topics and offsets stay)."""
    client = _client(ctx)
    out.print(f"{client.name}: {'deleted' if client.delete() else 'was not registered'}")


@connectors_cli.command("resnapshot")
def connectors_resnapshot(ctx: typer.Context, timeout: Annotated[float, typer.Option(
        help="Seconds to wait for the snapshot.")] = 3600.0) -> None:
    """Recover from a binlog gap: a fresh snapshot, then tombstones for the rows it no
    longer has (exact; idempotent). Prints the counts as JSON."""
    from app.resnapshot import resnapshot

    result = resnapshot(settings(ctx), timeout=timeout,
                        say=lambda m: err.print(m, markup=False, highlight=False))
    print(json.dumps({"snapshot_records": result.snapshot_records,
                      "tombstones": result.tombstones, "seconds": round(result.seconds, 1)}))


# ------------------------------------------------------------------ worker
@cli.command("worker")
def worker(ctx: typer.Context) -> None:
    """Run the stream worker (decode → join → project → sink); Ctrl-C / SIGTERM stops it
    cleanly."""
    from app.worker import run_worker

    raise typer.Exit(run_worker(settings(ctx)))


# ------------------------------------------------------------------ verify
@cli.command("status")
def status_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The pipeline's health: connector and tasks, every worker of the deployment and its
    lag, each view's rows and staleness, dead letters. Exit 1 when something is wrong
    (thresholds: VIEWSYNC_STATUS_MAX_LAG, VIEWSYNC_STATUS_MAX_STALENESS_S)."""
    from app.status_model import status

    s = settings(ctx)
    st = status(s)
    if as_json:
        print(json.dumps(st.to_json()))
    else:
        out.print(f"connector {s.connector_name}: {st.connector} "
                  f"(tasks: {', '.join(st.tasks) or 'none'}); dead letters: "
                  f"{'?' if st.dead_letters is None else st.dead_letters}", markup=False)
        t = table("worker", "host", "lag (records)")
        for w in st.workers:
            t.add_row(w.name, w.host, "?" if w.lag is None else f"{w.lag:,}")
        out.print(t, markup=False, highlight=False)
        v = table("view", "rows", "staleness", "records behind")
        for r in st.views:
            v.add_row(r.view, "?" if r.rows is None else f"{r.rows:,}",
                      "?" if r.staleness_s is None else f"{r.staleness_s:.1f}s",
                      "?" if r.behind is None else f"{r.behind:,}")
        out.print(v, markup=False, highlight=False)
        for p in st.problems:
            err.print(f"problem: {p}", markup=False, highlight=False)
        out.print("OK" if st.ok else f"{len(st.problems)} problem(s)", markup=False)
    if not st.ok:
        raise typer.Exit(EXIT_FAILED)


@cli.command("resync")
def resync_cmd(
    ctx: typer.Context,
    views: Annotated[list[str], typer.Argument(
        metavar="VIEW...", help="e.g. purchase.batch_view")],
    wait: Annotated[bool, typer.Option(help="Wait until every shard has it done.")] = True,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """Rebuild views in place (a dropped table, a new consumer, a restored backup) while the
    workers go on serving the others: each worker upserts every row of its shards, then
    deletes the rows the source does not have; the table is never empty, its indexes,
    grants and dependent views survive."""
    from app.control import Command, send, wait_carried_out

    known = {v.name: v for v in settings(ctx).views()}
    unknown = [n for n in views if n not in known]
    if unknown:
        fail(f"unknown view(s) {', '.join(unknown)}; one of: {', '.join(known)}", EXIT_CONFIG)
    s = settings(ctx)
    end = send(s, [Command("resync", v) for v in views])
    out.print(f"resync of {', '.join(views)} sent to {s.control_topic()}", markup=False)
    if wait:
        secs = wait_carried_out(s, {known[v].consumer for v in views}, end, timeout,
                                lambda m: out.print(m, markup=False))
        out.print(f"done in {secs:.1f}s", markup=False)


@cli.command("verify")
def verify(
    ctx: typer.Context,
    views: Annotated[list[str] | None, typer.Argument(
        metavar="[VIEW]...", help="e.g. order.product_view (default: every view).")] = None,
    as_json: JsonOpt = False,
    chunk: Annotated[int, typer.Option(help="Keys per read.")] = 5000,
    rechecks: Annotated[int, typer.Option(
        help="Re-reads of a row that differs: the same difference twice is drift, a row "
        "still changing after them is 'unsettled'.")] = 3,
    settle: Annotated[float, typer.Option(
        help="Seconds before a re-read, for the connector to publish the source's last "
        "changes; then verify waits for the workers to apply them.")] = 2.0,
    wait: Annotated[float, typer.Option(
        help="Longest wait for the workers before a re-read; past it, rows that still "
        "differ are 'unsettled' (lag), not drift.")] = 120.0,
    repair: Annotated[bool, typer.Option(
        help="Have the workers that own the drifted rows rewrite them (through the "
        "deployment's control topic; verify itself only reads), and wait for it.")] = False,
    timeout: TimeoutOpt = 300.0,
) -> None:
    """Prove each view equals the join of the source tables (reads only; exit 1 on drift).

    Reads the source tables and the views in chunks of keys, computes every row with the
    worker's projection, and reports missing / extra / different rows per view with
    examples. Safe while workers run: a row that differs is read again once the workers have
    applied every change in flight; only a difference that stays the same is drift.
    """
    from app.verify import verify as run_verify

    known = {v.name: v for v in settings(ctx).views()}
    unknown = [n for n in views or [] if n not in known]
    if unknown:
        fail(f"unknown view(s) {', '.join(unknown)}; one of: {', '.join(known)}", EXIT_CONFIG)
    chosen = [known[n] for n in views] if views else list(known.values())
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if not as_json:
            err.print(msg, markup=False, highlight=False)

    reports = run_verify(settings(ctx), chosen, chunk=chunk, rechecks=rechecks,
                         settle_s=settle, wait_s=wait, say=say)
    seconds = time.monotonic() - t0
    peak_mb = _peak_rss_mb()
    drift = sum(r.drift for r in reports)
    if as_json:
        print(json.dumps({"views": [
            {"view": r.view, "checked": r.checked, "missing": r.missing, "extra": r.extra,
             "different": r.different, "unsettled": r.unsettled, "examples": r.examples}
            for r in reports], "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb),
            "drift": drift}))
    else:
        t = table("view", "rows checked", "missing", "extra", "different", "unsettled")
        for r in reports:
            t.add_row(r.view, f"{r.checked:,}", str(r.missing), str(r.extra), str(r.different),
                      str(r.unsettled))
        out.print(t)
        for r in reports:
            for e in r.examples:
                out.print(f"  {r.view}: {e}", markup=False, highlight=False)
        checked = sum(r.checked for r in reports)
        verdict = "[red]DRIFT[/]" if drift else "[green]in sync[/]"
        out.print(f"{verdict}: {checked:,} rows in {seconds:.1f}s "
                  f"({checked / max(seconds, 1e-9):,.0f} rows/s), peak RSS {peak_mb:.0f} MB")
    if drift and repair:
        from app.control import Command, send, wait_carried_out

        s = settings(ctx)
        cmds = [Command("repair", r.view, tuple(r.keys[i:i + 10_000]))
                for r in reports if r.keys for i in range(0, len(r.keys), 10_000)]
        end = send(s, cmds)
        say(f"repair of {sum(len(c.keys) for c in cmds):,} row(s) sent to "
            f"{s.control_topic()}; waiting for the workers that own them")
        secs = wait_carried_out(s, {known[r.view].consumer for r in reports if r.keys},
                                end, timeout, say)
        say(f"repaired in {secs:.1f}s; run verify again to see it")
        return
    if drift:
        raise typer.Exit(EXIT_FAILED)


def _peak_rss_mb() -> float:
    """This process's peak resident memory: the kernel's high-water mark of its own address
    space (``getrusage`` would count the parent's image it was forked from)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ dead letters
def _dl_json(dl: Any, full: bool = False) -> dict[str, object]:
    doc: dict[str, object] = {
        "partition": dl.partition, "offset": dl.offset,
        "time": dt.datetime.fromtimestamp(dl.timestamp_ms / 1000, dt.UTC).isoformat(
            timespec="seconds"),
        "source": dl.source, "reason": dl.reason}
    if full:
        doc["key_hex"] = None if dl.key is None else dl.key.hex()
        doc["value_hex"] = None if dl.value is None else dl.value.hex()
        doc["value_bytes"] = None if dl.value is None else len(dl.value)
    return doc


@shards_cli.command("status")
def shards_status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every shard in every consumer database: its owner, epoch and written positions;
    and the workers now in the deployment's lease group."""
    from app.reshard import lease_members, shard_rows

    s = settings(ctx)
    rows = shard_rows(s)
    members = lease_members(s)
    if as_json:
        print(json.dumps({"deployment": s.worker_id, "workers": members, "shards": [
            {"consumer": r.consumer, "shard": r.shard, "of": r.shards, "owner": r.owner,
             "epoch": r.epoch, "positions": None if r.positions is None else
             {f"{t}[{p}]": o for (t, p), o in sorted(r.positions.items())}}
            for r in rows]}))
        return
    out.print(f"deployment {s.worker_id}: {len(members)} worker(s) in the lease group"
              + (": " + ", ".join(members) if members else ""), markup=False)
    t = table("consumer", "shard", "of", "owner", "epoch", "records written up to")
    for r in rows:
        pos = "never written" if r.positions is None else f"{sum(r.positions.values()):,}"
        t.add_row(r.consumer, str(r.shard), str(r.shards), r.owner, str(r.epoch), pos)
    out.print(t, markup=False, highlight=False)


@shards_cli.command("reshard")
def shards_reshard(
    ctx: typer.Context,
    count: Annotated[int, typer.Argument(min=1, max=1024, help="The new shard count.")],
    reset: Annotated[bool, typer.Option(
        help="Drop the written positions: every shard is rebuilt from the state by its "
        "first owner (after the source topics were re-created).")] = False,
) -> None:
    """Change the shard count, with every worker of the deployment stopped; the rows are
    carried over (README: "Running N workers")."""
    from app.reshard import ReshardError, reshard

    try:
        reshard(settings(ctx), count, reset=reset, say=lambda m: out.print(m, markup=False))
    except ReshardError as exc:
        fail(str(exc))


@dlq_cli.command("list")
def dlq_list(ctx: typer.Context, limit: Annotated[int, typer.Option(
        help="Only the last N (0: all).")] = 0, as_json: JsonOpt = False) -> None:
    """Every dead letter: offset, time, source record, reason."""
    from app.dlq import dead_letters

    s = settings(ctx)
    dls = dead_letters(s)
    shown = dls[-limit:] if limit else dls
    if as_json:
        print(json.dumps({"total": len(dls), "dead_letters": [_dl_json(d) for d in shown]}))
        return
    out.print(f"{len(dls)} dead letter(s) in {s.dead_letter_topic}"
              + (f"; the last {len(shown)}:" if len(shown) < len(dls) else ""), markup=False)
    if shown:
        t = table("offset", "time (UTC)", "source", "reason")
        for d in shown:
            reason = d.reason if len(d.reason) <= 90 else d.reason[:89] + "…"
            t.add_row(str(d.offset), str(_dl_json(d)["time"])[:19], d.source, reason)
        out.print(t, markup=False, highlight=False)


@dlq_cli.command("show")
def dlq_show(ctx: typer.Context, offset: int,
             partition: Annotated[int, typer.Option()] = 0, as_json: JsonOpt = False) -> None:
    """One dead letter in full (its bytes as hex)."""
    from app.dlq import dead_letters

    found = [d for d in dead_letters(settings(ctx))
             if d.offset == offset and d.partition == partition]
    if not found:
        fail(f"no dead letter at offset {offset} of partition {partition}")
    doc = _dl_json(found[0], full=True)
    if as_json:
        print(json.dumps(doc))
        return
    for k, v in doc.items():
        text = str(v)
        out.print(f"{k:>12}: {text if len(text) <= 200 else text[:200] + '…'}",
                  markup=False, highlight=False)


@dlq_cli.command("replay")
def dlq_replay(ctx: typer.Context, dry_run: Annotated[bool, typer.Option(
        help="Only say what would be replayed.")] = False, as_json: JsonOpt = False) -> None:
    """Put dead letters back on their source topic once the cause is fixed: each once,
    never one whose row changed since (superseded)."""
    from app.dlq import replay

    result = replay(settings(ctx), dry_run=dry_run)
    if as_json:
        print(json.dumps({"replayed": [_dl_json(d) for d in result.replayed],
                          "superseded": [_dl_json(d) for d in result.superseded],
                          "skipped": [dict(_dl_json(d), why=why) for d, why in result.skipped],
                          "dry_run": dry_run}))
        return
    verb = "would replay" if dry_run else "replayed"
    out.print(f"{verb} {len(result.replayed)}, superseded (the row changed since) "
              f"{len(result.superseded)}, skipped {len(result.skipped)}")
    for d, why in result.skipped:
        out.print(f"  skipped offset {d.offset}: {why}", markup=False)


# ------------------------------------------------------------------ schemas
@schemas_cli.command("check")
def schemas_check(
    ctx: typer.Context,
    proposed: Annotated[list[str] | None, typer.Option(
        metavar="TABLE.PART=FILE",
        help="A proposed writer schema of a declared table, e.g. TABLE.value=new.avsc "
             "(repeatable).")] = None,
    no_registry: Annotated[bool, typer.Option(
        help="Check only the --proposed files.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Do the registry's (or proposed) source schemas read as the views file's contracts?

    Runs the worker's own check (every declared column and the declared key, of its key
    type) on the latest schema of every declared table's subjects in the registry (and shows
    its compatibility rule), and on proposed writer schemas, so that a Product-service
    migration that would break the views is caught before it ships. Exit 1 if one does not.
    """
    from app.schemas_check import as_json as checks_json
    from app.schemas_check import check_proposed, check_registry

    checks = [] if no_registry else check_registry(settings(ctx))
    graph = settings(ctx).graph()
    for spec in proposed or []:
        name, _, path = spec.partition("=")
        tbl, _, part = name.partition(".")
        if not path:
            fail(f"--proposed {spec!r}: expected TABLE.PART=FILE", EXIT_CONFIG)
        try:
            checks.append(check_proposed(graph, tbl, part, Path(path).read_text()))
        except (OSError, ValueError) as exc:
            fail(f"--proposed {spec!r}: {exc}", EXIT_CONFIG)
    bad = [c for c in checks if not c.ok]
    if as_json:
        print(json.dumps({"ok": not bad, "checks": checks_json(checks)}))
    else:
        t = table("subject", "version", "compatibility", "result")
        for c in checks:
            t.add_row(c.subject, str(c.version) if c.version is not None else "-",
                      c.compatibility or "-",
                      "[green]reads as the contract[/]" if c.ok else "[red]NO[/]")
        out.print(t)
        for c in bad:
            out.print(f"  {c.subject}: {c.problem}", markup=False, highlight=False)
    if bad:
        raise typer.Exit(EXIT_FAILED)


# ------------------------------------------------------------------ demo
@demo_cli.command("seed")
def demo_seed(ctx: typer.Context,
              products: Annotated[int, typer.Option(help="Products to insert.")] = 1000,
              seed: Annotated[int, typer.Option(help="Random seed.")] = 1) -> None:
    """Insert a realistic catalogue: 8 root categories, 4 levels, 5 warranty types,
    N products with 1–5 batches each (progress bars on a terminal)."""
    from app.demo import seed as run_seed

    run_seed(settings(ctx), products=products, seed=seed)


# ------------------------------------------------------------------ entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (usage errors and known failures print one message,
    no traceback)."""
    try:
        cli(args=list(argv) if argv is not None else None, prog_name="viewsync")
    except SystemExit as exc:  # typer's standalone mode ends every run with one
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:
        from app.connectors import ConnectError
        from app.stack.manager import StackError

        if isinstance(exc, ConnectError | StackError | ConfigError | TimeoutError):
            err.print(f"viewsync: {exc}", markup=False, highlight=False)
            return EXIT_FAILED
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
