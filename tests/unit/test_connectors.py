"""The connector config as rendered: its table list and its partitioned topics come from
the views file, for the bundled example and for any other schema."""

from __future__ import annotations

import re
from pathlib import Path

from app.connectors import SOURCE_CONFIG, partitioned_tables, render
from app.settings import load_settings

SHOP = """
[sources.brands]
key = "code"
key_type = "string"
columns = ["name"]

[sources.items]
key = "id"
columns = ["title", "brand_code"]
references.brand = { column = "brand_code", to = "brands" }

[views.shop.item_view]
grain = "items"
key = "id"
columns = [
  { name = "id", source = "id", type = "bigint" },
  { name = "brand", source = "brand.name", type = "text" },
]
"""


def test_the_bundled_tables_are_captured_and_the_grains_partitioned() -> None:
    s = load_settings()
    _, config = render(SOURCE_CONFIG, s)
    names = s.graph().names
    assert config["table.include.list"].split(",") == [f"{s.source_database}.{t}"
                                                       for t in names]
    keyed = re.compile(config["topic.creation.keyed.include"])
    grains = {v.grain for v in s.views()}
    assert set(partitioned_tables(s)) == grains
    for t in names:
        assert bool(keyed.fullmatch(s.topic(t))) == (t in grains), t
    assert config["topic.creation.keyed.partitions"] == str(s.source_partitions)


def test_another_schema_names_only_its_own_tables(tmp_path: Path) -> None:
    views = tmp_path / "views.toml"
    views.write_text(SHOP)
    s = load_settings(views_file=views, topic_prefix="shop-1.x", source_database="shopdb")
    _, config = render(SOURCE_CONFIG, s)
    assert config["table.include.list"] == "shopdb.brands,shopdb.items"
    keyed = re.compile(config["topic.creation.keyed.include"])
    assert keyed.fullmatch("shop-1.x.shopdb.items")
    assert not keyed.fullmatch("shop-1.x.shopdb.brands")
    assert not keyed.fullmatch("shop-1Xx.shopdb.items")  # the prefix's dots are literal
    assert partitioned_tables(s) == ("items",)
