"""Front end: bytes of one `.mesh` file -> AST (built while parsing), plus lark's tree and the
comments for fmt.

Syntax errors are reported in the user's words (never lark's terminal names), with the
line and column, and as many as can be found in one run: when the whole file does not parse,
each top-level declaration is parsed on its own so that an error in one does not hide the
errors in the next.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from meshc.ast import Builder, File
from meshc.diagnostics import Diagnostic, MeshcError, Sink
from meshc.lalr import LarkParser, LeanParser
from meshc.model import Span

MAX_FILE_BYTES = 16 * 1024 * 1024  # ~25,000 services in one file; keeps time and memory bounded
MAX_ERRORS = 50

# Words for the terminals lark may say it expected.
_TERMINAL_WORDS = {
    "NAME": "a name", "STRING": "a string in double quotes", "INT": "a number", "DURATION": "a duration like 2s",
    "PERCENT": "a percentage like 20%", "RATE": "a rate like 100/s", "ENDPOINT": "an endpoint like 127.0.0.1:8080",
    "STATUS_CLASS": "a status class like 5xx", "SIZE": "a size like 10MiB", "AUTHZ_ACTION": "'allow'/'deny'", "OTHERWISE": "'otherwise'",
    "NONE": "'none'", "STAR": "'*'", "EQ": "'=='", "$END": "end of file",
}
_TOP_LEVEL = re.compile(rb"^(import|mesh|policy|service|external|overlay|allow|deny)\b", re.M)


@dataclass
class Parsed:
    path: str
    text: str
    ast: File
    tree: Tree | None = None  # the lark tree and the comments, kept for `fmt` only: compiling
    comments: list[Token] = field(default_factory=list)  # drops the tree (it is most of the memory)


def grammar_text() -> str:
    return resources.files("meshc.grammar").joinpath("mesh.lark").read_text()


@lru_cache(maxsize=1)
def parser() -> Lark:
    """The LALR parser. Trees keep every token (keywords, punctuation): `fmt` prints them back
    and spans are taken from them, which costs less than lark's position propagation. The
    grammar is proven conflict-free with strict=True in the tests (too slow to repeat per run);
    cache=True keeps the analysed tables in the temp dir, keyed by grammar and lark version."""
    return Lark(grammar_text(), parser="lalr", keep_all_tokens=True, maybe_placeholders=False, cache=True)


@lru_cache(maxsize=1)
def lean_parser() -> LeanParser | LarkParser:
    """The same tables driven by meshc.lalr (3x faster); lark itself handles what it rejects.
    meshc.lalr reads lark's internals: if it cannot set up (another lark than the one pinned),
    lark's own parser does the work, with the same result, and a note says why it is slower."""
    try:
        return LeanParser(parser())
    except Exception as e:  # noqa: BLE001 - any setup failure: the slower parser is still right
        sys.stderr.write(f"meshc: note: the fast parser could not start ({type(e).__name__}: {e}); "
                         "parsing with lark's own parser (slower)\n")
        return LarkParser(parser())


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[terminal]
    try:
        pattern = parser().get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    return f"'{pattern.value}'"


def _expected(names: set[str] | frozenset[str]) -> str:
    words = sorted({_describe(n) for n in names})
    if len(words) > 8:
        keywords = [w for w in words if w.startswith("'")]
        others = [w for w in words if not w.startswith("'")]
        return "one of " + ", ".join(others + keywords[:8]) + ", ..."
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def decode(path: str, data: bytes) -> str:
    """Text of a source file, or E004/E005 for binary, non-UTF-8 or oversized input."""
    if len(data) > MAX_FILE_BYTES:
        raise MeshcError([Diagnostic(
            "E005", f"file is {len(data) / 2**20:.1f} MiB, larger than the {MAX_FILE_BYTES // 2**20} MiB limit",
            Span(file=path, line=1, column=1), help="split the mesh into several files joined with `import`")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise MeshcError([Diagnostic("E004", f"file is not valid UTF-8 (byte 0x{data[e.start]:02x})",
                                     Span(file=path, line=line, column=col, end_line=line, end_column=col + 1),
                                     help=".mesh files are UTF-8 text; is this the right file?")]) from None
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        col = nul - (text.rfind("\n", 0, nul) + 1) + 1
        raise MeshcError([Diagnostic("E004", "file contains a NUL byte: it looks binary, not a .mesh text",
                                     Span(file=path, line=line, column=col, end_line=line, end_column=col + 1),
                                     help=".mesh files are UTF-8 text; is this the right file?")])
    return text.removeprefix("\ufeff")


def _syntax_error(path: str, text: str, e: UnexpectedInput, line_offset: int = 0) -> Diagnostic:
    line = (getattr(e, "line", 0) or 0) + line_offset
    col = getattr(e, "column", 0) or 0
    if isinstance(e, UnexpectedCharacters):
        pos = e.pos_in_stream or 0
        ch = text[pos] if pos < len(text) else ""
        sp = Span(file=path, line=line, column=col, end_line=line, end_column=col + 1)
        if ch == '"':
            return Diagnostic("E002", "unterminated string", sp, label="this string never ends",
                              help='close it with " on the same line; write \\" for a quote inside a string')
        shown = repr(ch)[1:-1] if ch.isprintable() else f"\\u{ord(ch):04x}"
        allowed = e.allowed or set()
        return Diagnostic("E001", f"unexpected character '{shown}'", sp, label="not valid here",
                          help=f"expected {_expected(allowed)}" if allowed else "remove it")
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        opened = _unclosed_block(text)
        body = text.rstrip()
        end_col = len(body) - (body.rfind("\n") + 1) + 1
        sp = Span(file=path, line=body.count("\n") + 1 + line_offset, column=end_col)
        if opened is not None:
            o_line, o_col, what = opened
            return Diagnostic("E003", f"unexpected end of file: the {what}block opened at line "
                              f"{o_line + line_offset} is not closed",
                              Span(file=path, line=o_line + line_offset, column=o_col,
                                   end_line=o_line + line_offset, end_column=o_col + 1),
                              label="this '{' has no matching '}'", help="add the missing '}'")
        expected = getattr(e, "expected", None) or set()
        return Diagnostic("E003", "unexpected end of file", sp,
                          help=f"expected {_expected(expected)}" if expected else "")
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    sp = Span(file=path, line=line, column=col, end_line=line, end_column=col + len(str(tok).split("\n")[0]))
    return Diagnostic("E001", f"unexpected '{tok}'", sp, label=f"expected {_expected(e.expected)}",
                      help=_hint(str(tok), e.expected))


def _hint(token: str, expected: set[str]) -> str:
    import difflib

    keywords = [parser().get_terminal(t).pattern.value for t in expected
                if t not in _TERMINAL_WORDS and t in {x.name for x in parser().terminals}]
    close = difflib.get_close_matches(token, [k for k in keywords if isinstance(k, str)], n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if token == "{" and "NAME" in expected:
        return "a block needs a name before '{'"
    return "see docs/language.md for the statements allowed here"


def _unclosed_block(text: str) -> tuple[int, int, str] | None:
    """The innermost '{' that is never closed (strings and comments skipped)."""
    stack: list[tuple[int, int, str]] = []
    line, col, i, n = 1, 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] not in '"\n':
                j += 2 if text[j] == "\\" else 1
            col += j + 1 - i
            i = j + 1
            continue
        if c == "{":
            start = text.rfind("\n", 0, i) + 1
            head = text[start:i].split()
            what = f"'{head[0]}' " if head else ""
            stack.append((line, col, what))
        elif c == "}" and stack:
            stack.pop()
        if c == "\n":
            line, col = line + 1, 1
        else:
            col += 1
        i += 1
    return stack[-1] if stack else None


def parse_text(text: str, path: str = "<input>", *, keep_tree: bool = True) -> Parsed:
    """Parse one file's text; raise MeshcError with every syntax error found. The AST is built
    while parsing (meshc.ast.Builder, bottom-up); `keep_tree` also keeps lark's tree for fmt."""
    lean = lean_parser()
    sink = Sink()
    ast = lean.parse(text, lean.callbacks_for(Builder(path, sink)))
    tree = None
    if ast is None or keep_tree:
        try:
            tree = lean.parse(text)
            if tree is None:  # lark's own errors drive the diagnostics
                tree = parser().parse(text)
        except UnexpectedInput as first:
            raise MeshcError(_all_syntax_errors(path, text, first)) from None
        except RecursionError:  # defensive: the grammar has no unbounded nesting
            raise MeshcError([Diagnostic("E001", "input is nested too deeply",
                                         Span(file=path, line=1, column=1))]) from None
    if ast is None:  # lark parsed what the lean parser did not (tests/test_lalr.py: never)
        assert tree is not None
        sink = Sink()
        ast = Builder(path, sink).transform(tree)
    sink.check()
    if not keep_tree:
        return Parsed(path, text, ast)
    # Comments are ignored by the grammar; fmt needs them, so they are found by a cheap
    # separate scan rather than lexer callbacks (which would make the cached parser stateful).
    return Parsed(path, text, ast, tree, _comments(text))


# a string literal or a comment: a `#` inside a string is not a comment (fmt, meshc.suppress)
COMMENT_OR_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*')


def _comments(text: str) -> list[Token]:
    out = []
    for m in COMMENT_OR_STRING.finditer(text):
        if m.group().startswith("#"):
            start = m.start()
            line = text.count("\n", 0, start) + 1
            col = start - (text.rfind("\n", 0, start) + 1) + 1
            out.append(Token("COMMENT", m.group().rstrip(), start_pos=start, line=line, column=col))
    return out


def _all_syntax_errors(path: str, text: str, first: UnexpectedInput) -> list[Diagnostic]:
    """Report the first error, then re-parse each later top-level declaration on its own."""
    diags = [_syntax_error(path, text, first)]
    data = text.encode()
    starts = [m.start() for m in _TOP_LEVEL.finditer(data)]
    first_line = getattr(first, "line", 0) or 0
    p = parser()
    for i, start in enumerate(starts):
        line0 = data.count(b"\n", 0, start)
        if line0 + 1 <= first_line:
            continue
        end = starts[i + 1] if i + 1 < len(starts) else len(data)
        chunk = data[start:end].decode()
        try:
            p.parse(chunk)
        except UnexpectedInput as e:
            d = _syntax_error(path, chunk, e, line_offset=line0)
            if not any(x.span.line == d.span.line for x in diags):
                diags.append(d)
        if len(diags) >= MAX_ERRORS:
            break
    return diags


def parse_file(path: str, data: bytes) -> Parsed:
    """What the compiler needs of a file: its text (for diagnostics) and its AST."""
    return parse_text(decode(path, data), path, keep_tree=False)
