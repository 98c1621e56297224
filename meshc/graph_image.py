"""SVG/PNG images of the mesh graph (`meshc graph --format svg|png`), rendered by Graphviz's
`dot` (Debian package `graphviz`) when it is installed, and live colouring of its edges by the
success rate a running mesh reports (`meshc.observe`).

`render_image(dot_text, fmt)` runs `dot -T<fmt>` on the DOT text that `meshc.graph.to_dot`
writes; without `dot` on PATH it raises `GraphvizMissing` whose message says how to install it
or how to render the DOT elsewhere. `with_live_success(dot_text, rates)` overrides each edge's
colour and label from `{(src, dst): success ratio}` (green at or above 99.9%, orange at or above
95%, red below); edges without traffic keep their policy colour.
"""

from __future__ import annotations

import re
import shutil
import subprocess

FORMATS: tuple[str, ...] = ("svg", "png")
# meshc graph names the ingress gateway `ingress`; native sidecars name it `_ingress`, Envoy
# `ingress-gateway`.
_NODE_ALIASES = {"_ingress": "ingress", "ingress-gateway": "ingress"}
_EDGE = re.compile(r'^(\s*)("(?:[^"\\]|\\.)*")\s*->\s*("(?:[^"\\]|\\.)*")\s*\[(.*)\];\s*$')


class GraphvizMissing(RuntimeError):
    """`dot` is not installed: the message says what to do."""


def render_image(dot_text: str, fmt: str, timeout: float = 60.0) -> bytes:
    """The graph as SVG or PNG bytes, rendered by Graphviz's `dot`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r} (expected one of {', '.join(FORMATS)})")
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissing(
            f"--format {fmt} needs Graphviz's `dot`, which is not installed "
            "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz); "
            f"or write DOT with --format dot and render it elsewhere: dot -T{fmt} graph.dot -o graph.{fmt}")
    try:
        r = subprocess.run([dot, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"dot did not finish within {timeout:g} s") from e
    if r.returncode != 0 or not r.stdout:
        raise RuntimeError(f"dot failed (exit {r.returncode}): {r.stderr.decode(errors='replace').strip()}")
    return r.stdout


def _color(ratio: float) -> str:
    if ratio >= 0.999:
        return "forestgreen"
    if ratio >= 0.95:
        return "darkorange"
    return "red"


def _unquote(s: str) -> str:
    return s[1:-1].replace('\\"', '"').replace("\\\\", "\\")


def with_live_success(dot_text: str, rates: dict[tuple[str, str], float]) -> str:
    """DOT text whose edges are coloured and labelled by live success rate (later attributes
    override earlier ones in DOT, so the policy style stays for everything else)."""
    live = {(_NODE_ALIASES.get(s, s), _NODE_ALIASES.get(d, d)): r for (s, d), r in rates.items()}
    out = []
    for line in dot_text.splitlines():
        m = _EDGE.match(line)
        key = (_unquote(m.group(2)), _unquote(m.group(3))) if m else None
        if m is None or key not in live:
            out.append(line)
            continue
        ratio = live[key]
        label_m = re.search(r'label="((?:[^"\\]|\\.)*)"', m.group(4))
        label = f"{label_m.group(1)}, " if label_m else ""
        attrs = re.sub(r',?\s*label="(?:[^"\\]|\\.)*"', "", m.group(4))
        attrs += f', color="{_color(ratio)}", fontcolor="{_color(ratio)}", penwidth=2, ' \
                 f'label="{label}{ratio * 100:.2f}% ok"'
        out.append(f"{m.group(1)}{m.group(2)} -> {m.group(3)} [{attrs}];")
    return "\n".join(out) + ("\n" if dot_text.endswith("\n") else "")
