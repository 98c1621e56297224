"""A .mesh tree as it was at a git revision (`meshc diff --base REF`): files are read with
`git show`, imports resolved at the same revision, locations named under GIT_ROOT so the diff
can show them as `REF:path`."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshc.compiler import load
from meshc.model import Mesh

_IMPORT = re.compile(r'^\s*import\s+"([^"]+)"', re.MULTILINE)
# The old side of `--base` is read from git under this virtual root; locations under it are
# shown as `REF:path` (relative to the repository root).
GIT_ROOT = Path("/__meshc_base__")


class GitError(Exception):
    """Not a repository, or an unknown revision (the command turns it into a usage error)."""


def roots_among(files: list[Path], read: Callable[[Path], bytes]) -> list[Path]:
    """Files no other file in the list imports."""
    imported: set[str] = set()
    for f in files:
        for m in _IMPORT.finditer(read(f).decode("utf-8", errors="replace")):
            imported.add(os.path.normpath(f.parent / m.group(1)))
    return [f for f in files if os.path.normpath(f) not in imported]



def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)


@dataclass
class GitTree:
    """Read-only view of the repository around `cwd` at a revision, for `meshc.compiler.load`'s
    `read` hook: files are named GIT_ROOT/<path in the repository>."""

    ref: str
    cwd: Path
    root: Path = field(init=False)
    commit: str = field(init=False)

    def __post_init__(self) -> None:
        top = _git(["rev-parse", "--show-toplevel"], self.cwd)
        if top.returncode != 0:
            raise GitError(f"not in a git repository: {self.cwd}")
        self.root = Path(top.stdout.decode().strip()).resolve()
        rev = _git(["rev-parse", "--verify", "--quiet", f"{self.ref}^{{commit}}"], self.root)
        if rev.returncode != 0:
            raise GitError(f"unknown git revision '{self.ref}'")
        self.commit = rev.stdout.decode().strip()

    def virtual(self, path: Path) -> Path:
        """The name, at the revision, of a path given on the command line (relative to cwd)."""
        rel = (self.cwd / path).resolve().relative_to(self.root)
        return GIT_ROOT / rel

    def _rel(self, path: Path) -> str:
        rel = os.path.normpath(path).replace(os.sep, "/")
        prefix = str(GIT_ROOT) + "/"
        if not rel.startswith(prefix):
            raise FileNotFoundError(2, "outside the repository", str(path))
        return rel[len(prefix):]

    def read(self, path: Path) -> bytes:
        out = _git(["show", f"{self.commit}:{self._rel(path)}"], self.root)
        if out.returncode != 0:
            raise FileNotFoundError(2, f"not in {self.ref}", str(path))
        return out.stdout

    def kind(self, path: Path) -> str | None:
        """'blob', 'tree' or None (absent at the revision)."""
        rel = self._rel(path) if path != GIT_ROOT else ""
        out = _git(["cat-file", "-t", f"{self.commit}:{rel}"], self.root)
        return out.stdout.decode().strip() if out.returncode == 0 else None

    def mesh_files(self, directory: Path) -> list[Path]:
        rel = self._rel(directory) if directory != GIT_ROOT else ""
        out = _git(["ls-tree", "--name-only", self.commit, *([rel + "/"] if rel else [])], self.root)
        names = sorted(n for n in out.stdout.decode().splitlines() if n.endswith(".mesh"))
        return [GIT_ROOT / n for n in names]


def load_at_ref(ref: str, paths: Sequence[Path], cwd: Path | None = None) -> Mesh | None:
    """Load the same paths as they were at `ref`, imports resolved at `ref` too.
    None when none of them existed then."""
    tree = GitTree(ref, cwd or Path.cwd())
    files: list[Path] = []
    for p in paths:
        v = tree.virtual(p)
        kind = tree.kind(v)
        if kind == "tree":
            files += roots_among([f for f in tree.mesh_files(v) if tree.kind(f) == "blob"], tree.read)
        elif kind == "blob":
            files.append(v)
    if not files:
        return None
    return load(files, read=tree.read, checks=False)
