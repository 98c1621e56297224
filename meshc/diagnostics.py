"""One diagnostic type for every stage, rendered one way (text, JSON, GitHub annotations, SARIF).

Codes by stage: E0xx syntax, E1xx names and resolution, E2xx graph checks, E3xx backend
support; W-codes are warnings. Every code has a section in docs/errors.md (a test checks it).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from meshc.model import NO_SPAN, Span

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span = NO_SPAN
    label: str = ""  # short text under the caret
    help: str = ""
    notes: tuple[str, ...] = ()

    @property
    def severity(self) -> Severity:
        return "warning" if self.code.startswith("W") else "error"

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.span.file, self.span.line, self.span.column, self.code)

    def as_warning(self) -> Diagnostic:
        """The same finding downgraded (used by `--unsupported=warn`)."""
        return Diagnostic("W" + self.code[1:], self.message, self.span, self.label, self.help, self.notes)


class MeshcError(Exception):
    """Raised between pipeline stages when a stage found errors. Carries all of them."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        super().__init__("\n".join(f"{d.span}: {d.code}: {d.message}" for d in self.diagnostics))

    def __reduce__(self) -> tuple[Any, ...]:  # it crosses from forked children (meshc.parallel)
        return MeshcError, (self.diagnostics,)


@dataclass
class Sink:
    """Collects a stage's diagnostics; `check()` stops the pipeline if any is an error."""

    items: list[Diagnostic] = field(default_factory=list)

    def add(self, d: Diagnostic) -> None:
        self.items.append(d)

    def error(self, code: str, message: str, span: Span = NO_SPAN, *, label: str = "",
              help: str = "", notes: tuple[str, ...] = ()) -> None:
        self.items.append(Diagnostic(code, message, span, label, help, notes))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]

    def check(self) -> None:
        if self.errors:
            raise MeshcError(self.items)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A help line naming the closest candidate(s), or listing the few there are."""
    import difflib

    pool = sorted(set(candidates))
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if not pool:
        return ""
    shown = ", ".join(pool[:8]) + (", ..." if len(pool) > 8 else "")
    return f"declared: {shown}"


# --------------------------------------------------------------------------- rendering


def escape(s: str) -> str:
    """Text as a diagnostic may show it: every character that is not printable (ESC, CR, LF,
    NUL, DEL, C1 controls, bidirectional overrides, ...) as a `\\x1b`/`\\u202e` escape, so that
    no string from a .mesh file or a file name can move the cursor, colour or rewrite the
    terminal, or fake another diagnostic line, in any output format."""
    if s.isprintable():  # nearly always
        return s
    return "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
                                              if ord(c) < 0x10000 else f"\\U{ord(c):08x}") for c in s)


def _escaped(d: Diagnostic) -> Diagnostic:
    """The diagnostic with every text field escaped (the span keeps its file for the source
    lookup; each format escapes the file name where it prints it)."""
    return Diagnostic(d.code, escape(d.message), d.span, escape(d.label), escape(d.help),
                      tuple(escape(n) for n in d.notes))


@functools.lru_cache(maxsize=16)
def _lines(text: str) -> list[str]:
    """A file's lines, split once for all of its diagnostics (a large mesh can have
    thousands of warnings; splitting a 6 MB file for each took minutes). Split at LF only, as
    the parser counts lines (a CR, form feed or U+2028 inside a line is shown escaped)."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines[-1] == "" else lines  # no line after the last line break


# how many characters of a source line a diagnostic shows (a window around the span)
SHOWN = 200


def render_text(d: Diagnostic, sources: Mapping[str, str], color: bool = False) -> str:
    """`file:line:col: error[E104]: message`, then the source line, a caret and help."""
    sev = d.severity
    source_file = d.span.file
    d = _escaped(d)
    where = escape(str(d.span))
    if color:
        tint = "\x1b[1;31m" if sev == "error" else "\x1b[1;33m"
        head = f"\x1b[1m{where}\x1b[0m: {tint}{sev}[{d.code}]\x1b[0m: \x1b[1m{d.message}\x1b[0m"
    else:
        head = f"{where}: {sev}[{d.code}]: {d.message}"
    lines = [head]
    text = sources.get(source_file)
    if text is not None and d.span.line > 0:
        src_lines = _lines(text)
        if d.span.line <= len(src_lines):
            # A long line is shown as a window of SHOWN characters around the span (a generated
            # 60 kB line with thousands of findings must not print megabytes per finding).
            raw = src_lines[d.span.line - 1]
            col = min(max(d.span.column - 1, 0), len(raw))
            same_line = d.span.end_line == d.span.line and d.span.end_column > d.span.column
            end = min(d.span.end_column - 1, len(raw)) if same_line else len(raw.rstrip())
            lo = max(0, min(col - 60, len(raw) - SHOWN)) if len(raw) > SHOWN else 0
            lead, trail = ("... " if lo else ""), (" ..." if lo + SHOWN < len(raw) else "")
            # control characters would garble the terminal: shown escaped (`\\x1b`), and the
            # caret moved by the width of what each character is shown as
            pieces, width, col_at = [], len(lead), [len(lead)]
            for c in raw[lo:lo + SHOWN]:
                piece = " " * (4 - (width - len(lead)) % 4) if c == "\t" else escape(c)
                pieces.append(piece)
                width += len(piece)
                col_at.append(width)
            src = lead + "".join(pieces) + trail
            width = len(str(d.span.line))
            pad = " " * width
            start = col_at[min(col - lo, len(col_at) - 1)]
            stop = col_at[min(max(end - lo, 0), len(col_at) - 1)]
            length = max(1, stop - start)
            lines += [f"{pad} |", f"{d.span.line} | {src}",
                      f"{pad} | {' ' * start}{'^' * length}{' ' + d.label if d.label else ''}"]
    prefix = "   =" if len(lines) > 1 else "  ="
    if d.help:
        lines.append(f"{prefix} help: {d.help}")
    for n in d.notes:
        lines.append(f"{prefix} note: {n}")
    return "\n".join(lines)


def render(diags: Iterable[Diagnostic], fmt: str, sources: Mapping[str, str], color: bool = False) -> str:
    diags = sorted(diags, key=Diagnostic.sort_key)
    if fmt == "text":
        body = "\n\n".join(render_text(d, sources, color) for d in diags)
        n_err = sum(d.severity == "error" for d in diags)
        n_warn = len(diags) - n_err
        summary = f"{n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}"
        return (body + "\n\n" + summary + "\n") if diags else ""
    if fmt == "json":
        return json.dumps([_as_json(d) for d in diags], indent=2) + "\n"
    if fmt == "github":
        return "".join(_as_github(d) + "\n" for d in diags)
    if fmt == "sarif":
        return json.dumps(_as_sarif(diags), indent=2) + "\n"
    raise ValueError(f"unknown diagnostics format {fmt!r}")


def _as_json(d: Diagnostic) -> dict[str, object]:
    d = _escaped(d)
    return {"code": d.code, "severity": d.severity, "message": d.message, "file": escape(d.span.file),
            "line": d.span.line, "column": d.span.column, "end_line": d.span.end_line,
            "end_column": d.span.end_column, "label": d.label, "help": d.help, "notes": list(d.notes)}


def _gh_escape(s: str, prop: bool = False) -> str:
    s = s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return s.replace(":", "%3A").replace(",", "%2C") if prop else s


def _as_github(d: Diagnostic) -> str:
    """A GitHub Actions workflow command: shows as an annotation on the pull request."""
    kind = "error" if d.severity == "error" else "warning"
    d = _escaped(d)
    props = [f"file={_gh_escape(escape(d.span.file), True)}"]
    if d.span.line > 0:  # line 0: the file as a whole
        props += [f"line={d.span.line}", f"col={d.span.column}"]
    if d.span.end_line:
        props += [f"endLine={d.span.end_line}", f"endColumn={d.span.end_column}"]
    props.append(f"title={_gh_escape(d.code, True)}")
    msg = d.message + (f"\n{d.help}" if d.help else "")
    return f"::{kind} {','.join(props)}::{_gh_escape(msg)}"


# Where each code's explanation is published (SARIF wants an absolute helpUri);
# MESHC_DOCS_URL points it at a fork's or a mirror's copy of docs/errors.md.
DOCS_URL = "https://github.com/meshc/meshc/blob/main/docs/errors.md"


def docs_url() -> str:
    return os.environ.get("MESHC_DOCS_URL", DOCS_URL)


def _as_sarif(diags: list[Diagnostic]) -> dict[str, object]:
    from meshc import __version__

    rules = sorted({d.code for d in diags})
    results = []
    for d in map(_escaped, diags):
        region: dict[str, int] = {"startLine": max(d.span.line, 1), "startColumn": max(d.span.column, 1)}
        if d.span.end_line:
            region |= {"endLine": d.span.end_line, "endColumn": max(d.span.end_column, 1)}
        results.append({
            "ruleId": d.code,
            "level": "error" if d.severity == "error" else "warning",
            "message": {"text": d.message + (f" ({d.help})" if d.help else "")},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": escape(d.span.file)},
                                                "region": region}}],
        })
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "meshc", "version": __version__,
                                "rules": [{"id": r, "helpUri": f"{docs_url()}#{r.lower()}"} for r in rules]}},
            "results": results,
        }],
    }
