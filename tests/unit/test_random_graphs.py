"""Any schema, not two: random graphs (tables with integer or string keys, required and
optional references of any shape that makes no cycle, hierarchies, two references to one
table, a reference column that is the table's own key) and random views over them (every
table a grain, columns reached through chains of up to three references, paths), written
as a views file; the incrementally kept views must equal the generic reference join
whatever the order of the changes, replays, restarts and crashes."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from app.views import Definitions, parse_definitions
from tests.unit.harness import Harness, Space, converge, generic_space, histories
from tests.unit.test_join import PROPERTY


@dataclass(frozen=True)
class Spec:
    text: str
    defs: Definitions
    space: Space


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    n = draw(st.integers(2, 4))
    string = [draw(st.booleans()) for _ in range(n)]
    hier = [draw(st.booleans()) for _ in range(n)]
    refs: list[list[tuple[str, int, bool]]] = []  # per table: (name, target, required)
    lines: list[str] = []
    for i in range(n):
        mine: list[tuple[str, int, bool]] = []
        for j in range(i):
            for copy in range(draw(st.integers(0, 2))):  # two references to one table too
                mine.append((f"r{j}_{copy}", j, draw(st.booleans())))
        refs.append(mine)
        key_is_ref = bool(mine) and string[i] == string[mine[0][1]] and draw(st.booleans())
        columns = ["c", *(f"{name}_id" for name, _j, _r in mine[int(key_is_ref):])]
        if hier[i]:
            columns.append("up")
        lines += [f"[sources.t{i}]", 'key = "id"',
                  f'key_type = "{"string" if string[i] else "int"}"',
                  f"columns = {columns!r}".replace("'", '"')]
        for k, (name, j, required) in enumerate(mine):
            # a 1:1 extension: the first reference's column is the table's own key
            column = "id" if key_is_ref and k == 0 else f"{name}_id"
            lines.append(f'references.{name} = {{ column = "{column}", to = "t{j}", '
                         f"required = {str(required).lower()} }}")
        if hier[i]:
            sep = draw(st.sampled_from([" > ", "/", "::"]))
            lines.append(f'hierarchy = {{ parent = "up", separator = "{sep}", '
                         'paths = { p = "c" } }')
        lines.append("")
    for i in range(n):
        cols = [("id", "id", False), ("c", "c", False)]
        for m in range(draw(st.integers(0, 4))):
            table, hops, optional = i, [], False
            for _ in range(draw(st.integers(1, 3))):
                if not refs[table]:
                    break
                name, j, required = draw(st.sampled_from(refs[table]))
                hops.append(name)
                optional = optional or not required
                table = j
            last = draw(st.sampled_from(["c", "p"] if hier[table] else ["c", "id"]))
            cols.append((f"x{m}", ".".join([*hops, last]), optional))
        if hier[i]:
            cols.append(("path", "p", False))
        lines += [f"[views.v.t{i}_view]", f'grain = "t{i}"', 'key = "id"', "columns = ["]
        for name, source, nullable in cols:
            lines.append(f'  {{ name = "{name}", source = "{source}", type = "text", '
                         f"nullable = {str(nullable).lower()} }},")
        lines += ["]", ""]
    text = "\n".join(lines)
    defs = parse_definitions(tomllib.loads(text), "random.toml")
    space = generic_space(defs.graph, null_required=True)
    return Spec(text, defs, space)


@PROPERTY
@given(spec=specs(), data=st.data())
def test_any_graph_converges_to_the_reference_join(spec: Spec, data: st.DataObject) -> None:
    history = data.draw(histories(spec.space), label="history")
    converge(Harness(spec.defs), history, data)
