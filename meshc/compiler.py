"""The pipeline in one place: read files -> parse -> resolve -> graph checks -> Mesh.

`load(paths)` and `load_text(text)` are what the CLI, the tests and every tool use. Each stage
collects all its diagnostics, and the pipeline stops only between stages (MeshcError).
Imports are read relative to the importing file, each file once; `read` lets a caller load a
tree from somewhere other than the disk (e.g. a git revision).

Every file meshc reads from the disk (a `.mesh` file, what it imports, an importer's input)
goes through `read_bounded`: regular files only (a FIFO would block forever, `/dev/zero` never
ends), at most the size limit, decided before reading. The import walk is iterative and its
chains are bounded (MAX_IMPORT_DEPTH), so no input reaches Python's recursion limit.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshc import ast as A
from meshc import suppress
from meshc.diagnostics import Diagnostic, MeshcError
from meshc.gc_pause import paused_gc
from meshc.model import Mesh, Span
from meshc.parse import MAX_FILE_BYTES, Parsed, parse_file
from meshc.resolve import resolve

Reader = Callable[[Path], bytes]

# A chain of imports deeper than this is refused at the import line (E123): far above any real
# layout (base <- environment <- team), and it keeps the walk's memory and time bounded.
MAX_IMPORT_DEPTH = 256


class UnreadableInput(Exception):
    """A file meshc refuses to read: not a regular file (E120), over the size limit (E121), a
    symlink loop (E122). `reason` completes "cannot read 'NAME': ..."; `help` says what to do."""

    def __init__(self, code: str, reason: str, help: str, label: str) -> None:
        super().__init__(reason)
        self.code, self.reason, self.help, self.label = code, reason, help, label


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> UnreadableInput:
    kind = next((what for test, what in _KINDS if test(mode)), "not a regular file")
    return UnreadableInput("E120", f"it is {kind}, not a regular file", label="not a regular file",
                           help="meshc reads regular files only (a pipe or device could block or never end)")


def _too_large(limit: int) -> UnreadableInput:
    return UnreadableInput("E121", f"it is larger than the {_size(limit)} limit", label="too large",
                           help="split it into several files")


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n} bytes"


def read_bounded(path: Path | str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, or UnreadableInput (or OSError for
    a missing or unreadable file, IsADirectoryError for a directory). The type and size are
    checked before reading, the file is opened non-blocking (a FIFO swapped in after the check
    cannot block the open) and checked again on the open descriptor, and at most limit + 1 bytes
    are ever read (a file growing meanwhile, or a /proc file that reports size 0)."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnreadableInput("E122", "it is a symlink loop", label="symlink loop",
                                  help="a symbolic link on this path points (through others) back to itself") from None
        raise
    except ValueError:  # a NUL byte in the path
        raise FileNotFoundError(errno.ENOENT, "the path contains a NUL byte", str(path)) from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(st.st_mode)
    if st.st_size > limit:
        raise _too_large(limit)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(st.st_mode)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise _too_large(limit)
    return data


def source_text(path: Path | str) -> str | None:
    """A file's text to quote in diagnostics, read as every .mesh file is (bounded, regular
    files only), or None when it cannot be read."""
    try:
        return read_bounded(path).decode("utf-8", errors="replace")
    except (OSError, UnreadableInput):
        return None


def _read_disk(path: Path) -> bytes:
    return read_bounded(path)


def _real(path: Path) -> Path:
    """The canonical path, without raising on a symlink loop (Path.resolve does, on 3.11)."""
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


@dataclass
class Loaded:
    """Everything one compilation read: the model, each file's text, and warnings."""

    mesh: Mesh
    parsed: list[Parsed]
    warnings: list[Diagnostic] = field(default_factory=list)
    suppressed: list[Diagnostic] = field(default_factory=list)  # by `# meshc: ignore[...]` (meshc.suppress)

    @property
    def sources(self) -> dict[str, str]:
        return {p.path: p.text for p in self.parsed}


def display_path(path: Path) -> str:
    """How a file is named in diagnostics: relative to the working directory when possible."""
    try:
        return str(_real(path).relative_to(_real(Path.cwd())))
    except ValueError:
        return str(path)


# expand_paths parses every file of a directory to find its roots; the load that follows
# would parse the same files again. It leaves its results here, keyed by name and content,
# and parse_all takes them (and clears what it did not need).
_parsed_by_expand: dict[tuple[str, bytes], Parsed] = {}


def expand_paths(paths: Sequence[Path], *, entry_points: bool = False) -> list[Path]:
    """Files as given; a directory stands for its root .mesh files (those that no other file in
    it imports), so `meshc compile examples/multifile` compiles prod.mesh with what it imports.
    With `entry_points`, a directory also stands for every file that declares a `mesh` block
    (base.mesh, which prod.mesh imports, is a mesh of its own: `meshc check` checks both)."""
    out: list[Path] = []
    for p in paths:
        if not p.is_dir():
            out.append(p)
            continue
        files = sorted(p.glob("*.mesh"))
        imported: set[Path] = set()
        declares_mesh: set[Path] = set()
        for f in files:
            try:
                data = read_bounded(f)
                parsed = parse_file(display_path(f), data)
            except (MeshcError, OSError, UnreadableInput):
                continue  # reported when it is compiled
            _parsed_by_expand[(parsed.path, data)] = parsed
            imported |= {_real(f.parent / d.path.value) for d in parsed.ast.decls
                         if isinstance(d, A.ImportDecl)}
            if any(isinstance(d, A.MeshDecl) for d in parsed.ast.decls):
                declares_mesh.add(f)
        roots = [f for f in files if _real(f) not in imported or (entry_points and f in declares_mesh)]
        if not roots:
            raise ValueError(f"no .mesh files in {p}")
        out += roots
    if not out:
        raise ValueError("no input files")
    return out


def parse_all(paths: Sequence[Path], read: Reader = _read_disk) -> list[Parsed]:
    """Parse the root files and everything they import (depth-first, imports first). The walk
    keeps its own stack (a chain of thousands of imports must not reach the recursion limit)
    and refuses chains deeper than MAX_IMPORT_DEPTH at the import line that goes too deep."""
    order: list[Parsed] = []
    seen: set[Path] = set()
    errors: list[Diagnostic] = []

    def enter(path: Path, importer: A.ImportDecl | None, depth: int) -> list[Any] | None:
        """Read and parse one file; its frame on the walk's stack, or None (seen, or an error)."""
        key = _real(path) if read is _read_disk else path
        if key in seen:
            return None
        seen.add(key)
        name = display_path(path)
        if importer is not None and depth > MAX_IMPORT_DEPTH:
            errors.append(Diagnostic("E123", f"import chain deeper than {MAX_IMPORT_DEPTH} files at '{name}'",
                                     importer.span, label="too deep",
                                     help=f"files may import files that import others, to at most "
                                          f"{MAX_IMPORT_DEPTH} levels; flatten the chain"))
            return None
        try:
            data = read(path)
        except UnreadableInput as e:
            what = "imported file" if importer else "file"
            span = importer.span if importer else Span(file=name, line=0, column=0)
            errors.append(Diagnostic(e.code, f"cannot read {what} '{name}': {e.reason}", span,
                                     label=e.label if importer else "", help=e.help))
            return None
        except (FileNotFoundError, IsADirectoryError, KeyError, OSError) as e:
            span = importer.span if importer else Span(file=name, line=0, column=0)
            what = "imported file" if importer else "file"
            errors.append(Diagnostic("E106", f"cannot read {what} '{name}': {getattr(e, 'strerror', None) or e}",
                                     span, label="not found" if importer else "",
                                     help="import paths are relative to the importing file" if importer else ""))
            return None
        try:
            parsed = _parsed_by_expand.pop((name, data), None) or parse_file(name, data)
        except MeshcError as e:
            errors.extend(e.diagnostics)
            return None
        imports = iter([d for d in parsed.ast.decls if isinstance(d, A.ImportDecl)])
        return [path, parsed, imports, depth]

    try:
        for p in paths:
            root = enter(Path(p), None, 0)
            stack = [root] if root is not None else []
            while stack:
                path, parsed, imports, depth = stack[-1]
                d = next(imports, None)
                if d is None:  # every import of this file is in `order`: the file follows them
                    stack.pop()
                    order.append(parsed)
                    continue
                child = enter(path.parent / d.path.value, d, depth + 1)
                if child is not None:
                    stack.append(child)
    finally:
        _parsed_by_expand.clear()  # files of a directory that nothing loaded: not kept alive
    if errors:
        raise MeshcError(errors)
    return order


def load_all(paths: Sequence[Path], read: Reader = _read_disk, checks: bool = True, *,
             amplification_limit: int | None = None, ignore: frozenset[str] = frozenset()) -> Loaded:
    """Parse, resolve and check; raise MeshcError on errors, return warnings alongside."""
    if read is _read_disk:
        try:
            paths = expand_paths(paths)
        except ValueError as e:
            raise MeshcError([Diagnostic("E106", str(e), Span(file=str(paths[0]) if paths else "", line=0,
                                                              column=0))]) from None
    with paused_gc(freeze=True):
        return _load_all(paths, read, checks, amplification_limit, ignore)


def _load_all(paths: Sequence[Path], read: Reader, checks: bool, amplification_limit: int | None = None,
              ignore: frozenset[str] = frozenset()) -> Loaded:
    """`amplification_limit` and `ignore` (warning codes silenced everywhere) come from the
    project configuration (meshc.project)."""
    parsed = parse_all(paths, read)
    # Root files come last in `parsed` (imports first), so overlays in a root file apply last.
    mesh = resolve([p.ast for p in parsed])
    warnings: list[Diagnostic] = []
    if checks:
        from meshc import graph  # imported here: it is the largest module, and `fmt` never needs it

        found = graph.check(mesh) if amplification_limit is None else graph.check(
            mesh, amplification_limit=amplification_limit)
        if any(d.severity == "error" for d in found):
            raise MeshcError(found)
        by_file = {p.path: rules for p in parsed if (rules := suppress.suppressions(p.text, p.ast.decls))}
        if ignore:  # the project's `ignore`: every file, every line
            everywhere = suppress.Suppression(ignore, 0, 2**31)
            by_file = {p.path: [*by_file.get(p.path, []), everywhere] for p in parsed}
        warnings, suppressed = suppress.apply(found, by_file) if by_file else (found, [])
        return Loaded(mesh, parsed, warnings, suppressed)
    return Loaded(mesh, parsed, warnings)


def load(paths: Sequence[Path | str], read: Reader = _read_disk, checks: bool = True) -> Mesh:
    return load_all([Path(p) for p in paths], read, checks).mesh


def load_text(text: str, filename: str = "test.mesh", checks: bool = True) -> Mesh:
    """Compile one file's text (no imports from disk). For tests and tools."""
    def read(path: Path) -> bytes:
        if str(path) == filename:
            return text.encode()
        raise FileNotFoundError(2, "imports are not available in load_text", str(path))
    return load_all([Path(filename)], read, checks).mesh
