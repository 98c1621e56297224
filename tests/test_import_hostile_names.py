"""Hostile text in every string of every importer's input never changes who may call whom.

Each importer's inputs (tests/import_inputs/<source>/) are loaded as documents; one string at a
time (a value or a map key: names, namespaces, header names and values, paths, hosts, labels,
principals, ...) is replaced by a hostile payload (newlines, `}`, `#`, quotes, backslashes,
`allow * -> <service>` text, CR, ESC, bidi controls, line separators) and, separately, by a
benign word. Both are imported in-process. For every hostile import:
(a) the .mesh written parses and `meshc check` answers with diagnostics, never a traceback;
(b) every request (service x service, plus ingress and plaintext callers, x methods x paths)
    the hostile mesh allows, the benign one allows too (`meshc.authz.decide`, what `meshc why`
    answers): an item that cannot be carried over makes the result stricter, never looser;
(c) no `allow` line appears that the benign import does not have, and no line of the payload
    stands outside a comment.
An importer may also refuse the hostile input (ImportError_ or a malformed-input error): that is
stricter too.
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshc import authz
from meshc.compiler import load_text
from meshc.diagnostics import MeshcError
from meshc.importers import import_files
from meshc.importers.common import ImportError_, Result
from meshc.importers.consul import read_entries
from meshc.model import Mesh

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ROOT / "tests" / "import_inputs"
SOURCES = ["istio", "linkerd", "consul", "appmesh", "nginx-mesh"]
BENIGN = "bravo"
METHODS = ("GET", "DELETE", "PATCH")
PATHS = ("/", "/admin", "/api/v1/x", "/reviews/1", "/health")


def grant(svc: str) -> str:
    """An allow line no input here grants (`methods PATCH, OPTIONS`) to a service of the import,
    so that it compiles if it is ever spliced."""
    return f"allow * -> {svc} methods PATCH, OPTIONS"


def breakout(text: str, token: str, svc: str) -> str:
    """A payload that compiles if it is spliced where `token` stands in `text` (the benign
    import): close the blocks open there, grant, reopen them (services and the mesh as overlays),
    and comment out the rest of the line."""
    stack: list[str] = []
    for line in text.splitlines():
        code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', line).split("#", 1)[0]
        if token in line:
            break
        for i, ch in enumerate(code):
            if ch == "{":
                stack.append(code[:i].strip().rsplit("}", 1)[-1].strip())
            elif ch == "}" and stack:
                stack.pop()
    heads = [re.sub(r"^(service|external)\b", "overlay service", re.sub(r"^mesh \S+", "overlay mesh", h))
             for h in stack]
    target = next((h.split()[1] for h in stack if h.startswith(("service ", "external "))), svc)
    return "x" + "\n}" * len(stack) + f"\n{grant(target)}\n" + "".join(f"{h} {{\n" for h in heads) + "#"


def payloads(svc: str) -> list[str]:
    g = grant(svc)
    return [
        f'a"b\\"c}} # \\n\n{g}\n',
        f"x\r\n{g}\r\n",
        f"\u2028{g}\u2029\x85{g}",
        f"\x1b[2K\r{g} \u202e{svc} >- * wolla",
        "}\n{\n\"\n#\\",
        f"é-{svc}-ü\t\"\\\\\"",
    ]


# --------------------------------------------------------------------------- inputs as documents


def load_inputs(source: str) -> list[tuple[str, list[Any]]]:
    """(suffix, documents) per input file; Consul's HCL is read by the importer's own reader and
    rewritten as JSON, so that every input is a tree of strings to mutate."""
    out: list[tuple[str, list[Any]]] = []
    for p in sorted((INPUTS / source).iterdir()):
        if p.suffix == ".hcl":
            out.append((".json", read_entries([p])))
        elif p.suffix == ".json":
            out.append((".json", [json.loads(p.read_text())]))
        else:
            out.append((p.suffix, [d for d in yaml.safe_load_all(p.read_text()) if d is not None]))
    return out


Position = tuple[Any, ...]  # (file index, doc index, key or index ..., ("key", k) for a map key)


def positions(node: Any, at: Position = ()) -> Iterator[Position]:
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str):
                yield (*at, ("key", k))
            yield from positions(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from positions(v, (*at, i))
    elif isinstance(node, str):
        yield at


def replaced(inputs: list[tuple[str, list[Any]]], pos: Position, text: str) -> list[tuple[str, list[Any]]]:
    out = copy.deepcopy(inputs)
    node: Any = out[pos[0]][1]
    for k in pos[1:-1]:
        node = node[k]
    last = pos[-1]
    if isinstance(last, tuple) and last[0] == "key":
        items = list(node.items())
        node.clear()
        node.update({(text if k == last[1] else k): v for k, v in items})
    else:
        node[last] = text
    return out


def write(tmp: Path, inputs: list[tuple[str, list[Any]]]) -> list[Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (suffix, docs) in enumerate(inputs):
        p = tmp / f"in{i}{suffix}"
        if suffix == ".json":
            p.write_text(json.dumps(docs[0] if len(docs) == 1 else docs))
        else:
            p.write_text(yaml.safe_dump_all(docs, allow_unicode=True))
        paths.append(p)
    return paths


def run(source: str, paths: list[Path]) -> Result | None:
    """The import, or None when the importer refuses the input (exit 2 in `meshc import`)."""
    try:
        return import_files(source, paths)
    except (ImportError_, OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError,
            IndexError):
        return None  # `meshc import` reports these as unreadable or malformed input (exit 2)


# --------------------------------------------------------------------------- the checks


def allowed(mesh: Mesh, names: list[str]) -> set[tuple[Any, ...]]:
    out = set()
    for dst in names:
        for src in [*names, "ingress", None]:
            for method in METHODS:
                for path in PATHS:
                    if authz.decide(mesh, src, dst, method=method, path=path).allowed:
                        out.add((src, dst, method, path))
    return out


def code_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def grants(mesh: Mesh, other_text: str) -> list[tuple[Any, ...]]:
    """The allow rules as (sources, destinations, the rest), with every name the other import
    never uses (the replaced string, mapped to a name: `bravo` on one side, `x-allow-api` on the
    other) written as `<X>`."""
    words = set(re.findall(r"[A-Za-z0-9_.*-]+", "\n".join(code_lines(other_text))))

    def norm(name: str) -> str:
        return name if name in words else "<X>"

    def src(s: Any) -> str:
        return f"{s.kind}:{norm(s.name)}" if s.kind in ("service", "identity") else s.kind

    def rest(r: Any) -> tuple[Any, ...]:  # spans aside
        return (r.methods, tuple((m.kind, m.value) for m in r.paths), tuple((m.kind, m.value) for m in r.not_paths),
                r.ports, tuple((h.name, h.kind, h.value) for h in r.headers))

    return [(frozenset(map(src, r.sources)), frozenset(map(norm, r.destinations)), rest(r))
            for r in mesh.rules if r.action == "allow"]


def check(source: str, hostile: Result | None, benign: Result | None, payload: str, where: Position) -> None:
    if hostile is None:
        return  # refused: stricter than any import
    # (a) the text parses and checks with located diagnostics only
    load_text(hostile.text, "imported.mesh", checks=False)
    try:
        load_text(hostile.text, "imported.mesh")
    except MeshcError:
        pass
    lines = code_lines(hostile.text)
    benign_lines = code_lines(benign.text) if benign is not None else []
    # (c) no line of the payload stands as a statement (unless the input grants it anyway)
    for part in re.split(r"[\r\n\u2028\u2029\x85]", payload):
        if part.strip().startswith("allow") and part.strip() not in benign_lines:
            assert part.strip() not in lines, f"{source} {where}: payload line {part!r} is live in the .mesh"
    if benign is None:
        return
    # (c) every allow rule is one the benign input grants too (as wide or wider)
    benign_grants = grants(benign.mesh, hostile.text)
    for srcs, dsts, rest in grants(hostile.mesh, benign.text):
        assert any(srcs <= b_srcs and dsts <= b_dsts and rest == b_rest for b_srcs, b_dsts, b_rest in benign_grants), \
            f"{source} {where}: an allow rule the input did not grant: {sorted(srcs)} -> {sorted(dsts)} {rest}"
    # (b) the hostile mesh allows nothing the benign one refuses
    names = sorted({s.name for s in hostile.mesh.services} & {s.name for s in benign.mesh.services})
    if hostile.mesh.authz == "allow_by_default":
        assert benign.mesh.authz == "allow_by_default", f"{source} {where}: the default became allow"
    extra = allowed(hostile.mesh, names) - allowed(benign.mesh, names)
    assert not extra, f"{source} {where}: hostile text allows {sorted(extra, key=str)[:5]}"


# Each importer: a seeded sample of positions, each with the break-out payload for the place its
# string lands in the .mesh, and one of the other payload classes in turn.
POSITIONS = 120


@pytest.mark.parametrize("source", SOURCES)
def test_hostile_strings_never_widen_access(source: str, tmp_path: Path) -> None:
    inputs = load_inputs(source)
    base = run(source, write(tmp_path / "base", inputs))
    assert base is not None and base.mesh.services
    first = base.mesh.services[0].name
    found = [(i, *p) for i, (_, docs) in enumerate(inputs) for p in positions(docs)]
    assert len(found) > 100
    others = payloads(first)
    for n, pos in enumerate(random.Random(f"{source}-16").sample(found, POSITIONS)):
        benign = run(source, write(tmp_path / f"b{n}", replaced(inputs, pos, BENIGN)))
        cases = [others[n % len(others)]]
        if benign is not None and BENIGN in benign.text:
            cases.append(breakout(benign.text, BENIGN, first))
        for k, payload in enumerate(cases):
            hostile = run(source, write(tmp_path / f"h{n}-{k}", replaced(inputs, pos, payload)))
            check(source, hostile, benign, payload, pos)


def test_issue_16_header_name_is_no_grant(tmp_path: Path) -> None:
    """The case of issue #16: a VirtualService header-match name with newlines and an allow rule
    imported as a live `allow * -> api` in a deny_by_default mesh."""
    docs = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": n},
         "spec": {"selector": {"app": n}, "ports": [{"name": "http", "port": 80}]}} for n in ("api", "web")
    ] + [
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": n},
         "spec": {"selector": {"matchLabels": {"app": n}}, "action": "ALLOW",
                  "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}} for n in ("api", "web")
    ] + [
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "api"},
         "spec": {"hosts": ["api"], "http": [
             {"match": [{"headers": {"x\n}\n}\nallow * -> api\noverlay service api {\nroute {\n#": {"exact": "1"}}}],
              "route": [{"destination": {"host": "api"}}]},
             {"route": [{"destination": {"host": "api"}}]}]}},
    ]
    f = tmp_path / "vs.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    result = import_files("istio", [f])
    assert result.mesh.authz == "deny_by_default"
    assert "allow * -> api" not in code_lines(result.text)
    assert not authz.decide(result.mesh, "web", "api", method="DELETE", path="/admin").allowed
    assert any("header" in e.field for e in result.report)
    # the report keeps one line per entry, and no entry breaks the comment it is written as
    assert all(len(line.split("\t")) == 3 for line in result.report.text().splitlines())
    reloaded = load_text(result.text, "imported.mesh", checks=False)
    assert not authz.decide(reloaded, "web", "api", method="DELETE", path="/admin").allowed


def test_a_spliced_grant_fails_the_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The guard behind the unparser: were a rule ever spliced into the text (here, by a printer
    that appends one), the import fails instead of writing it."""
    import meshc.importers.common as common

    real = common.unparse

    def splicing(mesh: Mesh, notes: Any = None) -> tuple[str, list[Any]]:
        text, lost = real(mesh, notes)
        return text + f"allow * -> {mesh.services[0].name} methods PATCH\n", lost

    monkeypatch.setattr(common, "unparse", splicing)
    paths = write(tmp_path, load_inputs("nginx-mesh"))
    with pytest.raises(ImportError_, match="allow rule its model does not hold"):
        import_files("nginx-mesh", paths)
