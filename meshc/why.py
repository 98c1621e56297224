"""`meshc why SOURCE DEST [METHOD PATH]`: is this call allowed, and where does it go?

Answers from the resolved model with the shared authorization evaluator (`meshc.authz`), and
cites the `.mesh` lines that decide: the deciding allow/deny rule, the default posture, the
mTLS settings of the destination port, and the route rule that would carry the request (with
its split percentages). Exit code: 0 allowed, 1 refused, 2 usage error (e.g. unknown service).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from meshc import authz
from meshc.diagnostics import did_you_mean
from meshc.model import AuthzRule, Match, Mesh, RouteRule, Service, Span

PLAINTEXT = "unauthenticated"
MESH_BLOCK = r"^\s*(overlay\s+)?mesh\b[^{]*\{"


# --------------------------------------------------------------------------- citing source lines


class Sources:
    """Reads .mesh files once, to quote the lines a span points at."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}

    def lines(self, file: str) -> list[str]:
        if file not in self._lines:
            from meshc.compiler import source_text  # loading is the caller's; only the quoting reads

            self._lines[file] = (source_text(file) or "").splitlines()
        return self._lines[file]

    def line(self, file: str, n: int) -> str:
        ls = self.lines(file)
        return _uncomment(ls[n - 1]) if 0 < n <= len(ls) else ""

    def block(self, span: Span) -> list[tuple[int, str]]:
        """The numbered lines of the block a span opens (to its end, or its closing brace)."""
        ls = self.lines(span.file)
        if span.line <= 0 or span.line > len(ls):
            return []
        if span.end_line >= span.line:
            end = span.end_line
        else:
            end = next((i + 1 for i in range(span.line, len(ls)) if ls[i].startswith("}")), len(ls))
        return [(i, ls[i - 1]) for i in range(span.line, min(end, len(ls)) + 1)]

    def find(self, span: Span, pattern: str) -> Citation | None:
        """The last line of a block matching `pattern` (later settings override earlier ones)."""
        rx = re.compile(pattern)
        hits = [(n, t) for n, t in self.block(span) if rx.search(t.split("#", 1)[0])]
        if not hits:
            return None
        n, text = hits[-1]
        return Citation(f"{span.file}:{n}", _uncomment(text))

    def blocks(self, files: Iterable[str], header: str) -> list[tuple[str, bool, list[tuple[int, str]]]]:
        """Every `{ ... }` block whose first line matches `header`, in every file: (file,
        is an overlay, numbered lines). Braces are counted outside strings and comments."""
        rx = re.compile(header)
        out = []
        for f in files:
            ls = self.lines(f)
            i = 0
            while i < len(ls):
                if not rx.search(ls[i]):
                    i += 1
                    continue
                depth, body, j = 0, [], i
                while j < len(ls):
                    code = _uncomment(ls[j])
                    code = re.sub(r'"([^"\\]|\\.)*"', '""', code)
                    depth += code.count("{") - code.count("}")
                    body.append((j + 1, ls[j]))
                    j += 1
                    if depth <= 0 and "{" in "".join(t for _, t in body):
                        break
                out.append((f, ls[i].lstrip().startswith("overlay"), body))
                i = j
        return out

    def setting(self, files: Iterable[str], header: str, line: str) -> Citation | None:
        """The line that sets a value: the last match in an overlay block, else in the block."""
        rx = re.compile(line)
        hits = [(overlay, f, n, t) for f, overlay, body in self.blocks(files, header)
                for n, t in body if rx.search(_uncomment(t))]
        if not hits:
            return None
        hits.sort(key=lambda h: h[0])  # stable: overlays last
        _, f, n, t = hits[-1]
        return Citation(f"{f}:{n}", _uncomment(t))

    def cite(self, span: Span) -> Citation:
        return Citation(f"{span.file}:{span.line}", self.line(span.file, span.line))


def _uncomment(line: str) -> str:
    """The line without a trailing `# comment` (a `#` inside a string is kept)."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif ch == "#" and not quoted:
            return " ".join(line[:i].split())
    return " ".join(line.split())


@dataclass(frozen=True)
class Citation:
    where: str
    text: str

    def as_json(self) -> dict[str, str]:
        return {"where": self.where, "text": self.text}


# --------------------------------------------------------------------------- routing


def _match_holds(m: Match, method: str | None, path: str | None, headers: dict[str, str],
                 query: dict[str, str]) -> tuple[bool, bool]:
    """(holds, failed only on headers or query): the second says which header would route it."""
    request_ok = True
    if m.path is not None and (path is None or not authz.path_matches(m.path, path)):
        request_ok = False
    if m.methods and (method is None or method.upper() not in {x.upper() for x in m.methods}):
        request_ok = False
    extra_ok = all(authz.header_matches(h, headers) for h in m.headers) and \
        all(authz.header_matches(q, query) for q in m.query)
    return request_ok and extra_ok, request_ok and not extra_ok


@dataclass
class RouteAnswer:
    rule: RouteRule | None
    index: int  # position in the table, -1: no table / no rule
    conditional: list[RouteRule] = field(default_factory=list)  # earlier rules a header would pick


def route_for(svc: Service, method: str | None, path: str | None, headers: dict[str, str],
              query: dict[str, str]) -> RouteAnswer:
    """The first route rule that holds for the request (first match wins)."""
    cond: list[RouteRule] = []
    for i, r in enumerate(svc.routes):
        if r.is_default:
            return RouteAnswer(r, i, cond)
        results = [_match_holds(m, method, path, headers, query) for m in r.matches]
        if any(h for h, _ in results):
            return RouteAnswer(r, i, cond)
        if any(c for _, c in results):
            cond.append(r)
    return RouteAnswer(None, -1, cond)


# --------------------------------------------------------------------------- the answer


def _rule_text(r: AuthzRule) -> str:
    srcs = ", ".join(str(s) for s in r.sources)
    bits = [f"{r.action} {srcs} -> {', '.join(r.destinations)}"]
    if r.methods:
        bits.append("methods " + ", ".join(r.methods))
    if r.paths:
        bits.append("paths " + ", ".join(authz.render_path(p) for p in r.paths))
    if r.not_paths:
        bits.append("except paths " + ", ".join(authz.render_path(p) for p in r.not_paths))
    if r.ports:
        bits.append("ports " + ", ".join(map(str, r.ports)))
    if r.headers:
        bits.append("headers " + ", ".join(authz.render_header(h) for h in r.headers))
    return " ".join(bits)


def explain(mesh: Mesh, source: str, dest: str, method: str | None = None, path: str | None = None,
            port: int | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The whole answer as plain data (the text renderer and `--format json` print it).

    Raises ValueError for an unknown source or destination."""
    src = None if source == PLAINTEXT else source
    svc = mesh.service(dest)
    names = [s.name for s in mesh.services]
    if svc is None:
        raise ValueError(f"unknown destination service '{dest}' ({did_you_mean(dest, names)})")
    if src is not None and src != authz.INGRESS and mesh.service(src) is None:
        raise ValueError(f"unknown source service '{src}' ({did_you_mean(src, [*names, authz.INGRESS, PLAINTEXT])})")
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    if port is None and len(svc.ports) == 1:
        port = svc.ports[0].number
    sources = Sources()
    decision = authz.decide(mesh, src, dest, method=method, path=path, port=port, headers=headers)
    acc = authz.access(mesh, src, dest)
    # A TCP or TLS port carries no method or path: the caller and the port are the whole
    # request, so the decision for that port is the answer (not the summary over every port).
    l4 = next((p.protocol in ("tcp", "tls") for p in svc.ports if p.number == port), False)
    out: dict[str, Any] = {
        "source": source, "destination": dest, "method": method, "path": path, "port": port,
        "allowed": decision.allowed, "status": decision.status, "reason": decision.reason,
        "access": acc.level, "access_detail": str(acc), "concrete": bool(method or path or l4),
    }
    if decision.rule is not None:
        out["rule"] = {**sources.cite(decision.rule.span).as_json(), "rule": _rule_text(decision.rule)}
    # The rules that make up the summary access, for a question without METHOD PATH.
    out["granting_rules"] = [{**sources.cite(r.span).as_json(), "rule": _rule_text(r)} for r in acc.rules]
    out["narrowing_rules"] = [{**sources.cite(r.span).as_json(), "rule": _rule_text(r)} for r in acc.denies]

    default = sources.setting(mesh.files, MESH_BLOCK, rf"^authz\s+{mesh.authz}$")
    out["default"] = {"value": mesh.authz, **(default.as_json() if default else
                                             {"where": "", "text": "(not written: the default)"})}
    out["mtls"] = _mtls(mesh, svc, port, src, sources)
    out["route"] = _route(mesh, svc, method, path, headers, sources)
    return out


def _mtls(mesh: Mesh, svc: Service, port: int | None, src: str | None, sources: Sources) -> dict[str, Any]:
    p = next((x for x in svc.ports if x.number == port), None)
    mode = p.mtls if p is not None else svc.mtls
    block = rf"^\s*(overlay\s+)?(service|external)\s+{re.escape(svc.name)}\s*\{{"
    where: Citation | None = None
    # The most specific setting that yields the effective mode: port, service, then mesh.
    if p is not None:
        where = sources.setting(mesh.files, block, rf"^mtls\s+{mode}\s+on\s+port\s+{p.number}$")
    if where is None:
        where = sources.setting(mesh.files, block, rf"^mtls\s+{mode}$")
    if where is None:
        where = sources.setting(mesh.files, MESH_BLOCK, rf"^mtls\s+{mode}$")
    ident = authz.identity_of(mesh, src) if src is not None else None
    return {"mode": mode, "port": p.name if p else None,
            "caller_identity": ident.spiffe if ident else None,
            **(where.as_json() if where else {"where": "", "text": "(not written: the default)"})}


def _route(mesh: Mesh, svc: Service, method: str | None, path: str | None, headers: dict[str, str],
           sources: Sources) -> dict[str, Any]:
    from meshc.diff import fmt_action, pct, route_table

    if svc.external is not None:
        return {"kind": "egress", "text": f"egress to {svc.external.host}", "where": ""}
    if not svc.routes:
        return {"kind": "default", "text": f"no route table: every endpoint of {svc.name}", "where": "",
                "split": {f"{svc.name} (all versions)": "100%"}}
    query: dict[str, str] = {}
    norm = path
    if path is not None:
        raw, _, qs = path.partition("?")
        query = dict(parse_qsl(qs, keep_blank_values=True))
        norm = authz.normalize_path(raw) if mesh.path_normalization == "strict" else raw
        norm = norm if norm is not None else raw
    table = route_table(svc)
    if path is None and method is None:
        return {"kind": "table", "where": "", "text": "route table (first match wins)",
                "rules": [{**sources.cite(r.span).as_json(), "rule": f"{t.key} -> {fmt_action(t)}"}
                          for r, t in zip(svc.routes, table, strict=True)]}
    ans = route_for(svc, method, norm, headers, query)
    conditional = [{**sources.cite(r.span).as_json(), "rule": f"{table[svc.routes.index(r)].key}"}
                   for r in ans.conditional]
    if ans.rule is None:
        return {"kind": "none", "text": "no route rule matches: 404", "where": "", "conditional": conditional}
    t = table[ans.index]
    return {"kind": "rule", **sources.cite(ans.rule.span).as_json(), "rule": f"{t.key} -> {fmt_action(t)}",
            "split": {k: pct(v) for k, v in sorted(t.split.items())}, "conditional": conditional}


# --------------------------------------------------------------------------- text


def _cited(c: dict[str, Any], fallback: str = "") -> str:
    """`file:line: source text` when the source is readable, else the canonical text."""
    text = c.get("text") or c.get("rule") or fallback
    return f"{c['where']}: {text}" if c.get("where") and not c["where"].endswith(":0") else text


def render_text(a: dict[str, Any]) -> str:
    req = " ".join(x for x in (a["method"], a["path"]) if x)
    head = f"{a['source']} -> {a['destination']}" + (f" {req}" if req else "")
    concrete = a.get("concrete", bool(a["method"] or a["path"]))
    if concrete:
        head += f" port {a['port']}" if not req else ""
        # a TCP connection is refused, it gets no HTTP status
        status = a["status"] if req else 0
        verdict = "ALLOWED" if a["allowed"] else f"DENIED ({status or 'connection refused'})"
    else:
        verdict = {"full": "ALLOWED (every request)", "partial": "PARTLY ALLOWED",
                   "none": "DENIED"}[a["access"]]
    out = [f"{head}: {verdict}"]
    if concrete or a["access"] == "none":
        out.append(f"  reason:  {a['reason']}")
    if a["access"] == "partial":
        out.append(f"  access: {a['access_detail']}")
    if "rule" in a and (concrete or a["access"] == "none"):
        out.append(f"  rule:    {_cited(a['rule'])}")
    if not concrete:
        for r in a["granting_rules"]:
            out.append(f"  allowed by:  {_cited(r)}")
        for r in a["narrowing_rules"]:
            out.append(f"  narrowed by: {_cited(r)}")
    d = a["default"]
    out.append(f"  default: {d['value']}" + (f"  ({d['where']}: {d['text']})" if d["where"] else ""))
    m = a["mtls"]
    port = f" port {m['port']}" if m["port"] else ""
    ident = f"; caller proves {m['caller_identity']}" if m["caller_identity"] and m["mode"] == "strict" else ""
    out.append(f"  mtls:    {a['destination']}{port} is {m['mode']}{ident}"
               + (f"  ({m['where']}: {m['text']})" if m["where"] else ""))
    r = a["route"]
    if r["kind"] == "rule":
        out.append(f"  route:   {r['rule']}" + (f"  ({_cited(r)})" if r["text"] else ""))
    elif r["kind"] == "table":
        out.append("  routes (first match wins):")
        out += [f"    {x['rule']}" + (f"  ({x['where']})" if x["text"] else "") for x in r["rules"]]
    else:
        out.append(f"  route:   {r['text']}")
    for c in r.get("conditional", []):
        at = f" ({c['where']})" if c["text"] else ""
        out.append(f"    note: with a matching header or query, rule {c['rule']}{at} would take it first")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- CLI
