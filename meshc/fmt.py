"""`meshc fmt`: one canonical layout for .mesh files, keeping every comment.

The layout is chosen for review diffs: one statement per line, two-space indents, single
spaces between tokens, no column alignment (aligning `->` would turn a one-line change into a
many-line diff). Blank lines the author left between statements are kept (at most one), and
top-level blocks are always separated by one. Short `version` blocks stay on one line.

Guarantees (tested with hypothesis): fmt(fmt(x)) == fmt(x) and parse(fmt(x)) == parse(x).
"""

from __future__ import annotations

from lark import Token, Tree

from meshc.ast import _unquote, quote
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
        text = quote(_unquote(str(tok))) if tok.type == "STRING" else str(tok)
        if text == "," and i + 1 < len(tokens) and str(tokens[i + 1]) == "}":
            continue  # trailing comma in a split
        if parts and not (text in (",", ".", "=") or prev in (".", "=")):
            parts.append(" ")
        parts.append(text)
        prev = text
    return "".join(parts)


def _first_line(node: Tree | Token) -> int:
    return node.line if isinstance(node, Token) else node.meta.line  # type: ignore[return-value]


def _last_line(node: Tree | Token) -> int:
    return (node.end_line or node.line) if isinstance(node, Token) else node.meta.end_line  # type: ignore[return-value]


class Printer:
    def __init__(self, comments: list[Token]):
        self.comments = sorted(comments, key=lambda c: (c.line, c.column))
        self.next_comment = 0
        self.lines: list[str] = []
        self.last_source_line = 0

    # ----------------------------------------------------------------- comments and blank lines
    def _flush_before(self, line: int, depth: int) -> None:
        """Emit the comments that stand before source line `line`."""
        while self.next_comment < len(self.comments) and self.comments[self.next_comment].line < line:
            c = self.comments[self.next_comment]
            self._blank_if_gap(c.line)
            self.lines.append(INDENT * depth + str(c))
            self.last_source_line = c.line
            self.next_comment += 1

    def _trailing(self, line: int) -> None:
        """A comment on the same source line as what was just printed goes after it."""
        if self.next_comment < len(self.comments) and self.comments[self.next_comment].line == line:
            self.lines[-1] += "  " + str(self.comments[self.next_comment])
            self.next_comment += 1

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
            self.lines.append(INDENT * depth + _join(_tokens(node)))
            self.last_source_line = _last_line(node)
            self._trailing(self.last_source_line)

    def block(self, node: Tree, depth: int) -> None:
        children = node.children
        lb = next(i for i, c in enumerate(children) if isinstance(c, Token) and c == "{")
        header = _join([t for c in children[:lb] for t in _tokens(c)])
        body = [c for c in children[lb + 1:-1] if isinstance(c, Tree)]
        close = children[-1]
        assert isinstance(close, Token)
        if node.data == "version":
            inline = f"{header} {{ {' '.join(_join(_tokens(b)) for b in body)} }}" if body else f"{header} {{ }}"
            has_comments = any(_first_line(node) <= c.line <= _last_line(node) for c in
                               self.comments[self.next_comment:])
            if len(INDENT * depth + inline) <= INLINE_WIDTH and not has_comments:
                self.lines.append(INDENT * depth + inline)
                self.last_source_line = _last_line(node)
                self._trailing(self.last_source_line)
                return
        brace = children[lb]
        assert isinstance(brace, Token)
        self._flush_before(brace.line or 0, depth)
        self.lines.append(INDENT * depth + header + " {")
        self.last_source_line = brace.line or 0
        self._trailing(self.last_source_line)
        for b in body:
            self.statement(b, depth + 1)
        self._flush_before(close.line or 0, depth + 1)
        self.lines.append(INDENT * depth + "}")
        self.last_source_line = close.line or 0
        self._trailing(self.last_source_line)

    def rule(self, node: Tree, depth: int) -> None:
        body = node.children[-1] if isinstance(node.children[-1], Tree) and node.children[-1].data == "rule_body" \
            else None
        head = node.children[:-1] if body is not None else node.children
        toks = [t for c in head for t in _tokens(c)]
        if body is None:
            self._flush_before(_last_line(node), depth)
            self.lines.append(INDENT * depth + _join(toks))
            self.last_source_line = _last_line(node)
            self._trailing(self.last_source_line)
            return
        # `when ... -> dest {` then the body's statements, then `}`
        children = body.children
        brace, close = children[0], children[-1]
        assert isinstance(brace, Token) and isinstance(close, Token)
        self._flush_before(brace.line or 0, depth)
        self.lines.append(INDENT * depth + _join(toks) + " {")
        self.last_source_line = brace.line or 0
        self._trailing(self.last_source_line)
        for b in children[1:-1]:
            if isinstance(b, Tree):
                self.statement(b, depth + 1)
        self._flush_before(close.line or 0, depth + 1)
        self.lines.append(INDENT * depth + "}")
        self.last_source_line = close.line or 0
        self._trailing(self.last_source_line)

    def finish(self) -> str:
        self._flush_before(10**12, 0)
        while self.lines and self.lines[-1] == "":
            self.lines.pop()
        return "\n".join(self.lines) + "\n" if self.lines else ""


def format_text(text: str, path: str = "<input>") -> str:
    """The canonical form of one file's text; raises MeshcError if it does not parse."""
    parsed = parse_text(text, path, keep_all_tokens=True)
    p = Printer(parsed.comments)
    for decl in parsed.tree.children:
        if isinstance(decl, Tree):
            p.statement(decl, 0, top=True)
    return p.finish()
