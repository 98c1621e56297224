"""Project configuration: `meshc.toml`, or `[tool.meshc]` in `pyproject.toml`, found in the
working directory or the nearest folder above it (the first of the two files that exists, as
ruff looks for its own). Every key is checked: an unknown one is an error with a did-you-mean,
so a typo never silently does nothing.

    ignore = ["W209"]              # warnings silenced in every file (as `# meshc: ignore[...]`)
    amplification_limit = 20       # W205's limit (default 10 attempts per client request)

    [compile]                      # `[tool.meshc.compile]` in pyproject.toml
    targets = ["envoy", "istio"]   # what `meshc compile` builds when no --target is given
    unsupported = "warn"           # default of --unsupported

    [options.envoy]                # default -X options per target; the command line wins
    dynamic = true
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshc.diagnostics import did_you_mean
from meshc.graph import DEFAULT_AMPLIFICATION_LIMIT

FILES = ("meshc.toml", "pyproject.toml")


class ProjectConfigError(ValueError):
    """A project configuration meshc cannot use (a usage error: exit 2)."""


@dataclass(frozen=True)
class ProjectConfig:
    path: Path | None = None  # where it was read from (None: no configuration)
    ignore: frozenset[str] = frozenset()
    amplification_limit: int = DEFAULT_AMPLIFICATION_LIMIT
    targets: tuple[str, ...] = ()
    unsupported: str | None = None
    options: dict[str, dict[str, str]] = field(default_factory=dict)


def find(start: Path | None = None) -> ProjectConfig:
    """The configuration that applies in `start` (default: the working directory)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for name in FILES:
            path = folder / name
            if not path.is_file():
                continue
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
                raise ProjectConfigError(f"{path}: cannot read it: {e}") from None
            if name == "pyproject.toml":
                data = data.get("tool", {}).get("meshc")
                if data is None:
                    continue  # a pyproject.toml without [tool.meshc] is not meshc's
            return parse(data, path)
    return ProjectConfig()


def _keys(table: Any, known: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ProjectConfigError(f"{where} must be a table")
    for key in table:
        if key not in known:
            hint = did_you_mean(key, known)
            raise ProjectConfigError(f"{where}: unknown key '{key}'" + (f" ({hint})" if hint.startswith("did") else "")
                                     + f"; known: {', '.join(known)}")
    return table


def parse(data: Any, path: Path) -> ProjectConfig:
    top = _keys(data, ("ignore", "amplification_limit", "compile", "options"), str(path))
    ignore = top.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(c, str) and c[:1].upper() == "W" for c in ignore):
        raise ProjectConfigError(f"{path}: ignore must be a list of warning codes such as \"W209\" "
                                 "(errors cannot be ignored)")
    limit = top.get("amplification_limit", DEFAULT_AMPLIFICATION_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1_000_000:
        raise ProjectConfigError(f"{path}: amplification_limit must be a whole number from 1 to 1000000")
    comp = _keys(top.get("compile", {}), ("targets", "unsupported"), f"{path}: [compile]")
    targets = comp.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ProjectConfigError(f"{path}: [compile] targets must be a list of target names")
    unsupported = comp.get("unsupported")
    if unsupported not in (None, "error", "warn"):
        raise ProjectConfigError(f"{path}: [compile] unsupported must be \"error\" or \"warn\"")
    options: dict[str, dict[str, str]] = {}
    opts = top.get("options", {})
    if not isinstance(opts, dict):
        raise ProjectConfigError(f"{path}: [options] must hold one table per target")
    for target, table in opts.items():
        if not isinstance(table, dict) or not all(isinstance(v, str | bool | int) for v in table.values()):
            raise ProjectConfigError(f"{path}: [options.{target}] must map option names to strings, "
                                     "numbers or true/false")
        options[target] = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in table.items()}
    return ProjectConfig(path, frozenset(c.upper() for c in ignore), limit, tuple(targets), unsupported, options)
