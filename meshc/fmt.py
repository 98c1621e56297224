"""`meshc fmt`: one canonical layout for .mesh files, keeping every comment.

The layout is chosen for review diffs: one statement per line, two-space indents, single
spaces between tokens, no column alignment (aligning `->` would turn a one-line change into a
many-line diff). Blank lines the author left between statements are kept (at most one), and
top-level blocks are always separated by one. Short `version` blocks stay on one line.

Guarantees (tested with hypothesis): fmt(fmt(x)) == fmt(x) and parse(fmt(x)) == parse(x).
"""

from __future__ import annotations

import bisect

from lark import Token, Tree

from meshc.ast import first_token, last_token, quote, unquote
from meshc.parse import parse_text

INDENT = "  "
BLOCKS = frozenset({"mesh_decl", "overlay_mesh", "policy_decl", "service_decl", "overlay_service",
                    "external_decl", "version", "route", "rule_body"})
TOP_BLOCKS = frozenset({"mesh_decl", "overlay_mesh", "policy_decl", "service_decl", "overlay_service",
                        "external_decl"})
INLINE_WIDTH = 100


def _tokens(node: Tree | Token) -> list[Token]:
    if isinstance(node, Token):
        return [node]
    out: list[Token] = []
    for c in node.children:
        out += _tokens(c)
    return out


def _join(tokens: list[Token]) -> str:
    """Tokens with canonical spacing: none before ',' or around '.' and '=' (labels)."""
    parts: list[str] = []
    prev = ""
    for i, tok in enumerate(tokens):
        text = quote(unquote(str(tok))) if tok.type == "STRING" else str(tok)
        if text == "," and i + 1 < len(tokens) and str(tokens[i + 1]) == "}":
            continue  # trailing comma in a split
        if parts and not (text in (",", ".", "=") or prev in (".", "=")):
            parts.append(" ")
        parts.append(text)
        prev = text
    return "".join(parts)


def _line(tok: Token) -> int:
    return tok.line or 0


def _first_line(node: Tree | Token) -> int:
    return (node if isinstance(node, Token) else first_token(node)).line or 0


def _last_line(node: Tree | Token) -> int:
    tok = node if isinstance(node, Token) else last_token(node)
    return tok.end_line or tok.line or 0


class Printer:
    def __init__(self, comments: list[Token], tree: Tree):
        # A comment on the same line as an earlier token trails that token's line; any other
        # comment stands on its own line before what follows it.
        tokens = sorted(_tokens(tree), key=lambda t: t.start_pos or 0)
        starts = [t.start_pos or 0 for t in tokens]
        self.trailing: dict[int, Token] = {}
        self.leading: list[Token] = []
        for c in sorted(comments, key=lambda c: c.start_pos or 0):
            i = bisect.bisect_left(starts, c.start_pos or 0) - 1
            prev = tokens[i] if i >= 0 else None
            if prev is not None and (prev.end_line or prev.line) == _line(c):
                self.trailing[prev.start_pos or 0] = c
            else:
                self.leading.append(c)
        self.next_comment = 0
        self.lines: list[str] = []
        self.last_source_line = 0

    # ----------------------------------------------------------------- comments and blank lines
    def _flush_before(self, line: int, depth: int) -> None:
        """Emit the stand-alone comments that come before source line `line`."""
        while self.next_comment < len(self.leading) and _line(self.leading[self.next_comment]) < line:
            c = self.leading[self.next_comment]
            self._blank_if_gap(_line(c))
            self.lines.append(INDENT * depth + str(c))
            self.last_source_line = _line(c)
            self.next_comment += 1

    def _emit(self, text: str, depth: int, last: Token | list[Token]) -> None:
        """One output line; the comments that trailed any of its tokens follow it."""
        toks = last if isinstance(last, list) else [last]
        notes = [str(self.trailing[t.start_pos or 0]) for t in toks if (t.start_pos or 0) in self.trailing]
        # several source lines joined into one: all but the last comment go on lines above it
        self.lines += [INDENT * depth + n for n in notes[:-1]]
        self.lines.append(INDENT * depth + text + ("  " + notes[-1] if notes else ""))
        self.last_source_line = max((t.end_line or t.line or 0) for t in toks)

    def _blank_if_gap(self, line: int) -> None:
        if self.last_source_line and line - self.last_source_line > 1 and self.lines and self.lines[-1] != "" \
                and not self.lines[-1].endswith("{"):
            self.lines.append("")

    # ----------------------------------------------------------------- nodes
    def statement(self, node: Tree, depth: int, top: bool = False) -> None:
        start = _first_line(node)
        self._flush_before(start, depth)
        if top and node.data in TOP_BLOCKS and self.lines and self.lines[-1] != "" \
                and not self.lines[-1].lstrip().startswith("#"):
            self.lines.append("")
        else:
            self._blank_if_gap(start)
        if node.data in BLOCKS:
            self.block(node, depth)
        elif node.data == "rule":
            self.rule(node, depth)
        else:
            self._flush_before(_last_line(node), depth)  # comments inside a multi-line statement
            toks = _tokens(node)
            self._emit(_join(toks), depth, toks)

    def _body(self, header: list[Token], body: list[Tree], close: Token, depth: int) -> None:
        """`header {`, the statements one per line, `}`."""
        self._flush_before(header[-1].line or 0, depth)
        empty = not body and not (self.next_comment < len(self.leading)
                                  and _line(self.leading[self.next_comment]) < (close.line or 0))
        if empty:
            self._emit(_join(header[:-1]) + " {}", depth, [*header, close])
            return
        self._emit(_join(header[:-1]) + " {", depth, header)
        for b in body:
            self.statement(b, depth + 1)
        self._flush_before(close.line or 0, depth + 1)
        self._emit("}", depth, close)

    def block(self, node: Tree, depth: int) -> None:
        children = node.children
        lb = next(i for i, c in enumerate(children) if isinstance(c, Token) and c == "{")
        header = [t for c in children[:lb + 1] for t in _tokens(c)]
        body = [c for c in children[lb + 1:-1] if isinstance(c, Tree)]
        close = children[-1]
        assert isinstance(close, Token)
        if node.data == "version":
            toks = _tokens(node)
            inline = f"{_join(header[:-1])} {{ {' '.join(_join(_tokens(b)) for b in body)} }}" if body \
                else f"{_join(header[:-1])} {{}}"
            inner = [t for t in toks[:-1] if (t.start_pos or 0) in self.trailing]
            has_comments = inner or any(_first_line(node) <= _line(c) <= _last_line(node)
                                        for c in self.leading[self.next_comment:])
            if len(INDENT * depth + inline) <= INLINE_WIDTH and not has_comments:
                self._emit(inline, depth, close)
                return
        self._body(header, body, close, depth)

    def rule(self, node: Tree, depth: int) -> None:
        last = node.children[-1]
        body = last if isinstance(last, Tree) and last.data == "rule_body" else None
        head = [t for c in (node.children[:-1] if body is not None else node.children) for t in _tokens(c)]
        if body is None:
            self._flush_before(_last_line(node), depth)
            self._emit(_join(head), depth, head)
            return
        children = body.children
        brace, close = children[0], children[-1]
        assert isinstance(brace, Token) and isinstance(close, Token)
        self._body([*head, brace], [b for b in children[1:-1] if isinstance(b, Tree)], close, depth)

    def finish(self) -> str:
        self._flush_before(10**12, 0)
        while self.lines and self.lines[-1] == "":
            self.lines.pop()
        return "\n".join(self.lines) + "\n" if self.lines else ""


def format_text(text: str, path: str = "<input>") -> str:
    """The canonical form of one file's text; raises MeshcError if it does not parse."""
    parsed = parse_text(text, path)
    assert parsed.tree is not None
    p = Printer(parsed.comments, parsed.tree)
    for decl in parsed.tree.children:
        if isinstance(decl, Tree):
            p.statement(decl, 0, top=True)
    return p.finish()
