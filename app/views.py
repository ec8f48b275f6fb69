"""Declarative definitions: the source graph and what every consumer gets, in one file.

The views file (``schemas/views.toml`` bundled with the package; another with
``VIEWSYNC_VIEWS_FILE``) declares

* ``[sources.<table>]`` — the Product DB's tables: ``key`` (one column; ``key_type`` "int"
  or "string"), ``columns`` (every column a view reads or a reference follows),
  ``references.<name> = { column, to, required }`` (many-to-one; required by default) and
  ``hierarchy = { parent, separator, paths = { <path> = <label column> } }`` (a
  self-reference). See ``app.graph`` for the rules (visibility, optional branches, keys);
* ``[views.<consumer>.<table>]`` — one consumer table: ``grain`` (a source table: one view
  row per visible row of it), ``key`` (the view column holding the grain's key) and
  ``columns``, each ``{ name, source, type, nullable }`` where ``source`` is a path from the
  grain: reference names, then a column (``product.category.name``) or a path of a
  hierarchy (``product.category.path``);
* ``[consumers.<name>]`` — where the local stack keeps a consumer's database
  (:func:`stack_servers`).

:func:`load_definitions` validates the file as a whole, naming the view, the column and
the link of any error; :func:`bundled_views` reads the bundled file when first asked, never
at import. A views file of the earlier format (no ``[sources]``: grains ``product`` and
``batch``, sources ``<table>.<column>`` and ``category_path`` over the demo's four tables)
is still read, over the bundled file's sources.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property, lru_cache
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, get_args

from app.graph import Graph, Hierarchy, KeyType, Reference, Source, walk

#: A consumer column's type: these, ``varchar(N)`` and ``numeric(P,S)``.
ColumnType = str
_FIXED_TYPES = frozenset({"bigint", "int", "smallint", "text", "date", "boolean", "double",
                          "timestamp", "timestamptz", "time"})
_SIZED = re.compile(r"^(varchar\((\d{1,5})\)|numeric\((\d{1,2}),(\d{1,2})\))$")


def valid_type(t: str) -> bool:
    return t in _FIXED_TYPES or _SIZED.match(t) is not None


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    #: A path from the grain: reference names, then a column or a hierarchy's path.
    source: str
    type: ColumnType
    nullable: bool = False

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.source.split("."))


@dataclass(frozen=True, slots=True)
class Step:
    """One column compiled: the references it follows from the grain, then the column of the
    row it reaches (``column``) or that row's path in its hierarchy (``path``)."""

    name: str
    hops: tuple[Reference, ...]
    table: str
    column: str | None
    path: str | None


@dataclass(frozen=True)
class ViewDef:
    consumer: str
    table: str
    #: The source table one view row stands for.
    grain: str
    key: str
    columns: tuple[Column, ...]
    graph: Graph = field(repr=False, compare=False, default_factory=lambda: Graph(()))

    @property
    def name(self) -> str:
        return f"{self.consumer}.{self.table}"

    @property
    def grain_table(self) -> str:
        """The source table one row of this view stands for (its key's table)."""
        return self.grain

    @property
    def key_type(self) -> KeyType:
        return self.graph.source(self.grain).key_type

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        """Every column compiled (validated by :meth:`validate`)."""
        out = []
        start = self.graph.source(self.grain)
        for col in self.columns:
            hops = tuple(ref for _src, ref in walk(col.path, start, self.graph))
            end = self.graph.source(hops[-1].target) if hops else start
            last = col.path[-1]
            h = end.hierarchy
            if h is not None and last in h.paths:
                out.append(Step(col.name, hops, end.name, None, last))
            else:
                out.append(Step(col.name, hops, end.name, last, None))
        return tuple(out)

    @cached_property
    def _relevant(self) -> dict[str, frozenset[str]]:
        """Per source table, the columns whose change can alter a row of this view: what
        it reads, the references it follows, and everything visibility rests on (required
        references, hierarchy parents) for every row it reaches."""
        cols: dict[str, set[str]] = {}

        def visibility(name: str) -> None:
            src = self.graph.source(name)
            mine = cols.setdefault(name, set())
            if src.hierarchy is not None:
                mine.add(src.hierarchy.parent)
            for ref in src.references:
                if ref.required and ref.column not in mine:
                    mine.add(ref.column)
                    visibility(ref.target)

        visibility(self.grain)
        for step in self.steps:
            for ref in step.hops:
                cols.setdefault(ref.source, set()).add(ref.column)
                visibility(ref.target)
            mine = cols.setdefault(step.table, set())
            if step.column is not None:
                mine.add(step.column)
            else:
                h = self.graph.source(step.table).hierarchy
                assert h is not None and step.path is not None
                mine.update((h.parent, h.paths[step.path]))
        return {t: frozenset(c) for t, c in cols.items()}

    @property
    def depends_on(self) -> frozenset[str]:
        """Source tables whose changes can alter this view's rows."""
        return frozenset(self._relevant)

    def relevant(self, table: str) -> frozenset[str]:
        """Columns of ``table`` whose change can alter a row of this view."""
        return self._relevant.get(table, frozenset())

    def validate(self) -> None:
        """Reject a definition the projection could not serve; raise ``ValueError`` naming
        the column and the link that is wrong."""
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate column names")
        if self.key not in names:
            raise ValueError(f"{self.name}: key {self.key!r} is not a column")
        if self.grain not in self.graph:
            raise ValueError(f"{self.name}.grain: {self.grain!r} is not a source table "
                             f"(sources: {', '.join(self.graph.names)})")
        grain = self.graph.source(self.grain)
        for col in self.columns:
            try:
                hops = list(walk(col.path, grain, self.graph))
            except ValueError as exc:
                raise ValueError(f"{self.name}.{col.name}: source {col.source!r}: {exc}"
                                 ) from None
            end = self.graph.source(hops[-1][1].target) if hops else grain
            last = col.path[-1]
            paths = end.hierarchy.paths if end.hierarchy is not None else {}
            if last not in end.columns and last not in paths:
                raise ValueError(f"{self.name}.{col.name}: source {col.source!r}: {end.name} "
                                 f"has no column or path {last!r} (columns: "
                                 f"{', '.join(end.columns)})")
            optional = any(not ref.required for _s, ref in hops)
            if optional and not col.nullable:
                raise ValueError(f"{self.name}.{col.name}: source {col.source!r} follows an "
                                 "optional reference: the column must be nullable = true")
        key = self.column(self.key)
        if key.path != (grain.key,):
            raise ValueError(f"{self.name}.{self.key}: the key column must read the grain's "
                             f"key ({grain.key!r}), not {key.source!r}")

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


@dataclass(frozen=True)
class Definitions:
    """A views file: its source graph and its views."""

    graph: Graph
    views: tuple[ViewDef, ...]


class ViewFileError(ValueError):
    """The views file is invalid; the message names the view and the field."""


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_KEY_TYPES: tuple[KeyType, ...] = get_args(KeyType)


# --- sources -------------------------------------------------------------------------------


def parse_sources(doc: Mapping[str, Any], where: str = "views file") -> Graph:
    """The ``[sources.<table>]`` tables of a parsed views file, as a validated graph."""
    top = doc.get("sources")
    if not isinstance(top, dict) or not top:
        raise ViewFileError(f"{where}: no [sources.<table>] table")
    sources: list[Source] = []
    for name, spec in top.items():
        at = f"sources.{name}"
        if not _NAME.match(name) or not isinstance(spec, dict):
            raise ViewFileError(f"{where}: {at}: not a table name with a definition")
        unknown = set(spec) - {"key", "key_type", "columns", "references", "hierarchy"}
        if unknown:
            raise ViewFileError(f"{where}: {at}: unknown field(s) {sorted(unknown)}")
        key = spec.get("key")
        if isinstance(key, list):
            raise ViewFileError(f"{where}: {at}.key: a composite key ({', '.join(map(str, key))}"
                                ") is not supported: viewsync follows tables whose primary "
                                "key is one column")
        if not isinstance(key, str) or not _NAME.match(key):
            raise ViewFileError(f"{where}: {at}.key: the primary key's column name")
        key_type = spec.get("key_type", "int")
        if key_type not in _KEY_TYPES:
            raise ViewFileError(f"{where}: {at}.key_type: one of {list(_KEY_TYPES)}, not "
                                f"{key_type!r}")
        cols = spec.get("columns")
        if (not isinstance(cols, list) or not cols
                or not all(isinstance(c, str) and _NAME.match(c) for c in cols)):
            raise ViewFileError(f"{where}: {at}.columns: a list of column names")
        if len(set(cols)) != len(cols):
            raise ViewFileError(f"{where}: {at}.columns: duplicate names")
        columns = tuple(dict.fromkeys([key, *cols]))
        refs = _references(name, spec.get("references", {}), columns, f"{where}: {at}")
        hierarchy = _hierarchy(name, spec.get("hierarchy"), columns, key,
                               f"{where}: {at}.hierarchy")
        sources.append(Source(name, key, key_type, columns, refs, hierarchy))
    graph = Graph(tuple(sources))
    for ref in graph.references:
        at = f"{where}: sources.{ref.source}.references.{ref.name}"
        if ref.target not in graph:
            raise ViewFileError(f"{at}.to: {ref.target!r} is not a source table (sources: "
                                f"{', '.join(graph.names)})")
        if ref.target == ref.source:
            raise ViewFileError(f"{at}: a reference to its own table is a hierarchy: declare "
                                "it as [sources.<table>.hierarchy]")
    try:
        graph.check_acyclic()
    except ValueError as exc:
        raise ViewFileError(f"{where}: sources: {exc}") from None
    return graph


def _references(table: str, spec: Any, columns: tuple[str, ...], at: str
                ) -> tuple[Reference, ...]:
    if not isinstance(spec, dict):
        raise ViewFileError(f"{at}.references: references.<name> = {{ column, to, required }}")
    out = []
    for name, r in spec.items():
        here = f"{at}.references.{name}"
        if not _NAME.match(name) or not isinstance(r, dict):
            raise ViewFileError(f"{here}: {{ column, to, required }}")
        unknown = set(r) - {"column", "to", "required"}
        if unknown:
            raise ViewFileError(f"{here}: unknown field(s) {sorted(unknown)}")
        column, to, required = r.get("column"), r.get("to"), r.get("required", True)
        if column not in columns:
            raise ViewFileError(f"{here}.column: {column!r} is not one of {table}'s columns")
        if not isinstance(to, str):
            raise ViewFileError(f"{here}.to: the referenced source table")
        if not isinstance(required, bool):
            raise ViewFileError(f"{here}.required: true or false")
        out.append(Reference(table, name, str(column), to, required))
    return tuple(out)


def _hierarchy(table: str, spec: Any, columns: tuple[str, ...], key: str, at: str
               ) -> Hierarchy | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) - {"parent", "separator", "paths"}:
        raise ViewFileError(f"{at}: {{ parent, separator, paths = {{ <path> = <column> }} }}")
    parent, separator, paths = spec.get("parent"), spec.get("separator", " > "), spec.get("paths")
    if parent not in columns or parent == key:
        raise ViewFileError(f"{at}.parent: {parent!r} is not one of {table}'s columns")
    if not isinstance(separator, str) or not separator:
        raise ViewFileError(f"{at}.separator: a non-empty string")
    if not isinstance(paths, dict) or not paths:
        raise ViewFileError(f"{at}.paths: {{ <path name> = <label column> }}")
    for name, label in paths.items():
        if not _NAME.match(name) or name in columns:
            raise ViewFileError(f"{at}.paths.{name}: a path name that is not a column name")
        if label not in columns:
            raise ViewFileError(f"{at}.paths.{name}: {label!r} is not one of {table}'s columns")
    return Hierarchy(table, str(parent), separator, {str(k): str(v) for k, v in paths.items()})


# --- views ---------------------------------------------------------------------------------


#: The earlier format (no [sources]): its grains and sources over the demo's tables.
_LEGACY_GRAINS = {"product": "products", "batch": "batches"}
_LEGACY_HOPS = {
    "products": {"products": "", "categories": "category.", "warranty_types": "warranty."},
    "batches": {"batches": "", "products": "product.", "categories": "product.category.",
                "warranty_types": "product.warranty."},
}


def _legacy_source(grain: str, source: str) -> str:
    if source == "category_path":
        return _LEGACY_HOPS[grain]["categories"] + "path"
    table, _, column = source.partition(".")
    hop = _LEGACY_HOPS[grain].get(table)
    return source if hop is None or not column else hop + column


def parse_views(doc: Mapping[str, Any], where: str = "views file",
                graph: Graph | None = None) -> tuple[ViewDef, ...]:
    """The views of a parsed views file (``[views.<consumer>.<table>]`` tables) over
    ``graph`` (default: the file's own ``[sources]``)."""
    legacy = "sources" not in doc
    if graph is None:
        graph = parse_sources(doc, where)
    top = doc.get("views")
    if not isinstance(top, dict) or not top:
        raise ViewFileError(f"{where}: no [views.<consumer>.<table>] table")
    out: list[ViewDef] = []
    for consumer, tables in top.items():
        if not _NAME.match(consumer) or not isinstance(tables, dict):
            raise ViewFileError(f"{where}: views.{consumer}: not a consumer name with tables")
        for table, spec in tables.items():
            name = f"views.{consumer}.{table}"
            if not _NAME.match(table) or not isinstance(spec, dict):
                raise ViewFileError(f"{where}: {name}: not a table name with a definition")
            unknown = set(spec) - {"grain", "key", "columns"}
            if unknown:
                raise ViewFileError(f"{where}: {name}: unknown field(s) {sorted(unknown)}")
            grain = str(spec.get("grain"))
            if legacy:
                grain = _LEGACY_GRAINS.get(grain, grain)
            if grain not in graph:
                hint = (" (grains 'product'/'batch' and sources like 'products.sku' are the "
                        "earlier format, read only in a file without [sources])"
                        if grain in _LEGACY_GRAINS else "")
                raise ViewFileError(f"{where}: {name}.grain: a source table (one of "
                                    f"{', '.join(graph.names)}), not {spec.get('grain')!r}"
                                    f"{hint}")
            cols = spec.get("columns")
            if not isinstance(cols, list) or not cols:
                raise ViewFileError(f"{where}: {name}.columns: a list of columns")
            columns = []
            for i, c in enumerate(cols):
                at = f"{name}.columns[{i}]"
                if not isinstance(c, dict) or set(c) - {"name", "source", "type", "nullable"}:
                    raise ViewFileError(f"{where}: {at}: {{ name, source, type, nullable }}")
                if not _NAME.match(str(c.get("name", ""))):
                    raise ViewFileError(f"{where}: {at}.name: not a column name")
                if not isinstance(c.get("type"), str) or not valid_type(c["type"]):
                    raise ViewFileError(f"{where}: {at}.type: one of {sorted(_FIXED_TYPES)}, "
                                        f"varchar(N) or numeric(P,S), not {c.get('type')!r}")
                if not isinstance(c.get("source"), str) or not c["source"]:
                    raise ViewFileError(f"{where}: {at}.source: missing")
                source = _legacy_source(grain, c["source"]) if legacy else c["source"]
                columns.append(Column(name=c["name"], source=source, type=c["type"],
                                      nullable=bool(c.get("nullable", False))))
            view = ViewDef(consumer=consumer, table=table, grain=grain,
                           key=str(spec.get("key", "")), columns=tuple(columns), graph=graph)
            try:
                view.validate()
            except ValueError as exc:
                raise ViewFileError(f"{where}: {exc}") from None
            out.append(view)
    return tuple(out)


def parse_definitions(doc: Mapping[str, Any], where: str = "views file") -> Definitions:
    """A parsed views file as a whole: sources, views and consumers, validated."""
    parse_stack_servers(doc, where)
    if "sources" in doc:
        graph = parse_sources(doc, where)
    else:  # the earlier format: the demo's tables, as the bundled file declares them
        graph = parse_sources(_bundled_doc(), str(_bundled_file()))
    return Definitions(graph, parse_views(doc, where, graph))


def _read(path: Path | Traversable) -> dict[str, Any]:
    where = str(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ViewFileError(f"views file {where} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ViewFileError(f"views file {where} is not valid TOML: {exc}") from None


def _bundled_file() -> Traversable:
    from app.resources import bundled

    return bundled("schemas") / "views.toml"


@cache
def _bundled_doc() -> dict[str, Any]:
    return _read(_bundled_file())


def load_definitions(path: Path | Traversable | None = None) -> Definitions:
    """The sources and views of ``path`` (default: the bundled ``schemas/views.toml``);
    read again only when the file has changed."""
    if path is None:
        return bundled_definitions()
    if isinstance(path, Path):
        try:
            st = path.stat()
        except OSError:
            raise ViewFileError(f"views file {path} does not exist") from None
        return _definitions_of(path, st.st_mtime_ns, st.st_size)
    return parse_definitions(_read(path), str(path))


@lru_cache(maxsize=32)
def _definitions_of(path: Path, _mtime_ns: int, _size: int) -> Definitions:
    return parse_definitions(_read(path), str(path))


@cache
def bundled_definitions() -> Definitions:
    """The bundled file (``schemas/views.toml``): the demo's four tables and the three views
    of the contract. Read when first asked, not at import."""
    return parse_definitions(_bundled_doc(), str(_bundled_file()))


def load_views(path: Path | Traversable | None = None) -> tuple[ViewDef, ...]:
    """The views of ``path`` (default: the bundled ``schemas/views.toml``)."""
    return load_definitions(path).views


def bundled_views() -> tuple[ViewDef, ...]:
    """The bundled views (``schemas/views.toml``)."""
    return bundled_definitions().views


def view_named(name: str, views: Iterable[ViewDef]) -> ViewDef:
    for view in views:
        if view.name == name:
            return view
    raise KeyError(f"no view {name!r}")


def consumers(views: Iterable[ViewDef]) -> tuple[str, ...]:
    """The consumer names, in first-seen order."""
    return tuple(dict.fromkeys(v.consumer for v in views))


#: The servers of the local stack a consumer's database can be on: the consumers'
#: PostgreSQL server (the default) or the Purchase MariaDB.
StackServer = Literal["postgresql", "mariadb"]
_SERVERS: tuple[StackServer, ...] = get_args(StackServer)


def parse_stack_servers(doc: Mapping[str, Any], where: str = "views file"
                        ) -> dict[str, StackServer]:
    """The ``[consumers.<name>]`` tables of a parsed views file: consumer -> the server of
    the local stack its database is on (``stack_server``)."""
    top = doc.get("consumers", {})
    if not isinstance(top, dict):
        raise ViewFileError(f"{where}: consumers: [consumers.<name>] tables")
    out: dict[str, StackServer] = {}
    for consumer, spec in top.items():
        at = f"consumers.{consumer}"
        if not _NAME.match(consumer) or not isinstance(spec, dict):
            raise ViewFileError(f"{where}: {at}: not a consumer name with a table")
        unknown = set(spec) - {"stack_server"}
        if unknown:
            raise ViewFileError(f"{where}: {at}: unknown field(s) {sorted(unknown)}")
        server = spec.get("stack_server", "postgresql")
        if server not in _SERVERS:
            raise ViewFileError(f"{where}: {at}.stack_server: one of {list(_SERVERS)}, not "
                                f"{server!r}")
        out[consumer] = server
    return out


def stack_servers(path: Path | Traversable | None = None) -> dict[str, StackServer]:
    """Where the local stack keeps each consumer's database, by the ``[consumers]`` tables
    of the views file ``path`` (default, and for a file without them: the bundled file's).
    A consumer not listed: the consumers' PostgreSQL server."""
    doc = None if path is None else _read(path)
    if doc is None or "consumers" not in doc:
        return parse_stack_servers(_bundled_doc(), str(_bundled_file()))
    return parse_stack_servers(doc, str(path))
