"""Declarative view definitions: what every consumer gets, in one place.

Each :class:`ViewDef` names a consumer database, a target table, its key and its columns,
and for each column where its value comes from. The definitions are data: a TOML file,
``schemas/views.toml`` by default (bundled with the package), another with
``VIEWSYNC_VIEWS_FILE``; :func:`load_views` validates it, naming the view and the field of
any error (:func:`bundled_views`: the bundled file, read when first asked, never at
import). Adding a view or a column is an edit of that file; the join engine, the
projection and the sink read these definitions, and the sink creates missing target tables
and adds missing columns from them. The file's ``[consumers.<name>]`` tables say where the
local stack keeps a consumer's database (:func:`stack_servers`).

Column sources:

* ``"<table>.<column>"`` with ``<table>`` one of ``products``, ``categories``,
  ``warranty_types`` and, for batch views, ``batches``;
* ``"category_path"``: the names from the root down to the product's category, joined by
  ``" > "`` (see ``app.project.category_path``).

Joins are fixed by the contract: a product joins its category (inner, and the category
must have a path) and its warranty type (left); a batch joins its product (inner, the
product must be visible).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache, cached_property
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, get_args

from app.changes import SOURCE_TABLES, SourceTable

ColumnType = Literal[
    "bigint", "int", "text", "varchar(16)", "varchar(64)", "varchar(255)", "numeric(12,2)", "date"
]


class Grain(StrEnum):
    """What one view row stands for."""

    PRODUCT = "product"
    BATCH = "batch"


CATEGORY_PATH = "category_path"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    source: str
    type: ColumnType
    nullable: bool = False

    @property
    def source_table(self) -> SourceTable | None:
        """The source table this column reads, or ``None`` for ``category_path``."""
        if self.source == CATEGORY_PATH:
            return None
        table = self.source.split(".", 1)[0]
        for known in SOURCE_TABLES:
            if table == known:
                return known
        raise ValueError(f"column {self.name!r}: unknown source table in {self.source!r}")

    @property
    def source_column(self) -> str:
        return self.source.split(".", 1)[1] if "." in self.source else self.source


@dataclass(frozen=True)
class ViewDef:
    consumer: str
    table: str
    grain: Grain
    key: str
    columns: tuple[Column, ...]

    @property
    def name(self) -> str:
        return f"{self.consumer}.{self.table}"

    @property
    def grain_table(self) -> SourceTable:
        """The source table one row of this view stands for (its key's table)."""
        return "batches" if self.grain is Grain.BATCH else "products"

    @cached_property
    def depends_on(self) -> frozenset[SourceTable]:
        """Source tables whose changes can alter this view's rows.

        Visibility always depends on products and categories (the category path), and a
        batch view on batches too, whatever columns are listed.
        """
        tables: set[SourceTable] = {"products", "categories", self.grain_table}
        for col in self.columns:
            t = col.source_table
            if t is not None:
                tables.add(t)
        return frozenset(tables)

    def relevant(self, table: SourceTable) -> frozenset[str]:
        """Columns of ``table`` whose change can alter a row of this view: those it reads,
        the join columns, and what the category path is made of (when it has one)."""
        return self._relevant.get(table, frozenset())

    @cached_property
    def _relevant(self) -> dict[SourceTable, frozenset[str]]:
        cols: dict[SourceTable, set[str]] = {
            "products": {"category_id", "warranty_type_id"},
            "categories": {"parent_id"},
            "warranty_types": set(),
            "batches": {"product_id"} if self.grain is Grain.BATCH else set(),
        }
        for col in self.columns:
            table = col.source_table
            if table is None:
                cols["categories"].add("name")
            else:
                cols[table].add(col.source_column)
        return {t: frozenset(c) for t, c in cols.items() if t in self.depends_on}

    def validate(self) -> None:
        """Reject a definition the projection could not serve; raise ``ValueError``."""
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate column names")
        if self.key not in names:
            raise ValueError(f"{self.name}: key {self.key!r} is not a column")
        for col in self.columns:
            table = col.source_table  # raises for an unknown table
            if table == "batches" and self.grain is Grain.PRODUCT:
                raise ValueError(f"{self.name}.{col.name}: a product view cannot read batches")
            if table is not None and not col.source_column:
                raise ValueError(f"{self.name}.{col.name}: no source column")

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


class ViewFileError(ValueError):
    """The views file is invalid; the message names the view and the field."""


_TYPES = set(get_args(ColumnType))
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def parse_views(doc: Mapping[str, Any], where: str = "views file") -> tuple[ViewDef, ...]:
    """The views of a parsed views file (``[views.<consumer>.<table>]`` tables)."""
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
            try:
                grain = Grain(str(spec.get("grain")))
            except ValueError:
                raise ViewFileError(f"{where}: {name}.grain: one of "
                                    f"{[g.value for g in Grain]}, not {spec.get('grain')!r}"
                                    ) from None
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
                if c.get("type") not in _TYPES:
                    raise ViewFileError(f"{where}: {at}.type: one of {sorted(_TYPES)}, not "
                                        f"{c.get('type')!r}")
                if not isinstance(c.get("source"), str):
                    raise ViewFileError(f"{where}: {at}.source: missing")
                columns.append(Column(name=c["name"], source=c["source"], type=c["type"],
                                      nullable=bool(c.get("nullable", False))))
            view = ViewDef(consumer=consumer, table=table, grain=grain,
                           key=str(spec.get("key", "")), columns=tuple(columns))
            try:
                view.validate()
            except ValueError as exc:
                raise ViewFileError(f"{where}: {exc}") from None
            out.append(view)
    return tuple(out)


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


def load_views(path: Path | Traversable | None = None) -> tuple[ViewDef, ...]:
    """The views of ``path`` (default: the bundled ``schemas/views.toml``)."""
    if path is None:
        return bundled_views()
    return _views_of(_read(path), str(path))


@cache
def bundled_views() -> tuple[ViewDef, ...]:
    """The bundled views (``schemas/views.toml``): the three of the contract. Read when
    first asked, not at import."""
    return _views_of(_bundled_doc(), str(_bundled_file()))


def _views_of(doc: Mapping[str, Any], where: str) -> tuple[ViewDef, ...]:
    parse_stack_servers(doc, where)  # a views file is valid as a whole
    return parse_views(doc, where)


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
