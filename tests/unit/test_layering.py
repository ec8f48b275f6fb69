"""The layering the code promises: the runtime never imports the development stack, the pure
core imports no Kafka, Faust or SQL library, and no private name of faust, mode or aiokafka
is used anywhere."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
RUNTIME = ["app.worker", "app.host", "app.wiring", "app.loop", "app.ownership", "app.pipeline",
           "app.restore", "app.sink", "app.decode", "app.state", "app.join", "app.project",
           "app.views", "app.changes", "app.web", "app.status_model", "app.topic_range",
           "app.kafka_io", "app.messages"]
PURE = ["app.graph", "app.changes", "app.views", "app.join", "app.project", "app.positions",
        "app.records"]


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=APP.parent)
    return set(out.stdout.split())


def test_the_runtime_imports_nothing_from_the_development_stack() -> None:
    loaded = _loaded_after_import(RUNTIME)
    assert "app.worker" in loaded
    assert not {m for m in loaded if m.startswith("app.stack")}


def test_the_pure_core_imports_no_kafka_faust_or_sql() -> None:
    loaded = _loaded_after_import(PURE)
    for lib in ("faust", "mode", "aiokafka", "confluent_kafka", "sqlalchemy", "rocksdict"):
        assert lib not in loaded, f"the pure core pulls in {lib}"


def test_no_private_names_of_faust_mode_or_aiokafka() -> None:
    libs = ("faust", "mode", "aiokafka")
    for path in APP.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in libs:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {node.module}"
                assert not any(p.startswith("_") for p in (node.module or "").split(".")), path
