"""Near-valid input for property tests: real files cut, duplicated or spliced at random."""

from __future__ import annotations

from examples_index import all_mesh_files
from hypothesis import strategies as st

SOURCES = [p.read_text() for p in all_mesh_files()]
SPLICES = ['"', "{", "}", "->", "50%", " x ", "\n", "#", "\\", "é", "version", " 5xx", "1.2.3.4:80"]


def mutate(src: str, data: st.DataObject) -> str:
    """One to three cuts, duplications or insertions of a token-like piece."""
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(src)))
        j = data.draw(st.integers(i, min(len(src), i + 40)))
        op = data.draw(st.sampled_from(["cut", "dup", "insert"]))
        if op == "cut":
            src = src[:i] + src[j:]
        elif op == "dup":
            src = src[:j] + src[i:j] + src[j:]
        else:
            src = src[:i] + data.draw(st.sampled_from(SPLICES)) + src[i:]
    return src
