"""Inline suppressions: `# meshc: ignore[W205]` silences a warning someone has judged.

A comment `# meshc: ignore[CODE, CODE...]` applies to the warnings with those codes that start
on its line and, when the line opens a declaration or a block statement (`service api {  #
meshc: ignore[W209]`, `route {  # ...`), to those that start anywhere inside it. Only warnings
can be silenced: an error means the mesh cannot be compiled as written. `meshc check
--show-suppressed` prints what was silenced. The comments are found with the same scan `fmt`
uses (a `#` inside a string is not a comment).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshc import ast as A
from meshc.diagnostics import Diagnostic
from meshc.parse import COMMENT_OR_STRING

_IGNORE = re.compile(r"#\s*meshc:\s*ignore\[([A-Za-z0-9_,\s]*)\]")


@dataclass(frozen=True)
class Suppression:
    codes: frozenset[str]
    first_line: int
    last_line: int


def suppressions(text: str, decls: Sequence[object]) -> list[Suppression]:
    """Every `# meshc: ignore[...]` comment of one file, with the lines it covers."""
    if "meshc:" not in text:  # nearly always: one scan
        return []
    found: list[tuple[int, frozenset[str]]] = []
    for m in COMMENT_OR_STRING.finditer(text):
        ignore = _IGNORE.match(m.group()) if m.group().startswith("#") else None
        if ignore:
            codes = frozenset(c.strip().upper() for c in ignore.group(1).split(",") if c.strip())
            found.append((text.count("\n", 0, m.start()) + 1, codes))
    if not found:
        return []
    extent = _block_extents(decls)
    return [Suppression(codes, line, extent.get(line, line)) for line, codes in found]


def _block_extents(decls: Iterable[object]) -> dict[int, int]:
    """First line -> last line of every declaration and of the statements in their blocks."""
    out: dict[int, int] = {}

    def note(node: object) -> None:
        span = getattr(node, "span", None)
        if span is not None and span.end_line > span.line:
            out[span.line] = max(out.get(span.line, span.line), span.end_line)

    for decl in decls:
        note(decl)
        for stmt in getattr(decl, "stmts", ()) or ():
            note(stmt)
            if isinstance(stmt, A.RouteDecl):
                for rule in stmt.rules:
                    note(rule)
    return out


def apply(diagnostics: Iterable[Diagnostic], by_file: dict[str, list[Suppression]]
          ) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """(kept, suppressed): warnings a suppression of their file covers are set apart."""
    kept: list[Diagnostic] = []
    suppressed: list[Diagnostic] = []
    for d in diagnostics:
        rules = by_file.get(d.span.file)
        if rules and d.severity == "warning" and any(
                d.code in s.codes and s.first_line <= d.span.line <= s.last_line for s in rules):
            suppressed.append(d)
        else:
            kept.append(d)
    return kept, suppressed
