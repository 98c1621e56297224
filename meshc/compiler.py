"""The pipeline in one place: read files -> parse -> resolve -> graph checks -> Mesh.

`load(paths)` and `load_text(text)` are what the CLI, the tests and every tool use. Each stage
collects all its diagnostics, and the pipeline stops only between stages (MeshcError).
Imports are read relative to the importing file, each file once; `read` lets a caller load a
tree from somewhere other than the disk (e.g. a git revision).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from meshc import ast as A
from meshc.diagnostics import Diagnostic, MeshcError
from meshc.model import Mesh, Span
from meshc.parse import Parsed, parse_file
from meshc.resolve import resolve

Reader = Callable[[Path], bytes]


def _read_disk(path: Path) -> bytes:
    return path.read_bytes()


@dataclass
class Loaded:
    """Everything one compilation read: the model, each file's text, and warnings."""

    mesh: Mesh
    parsed: list[Parsed]
    warnings: list[Diagnostic] = field(default_factory=list)

    @property
    def sources(self) -> dict[str, str]:
        return {p.path: p.text for p in self.parsed}


def display_path(path: Path) -> str:
    """How a file is named in diagnostics: relative to the working directory when possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# expand_paths parses every file of a directory to find its roots; the load that follows
# would parse the same files again. It leaves its results here, keyed by name and content,
# and parse_all takes them (and clears what it did not need).
_parsed_by_expand: dict[tuple[str, bytes], Parsed] = {}


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a directory stands for its root .mesh files (those that no other file in
    it imports), so `meshc check examples/multifile` compiles prod.mesh with what it imports."""
    out: list[Path] = []
    for p in paths:
        if not p.is_dir():
            out.append(p)
            continue
        files = sorted(p.glob("*.mesh"))
        imported: set[Path] = set()
        for f in files:
            try:
                data = f.read_bytes()
                parsed = parse_file(display_path(f), data)
            except (MeshcError, OSError):
                continue  # reported when it is compiled
            _parsed_by_expand[(parsed.path, data)] = parsed
            imported |= {(f.parent / d.path.value).resolve() for d in parsed.ast.decls
                         if isinstance(d, A.ImportDecl)}
        roots = [f for f in files if f.resolve() not in imported]
        if not roots:
            raise ValueError(f"no .mesh files in {p}")
        out += roots
    if not out:
        raise ValueError("no input files")
    return out


def parse_all(paths: Sequence[Path], read: Reader = _read_disk) -> list[Parsed]:
    """Parse the root files and everything they import (depth-first, imports first)."""
    order: list[Parsed] = []
    seen: set[Path] = set()
    errors: list[Diagnostic] = []

    def visit(path: Path, importer: A.ImportDecl | None) -> None:
        key = path.resolve() if read is _read_disk else path
        if key in seen:
            return
        seen.add(key)
        name = display_path(path)
        try:
            data = read(path)
        except (FileNotFoundError, IsADirectoryError, KeyError, OSError) as e:
            span = importer.span if importer else Span(file=name, line=0, column=0)
            what = "imported file" if importer else "file"
            errors.append(Diagnostic("E106", f"cannot read {what} '{name}': {getattr(e, 'strerror', None) or e}",
                                     span, label="not found" if importer else "",
                                     help="import paths are relative to the importing file" if importer else ""))
            return
        try:
            parsed = _parsed_by_expand.pop((name, data), None) or parse_file(name, data)
        except MeshcError as e:
            errors.extend(e.diagnostics)
            return
        for d in parsed.ast.decls:
            if isinstance(d, A.ImportDecl):
                visit(path.parent / d.path.value, d)
        order.append(parsed)

    try:
        for p in paths:
            visit(Path(p), None)
    finally:
        _parsed_by_expand.clear()  # files of a directory that nothing loaded: not kept alive
    if errors:
        raise MeshcError(errors)
    return order


@contextmanager
def paused_gc(freeze: bool = False) -> Iterator[None]:
    """Pause the cyclic garbage collector around work that allocates millions of acyclic
    objects (loading, checking, comparing a 10,000-service mesh): with it on, every full
    collection rescans the whole model (4x slower). Reference counting still frees. With
    `freeze`, what exists afterwards (the model) is moved out of the collector's sight, so
    later allocations (the backends') do not trigger full rescans of it either."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if was_enabled:
            gc.enable()


def load_all(paths: Sequence[Path], read: Reader = _read_disk, checks: bool = True) -> Loaded:
    """Parse, resolve and check; raise MeshcError on errors, return warnings alongside."""
    if read is _read_disk:
        try:
            paths = expand_paths(paths)
        except ValueError as e:
            raise MeshcError([Diagnostic("E106", str(e), Span(file=str(paths[0]) if paths else "", line=0,
                                                              column=0))]) from None
    with paused_gc(freeze=True):
        return _load_all(paths, read, checks)


def _load_all(paths: Sequence[Path], read: Reader, checks: bool) -> Loaded:
    parsed = parse_all(paths, read)
    # Root files come last in `parsed` (imports first), so overlays in a root file apply last.
    mesh = resolve([p.ast for p in parsed])
    warnings: list[Diagnostic] = []
    if checks:
        try:
            from meshc import graph
        except ImportError:  # the graph checks are optional while being built
            graph = None  # type: ignore[assignment]
        if graph is not None and hasattr(graph, "check"):
            found = graph.check(mesh)
            if any(d.severity == "error" for d in found):
                raise MeshcError(found)
            warnings = found
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
