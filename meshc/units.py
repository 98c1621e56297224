"""How .mesh writes durations and percentages, shared by every module that prints them back
(fmt-compatible source from unparse, diagnostics, diff lines) so they read the same everywhere."""

from __future__ import annotations

_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000))


def dur(ms: int | None) -> str:
    """Milliseconds in the largest unit that is exact (`90000` -> `90s`, `1500` -> `1500ms`);
    None is `none` (no timeout)."""
    if ms is None:
        return "none"
    for unit, size in _UNITS:
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def pct(hundredths: int) -> str:
    """Hundredths of a percent as written in .mesh: 1250 -> `12.5%`, 10000 -> `100%`."""
    whole, frac = divmod(hundredths, 100)
    return f"{whole}%" if not frac else (f"{whole}.{frac:02d}".rstrip("0") + "%")
