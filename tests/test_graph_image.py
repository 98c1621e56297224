"""SVG/PNG rendering of the mesh graph through Graphviz's real `dot`, the message when it is
missing, and live success-rate colouring of the edges."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from meshc.compiler import load
from meshc.graph import to_dot
from meshc.graph_image import GraphvizMissing, render_image, with_live_success

ROOT = Path(__file__).resolve().parents[1]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed (Debian: graphviz)")


def _bookinfo_dot() -> str:
    return to_dot(load([ROOT / "examples/bookinfo/bookinfo.mesh"]))


@needs_dot
def test_svg_has_every_node_and_edge() -> None:
    dot = _bookinfo_dot()
    svg = render_image(dot, "svg")
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    titles = {t.text for t in root.iter(f"{ns}title")}
    assert {"productpage", "reviews", "ratings", "details"} <= titles
    assert "productpage&#45;&gt;reviews" in svg.decode() or "productpage->reviews" in titles
    assert dot.count(" -> ") == sum(1 for g in root.iter(f"{ns}g") if g.get("class") == "edge")


@needs_dot
def test_png_signature() -> None:
    assert render_image(_bookinfo_dot(), "png").startswith(b"\x89PNG\r\n\x1a\n")


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="svg, png"):
        render_image("digraph {}", "gif")


@needs_dot
def test_dot_errors_are_reported() -> None:
    with pytest.raises(RuntimeError, match="dot failed"):
        render_image("digraph { a -> ", "svg")


def test_missing_graphviz_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(GraphvizMissing, match="apt-get install graphviz.*--format dot"):
        render_image("digraph {}", "svg")


def test_live_success_colours_edges() -> None:
    dot = ('digraph "m" {\n  "ingress" -> "web" [color="black"];\n'
           '  "web" -> "api" [color="blue", fontcolor="blue", label="route 90%"];\n'
           '  "web" -> "db" [color="black"];\n}\n')
    out = with_live_success(dot, {("_ingress", "web"): 1.0, ("web", "api"): 0.5})
    lines = out.splitlines()
    assert lines[1] == '  "ingress" -> "web" [color="black", color="forestgreen", fontcolor="forestgreen", ' \
                       'penwidth=2, label="100.00% ok"];'
    assert 'label="route 90%, 50.00% ok"' in lines[2] and 'color="red"' in lines[2]
    assert lines[3] == '  "web" -> "db" [color="black"];'  # no traffic: policy colour kept
    assert out.endswith("}\n")


@needs_dot
def test_live_coloured_graph_renders() -> None:
    dot = with_live_success(_bookinfo_dot(), {("productpage", "reviews"): 0.97})
    assert b"darkorange" in render_image(dot, "svg")


def test_an_image_is_not_written_to_a_terminal(tmp_path: Path) -> None:
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "meshc.cli", "graph", str(ROOT / "examples" / "bookinfo"),
                            "--format", "png"], stdout=slave, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 2 and b"png is binary: give -o FILE" in r.stderr
