"""The local stack's consumer databases come from the views file (no server needed)."""

from __future__ import annotations

from pathlib import Path

from app.settings import load_settings
from app.stack.manager import Stack

ROOT = Path(__file__).resolve().parents[3]


def test_every_consumer_the_views_file_names_gets_a_database_and_an_env_line(
        tmp_path: Path) -> None:
    s = load_settings(views_file=ROOT / "schemas" / "examples" / "catalog" / "views.toml",
                      state_dir=tmp_path)
    st = Stack(s)
    assert st.consumers_on("postgresql") == ["shop"]
    assert st.consumers_on("mariadb") == ["warehouse"]
    lines = "\n".join(st.env_lines())
    assert "VIEWSYNC_SHOP_DB_URL=" in lines and "/shop" in lines
    assert "VIEWSYNC_WAREHOUSE_DB_URL=" in lines and "/warehouse" in lines
    assert "VIEWSYNC_ORDER_DB_URL" not in lines


def test_the_bundled_file_keeps_the_order_and_purchase_databases(tmp_path: Path) -> None:
    st = Stack(load_settings(state_dir=tmp_path))
    assert st.consumers_on("postgresql") == ["order"]
    assert st.consumers_on("mariadb") == ["purchase"]
