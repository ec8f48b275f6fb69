"""The declared source graph: what the views file's [sources] say (tables, keys, references,
hierarchies), what is refused (naming the table and the link), and the shard of a key."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from app.graph import Graph, Hierarchy, Reference, Source, shard_of, walk
from app.views import ViewFileError, bundled_definitions, parse_definitions, parse_sources

GRAPH = bundled_definitions().graph


def test_the_bundled_graph() -> None:
    assert GRAPH.names == ("categories", "warranty_types", "products", "batches")
    products = GRAPH.source("products")
    assert (products.key, products.key_type) == ("id", "int")
    assert products.columns == ("id", "sku", "name", "category_id", "warranty_type_id", "unit",
                                "price", "status")  # the key first
    assert products.references == (
        Reference("products", "category", "category_id", "categories", True),
        Reference("products", "warranty", "warranty_type_id", "warranty_types", False))
    assert products.reference("warranty") is products.references[1]
    assert products.reference("nope") is None
    assert GRAPH.hierarchies == (
        Hierarchy("categories", "parent_id", " > ", {"path": "name"}),)
    assert GRAPH.index_columns == {
        "products.category": ("products", "category_id"),
        "products.warranty": ("products", "warranty_type_id"),
        "batches.product": ("batches", "product_id"),
        "categories^children": ("categories", "parent_id"),
    }
    assert [r.index for r in GRAPH.referrers("products")] == ["batches.product"]
    assert GRAPH.referrers("batches") == ()
    assert "products" in GRAPH and "brands" not in GRAPH
    with pytest.raises(KeyError, match="no source table 'brands'"):
        GRAPH.source("brands")


def test_walk_names_the_segment_that_is_wrong() -> None:
    batches = GRAPH.source("batches")
    hops = [ref.name for _src, ref in walk(("product", "category", "path"), batches, GRAPH)]
    assert hops == ["product", "category"]
    with pytest.raises(ValueError, match=re.escape(
            "products has no reference 'brand' (references: category, warranty)")):
        list(walk(("product", "brand", "name"), batches, GRAPH))


def test_the_fingerprint_changes_with_what_the_state_keeps() -> None:
    again = parse_definitions(tomllib.loads(BUNDLED)).graph
    assert again.fingerprint() == GRAPH.fingerprint()
    for edit in [('"price", "status"]', '"price", "status", "weight"]'),  # a column more
                 ('column = "warranty_type_id"', 'column = "unit"'),  # another link column
                 ('[sources.warranty_types]\nkey = "id"',
                  '[sources.warranty_types]\nkey = "id"\nkey_type = "string"')]:
        text = BUNDLED.replace(*edit)
        assert text != BUNDLED
        assert parse_definitions(tomllib.loads(text)).graph.fingerprint() != GRAPH.fingerprint()


def test_check_acyclic_names_the_cycle() -> None:
    def src(name: str, target: str) -> Source:
        return Source(name, "id", "int", ("id", "r"), (Reference(name, "r", "r", target),))

    graph = Graph((src("a", "b"), src("b", "c"), src("c", "a")))
    with pytest.raises(ValueError, match=re.escape("references form a cycle: a -> b -> c -> a")):
        graph.check_acyclic()
    Graph((src("a", "b"), src("b", "c"), Source("c", "id", "int", ("id",)))).check_acyclic()


# --- what [sources] refuses --------------------------------------------------------------

BUNDLED = (Path(__file__).resolve().parents[2] / "schemas" / "views.toml").read_text()

VIEW = """
[views.c.v]
grain = "a"
key = "id"
columns = [{ name = "id", source = "id", type = "bigint" }]
"""


@pytest.mark.parametrize(("sources", "message"), [
    ('[sources.a]\nkey = ["id", "region"]\ncolumns = ["name"]',
     "sources.a.key: a composite key (id, region) is not supported"),
    ('[sources.a]\ncolumns = ["name"]', "sources.a.key: the primary key's column name"),
    ('[sources.a]\nkey = "id"\nkey_type = "uuid"\ncolumns = ["name"]',
     "sources.a.key_type: one of ['int', 'string'], not 'uuid'"),
    ('[sources.a]\nkey = "id"\ncolumns = []', "sources.a.columns: a list of column names"),
    ('[sources.a]\nkey = "id"\ncolumns = ["x", "x"]', "sources.a.columns: duplicate names"),
    ('[sources.a]\nkey = "id"\ncolumns = ["bad name"]', "sources.a.columns"),
    ('[sources.a]\nkey = "id"\ncolumns = ["x"]\nindex = true', "sources.a: unknown field(s)"),
    ('[sources.a]\nkey = "id"\ncolumns = ["b_id"]\n'
     'references.b = { column = "b_id", to = "b" }',
     "sources.a.references.b.to: 'b' is not a source table (sources: a)"),
    ('[sources.a]\nkey = "id"\ncolumns = ["x"]\n'
     'references.b = { column = "b_id", to = "a2" }',
     "sources.a.references.b.column: 'b_id' is not one of a's columns"),
    ('[sources.a]\nkey = "id"\ncolumns = ["b_id"]\n'
     'references.b = { column = "b_id", to = "b", required = "yes" }',
     "sources.a.references.b.required: true or false"),
    ('[sources.a]\nkey = "id"\ncolumns = ["b_id"]\n'
     'references.b = { column = "b_id", to = "b", on_delete = "cascade" }',
     "sources.a.references.b: unknown field(s) ['on_delete']"),
    ('[sources.a]\nkey = "id"\ncolumns = ["parent_id"]\n'
     'references.parent = { column = "parent_id", to = "a" }',
     "sources.a.references.parent: a reference to its own table is a hierarchy: declare it "
     "as [sources.<table>.hierarchy]"),
    ('[sources.a]\nkey = "id"\ncolumns = ["b_id"]\nreferences.b = { column = "b_id", to = "b" }'
     '\n[sources.b]\nkey = "id"\ncolumns = ["c_id"]\n'
     'references.c = { column = "c_id", to = "c" }'
     '\n[sources.c]\nkey = "id"\ncolumns = ["a_id"]\n'
     'references.a = { column = "a_id", to = "a", required = false }',
     "sources: references form a cycle: a -> b -> c -> a (only a hierarchy may refer to its "
     "own table)"),
    ('[sources.a]\nkey = "id"\ncolumns = ["up"]\n'
     'hierarchy = { parent = "parent_id", paths = { path = "up" } }',
     "sources.a.hierarchy.parent: 'parent_id' is not one of a's columns"),
    ('[sources.a]\nkey = "id"\ncolumns = ["up"]\n'
     'hierarchy = { parent = "id", paths = { path = "up" } }',
     "sources.a.hierarchy.parent: 'id' is not one of a's columns"),
    ('[sources.a]\nkey = "id"\ncolumns = ["up", "name"]\n'
     'hierarchy = { parent = "up", separator = "", paths = { path = "name" } }',
     "sources.a.hierarchy.separator: a non-empty string"),
    ('[sources.a]\nkey = "id"\ncolumns = ["up", "name"]\n'
     'hierarchy = { parent = "up", paths = { path = "title" } }',
     "sources.a.hierarchy.paths.path: 'title' is not one of a's columns"),
    ('[sources.a]\nkey = "id"\ncolumns = ["up", "name"]\n'
     'hierarchy = { parent = "up", paths = { name = "name" } }',
     "sources.a.hierarchy.paths.name: a path name that is not a column name"),
    ('[sources.a]\nkey = "id"\ncolumns = ["up", "name"]\nhierarchy = { parent = "up" }',
     "sources.a.hierarchy.paths: { <path name> = <label column> }"),
    ('[sources]', "no [sources.<table>] table"),
])
def test_a_bad_source_is_refused_naming_the_table_and_the_link(sources: str,
                                                               message: str) -> None:
    with pytest.raises(ViewFileError, match=re.escape(message)):
        parse_definitions(tomllib.loads(sources + "\n" + VIEW))


def test_a_hierarchy_defaults_to_the_bundled_separator() -> None:
    graph = parse_sources(tomllib.loads(
        '[sources.a]\nkey = "id"\ncolumns = ["up", "name"]\n'
        'hierarchy = { parent = "up", paths = { path = "name" } }'))
    assert graph.source("a").hierarchy == Hierarchy("a", "up", " > ", {"path": "name"})
    assert graph.index_columns == {"a^children": ("a", "up")}


def test_a_reference_may_name_a_table_declared_later() -> None:
    graph = parse_sources(tomllib.loads(
        '[sources.items]\nkey = "id"\ncolumns = ["brand"]\n'
        'references.brand = { column = "brand", to = "brands" }\n'
        '[sources.brands]\nkey = "code"\nkey_type = "string"\ncolumns = ["name"]\n'))
    assert graph.names == ("items", "brands")
    assert graph.referrers("brands")[0].index == "items.brand"


def test_two_references_to_one_table_are_told_apart_by_their_names() -> None:
    graph = parse_sources(tomllib.loads(
        '[sources.countries]\nkey = "iso"\nkey_type = "string"\ncolumns = ["name"]\n'
        '[sources.flights]\nkey = "id"\ncolumns = ["src", "dst"]\n'
        'references.origin = { column = "src", to = "countries" }\n'
        'references.destination = { column = "dst", to = "countries", required = false }\n'))
    assert [(r.name, r.column, r.required) for r in graph.referrers("countries")] == [
        ("origin", "src", True), ("destination", "dst", False)]
    assert set(graph.index_columns) == {"flights.origin", "flights.destination"}


# --- shards --------------------------------------------------------------------------------


def test_an_integer_key_is_its_own_shard_modulo_the_count() -> None:
    assert shard_of(10, 4) == 2
    assert shard_of(2**62 + 3, 4) == 3
    assert [shard_of(k, 12) for k in range(24)] == [k % 12 for k in range(24)]


def test_a_string_key_shards_by_crc32_of_its_utf8_bytes() -> None:
    # CRC-32 (zlib.crc32) of the UTF-8 bytes, computed once: the same in every process
    assert shard_of("acme", 12) == 2  # crc32(b"acme") == 96778814
    assert shard_of("ACME", 12) == 6  # crc32(b"ACME") == 860968842: another key
    assert shard_of("Ünï", 12) == 8  # crc32("Ünï".encode()) == 2079778772
    assert shard_of("", 12) == 0
    assert shard_of("10", 4) != shard_of(10, 4)  # a string key is never read as a number


def test_string_shards_do_not_depend_on_the_process_hash_seed() -> None:
    code = "from app.graph import shard_of; print([shard_of(k, 7) for k in ('a','acme','ZZ')])"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": seed, "PATH": ""},
                           cwd=Path(__file__).resolve().parents[2]).stdout
            for seed in ("1", "2", "3")}
    assert len(outs) == 1


# --- index names a reference could clash with --------------------------------------------

CHILDREN_REF = """
[sources.owners]
key = "id"
columns = ["name"]

[sources.nodes]
key = "id"
columns = ["up", "label", "owner_id"]
references.children = { column = "owner_id", to = "owners" }
hierarchy = { parent = "up", paths = { path = "label" } }

[views.c.node_view]
grain = "nodes"
key = "id"
columns = [
  { name = "id", source = "id", type = "bigint" },
  { name = "owner", source = "children.name", type = "text" },
]
"""


def test_a_reference_named_children_of_a_hierarchy_table_is_refused_or_kept_apart() -> None:
    from tests.unit.harness import Harness

    try:
        defs = parse_definitions(tomllib.loads(CHILDREN_REF))
    except ViewFileError:
        return  # refused, naming the clash: fine too
    assert len(defs.graph.index_columns) == 2  # one reverse index per reference + hierarchy
    h = Harness(defs)
    h.put("owners", {"id": 1, "name": "A"})
    h.put("nodes", {"id": 10, "up": None, "label": "x", "owner_id": 1})
    h.put("owners", {"id": 1, "name": "B"})
    assert h.view("c.node_view")[10]["owner"] == "B"
    h.check()
