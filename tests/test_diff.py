"""`meshc diff`: each change category, equivalences that must report nothing, renderers, CLI.

Meshes are small .mesh texts compiled with load_text; the git-based tests (--base) are in
tests/test_diff_git.py.
"""

from __future__ import annotations

import argparse
import json
import re

from meshc.commands.diff import register
from meshc.compiler import load_text
from meshc.diff import Diff, render_json, render_markdown, render_text, semantic_diff

SHOP = """\
mesh shop {
  mtls  strict
  authz deny_by_default
}

service frontend {
  port http 8080
  calls checkout, reviews
  expose ingress on port 80 paths prefix "/"
}

service checkout {
  port http 8080
  calls payments
  retry 1 on 5xx
}

service payments {
  port http 8080
  retry 1 on 5xx
  timeout 2s
  circuit_breaker max_connections 100 max_pending 10
  rate_limit 100/s burst 20
}

service reviews {
  port http 9080
  version v1 { labels version=v1 }
  version v2 { labels version=v2 }
  calls ratings
  route {
    when header end-user == "jason" -> v2
    otherwise -> split { v1 90%, v2 10% }
  }
}

service ratings {
  port http 9080
}

allow ingress  -> frontend
allow frontend -> checkout, reviews methods GET, POST
allow checkout -> payments methods POST paths prefix "/charge"
allow reviews  -> ratings methods GET
deny  *        -> payments paths prefix "/admin"
"""


def mesh(text: str):
    return load_text(text, "shop.mesh")


def diff(new_text: str, old_text: str = SHOP, **kw) -> Diff:
    old, new = mesh(old_text), mesh(new_text)
    result = semantic_diff(old, new, **kw)
    if not kw.get("targets"):
        assert render_json(semantic_diff(rebuilt(old, new), new)) == render_json(result), \
            "the old side rebuilt from its summary (meshc diff on two cores) must diff the same"
    return result


def rebuilt(old, new):
    """The old mesh as `meshc diff` rebuilds it when the sides load on two cores: from the
    old side's summary, the objects that differ, and the new side's for the rest."""
    from meshc import diff_sides

    def fetch(names, indexes):
        return [old.service(n) for n in names], [old.rules[i] for i in indexes]
    return diff_sides.rebuild(diff_sides.summarize(old), new, diff_sides.summarize(new), fetch)


def lines(d: Diff) -> list[str]:
    return [c.line() for c in d.changes]


def edit(old: str, new: str, text: str = SHOP) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# --------------------------------------------------------------------------- nothing to report


def test_identical_meshes_report_no_semantic_changes():
    d = diff(SHOP)
    assert d.empty
    assert render_text(d) == "no semantic changes\n"


def test_reformat_and_reorder_report_no_semantic_changes():
    blocks = re.split(r"\n(?=service |allow |deny )", SHOP)
    head, services = blocks[0], [b for b in blocks[1:] if b.startswith("service")]
    rules = [b for b in blocks[1:] if not b.startswith("service")]
    # Declarations in reverse order, extra blank lines and comments, different spacing.
    shuffled = "# reordered\n" + "\n\n".join(rules[::-1]) + "\n\n" + "\n\n\n".join(services[::-1]) + "\n" + head
    shuffled = shuffled.replace("port http 8080", "port   http   8080   # spaced")
    assert shuffled != SHOP
    d = diff(shuffled)
    assert d.empty, lines(d)
    assert "no semantic changes" in render_text(d)
    assert "No semantic changes" in render_markdown(d)


def test_split_allow_rule_is_an_equivalent_rewrite():
    split = edit("allow frontend -> checkout, reviews methods GET, POST\n",
                 "allow frontend -> checkout methods GET\n"
                 "allow frontend -> reviews methods POST\n"
                 "allow frontend -> checkout methods POST\n"
                 "allow frontend -> reviews methods GET\n")
    assert diff(split).empty


def test_redundant_rule_covered_by_a_broader_one_reports_nothing():
    extra = SHOP + 'allow frontend -> checkout methods POST paths exact "/cart"\n'
    assert diff(extra).empty


# --------------------------------------------------------------------------- access


def test_access_added_is_widening():
    d = diff(SHOP + 'allow frontend -> payments methods POST paths exact "/refund"\n')
    assert lines(d) == ["+ allow frontend -> payments POST /refund (widens)"]
    (c,) = d.changes
    assert c.category == "access" and c.effect == "widening" and c.where.startswith("shop.mesh:")
    assert d.widens


def test_access_removed_is_narrowing():
    d = diff(edit("allow reviews  -> ratings methods GET\n", ""))
    assert lines(d) == ["- allow reviews -> ratings GET (narrows)"]
    assert not d.widens


def test_access_narrowed_by_a_new_deny():
    d = diff(SHOP + 'deny * -> reviews methods POST\n')
    assert lines(d) == ["- allow frontend -> reviews POST (narrows)"]


def test_wildcard_allow_reaches_other_services_and_ingress():
    d = diff(SHOP + "allow * -> ratings\n")
    got = lines(d)
    assert "+ allow (other services) -> ratings (widens)" in got
    assert "+ allow ingress -> ratings (widens)" in got
    # reviews already had GET; it gains everything else.
    assert any(x.startswith("+ allow reviews -> ratings") for x in got)


def test_default_posture_change_widens_access():
    d = diff(edit("authz deny_by_default", "authz allow_by_default"))
    got = lines(d)
    assert "! mesh: authz deny_by_default -> allow_by_default (weakens)" in got
    assert "+ allow (other services) -> payments any path except /admin (widens)" in got


# --------------------------------------------------------------------------- routing


def test_routing_split_change_in_effective_percentages():
    d = diff(edit("split { v1 90%, v2 10% }", "split { v1 50%, v2 50% }"))
    assert lines(d) == ["~ reviews: v1 90% -> 50%, v2 10% -> 50%"]
    assert d.changes[0].effect == "neutral"


def test_routing_rule_added_removed_and_order():
    added = diff(edit("    otherwise", '    when path prefix "/beta" -> v2\n    otherwise'))
    assert lines(added) == ['+ reviews: route when path prefix "/beta" -> v2']
    removed = diff(edit('    when header end-user == "jason" -> v2\n', ""))
    assert lines(removed) == ['- reviews: route when header end-user == "jason" -> v2']
    two = edit("    otherwise", '    when path prefix "/beta" -> v1\n    otherwise')
    swapped = edit('    when header end-user == "jason" -> v2\n    when path prefix "/beta" -> v1\n',
                   '    when path prefix "/beta" -> v1\n    when header end-user == "jason" -> v2\n', two)
    d = semantic_diff(mesh(two), mesh(swapped))
    assert [c.text for c in d.changes] == [
        'reviews: route rule order changed (when path prefix "/beta" | when header end-user == "jason" | otherwise)']


def test_routing_single_destination_change():
    d = diff(edit('"jason" -> v2', '"jason" -> v1'))
    assert lines(d) == ['~ reviews [when header end-user == "jason"]: v1 0% -> 100%, v2 100% -> 0%']


# --------------------------------------------------------------------------- resilience


def test_more_retries_widen_and_amplification_is_reported():
    d = diff(edit("  retry 1 on 5xx\n  timeout 2s", "  retry 7 on 5xx\n  timeout 2s"))
    got = lines(d)
    assert "~ payments: retry 1 (2 attempts) on 5xx -> 7 (8 attempts) on 5xx (widens)" in got
    assert "~ checkout -> payments: worst-case attempts 4 -> 16 (widens)" in got
    assert all(c.category == "resilience" for c in d.changes)


def test_timeouts_breakers_rate_limits_health_checks():
    new = edit("  timeout 2s\n", "  timeout 500ms\n")
    new = edit("max_connections 100", "max_connections 1000", new)
    new = edit("rate_limit 100/s burst 20", "rate_limit 10/s burst 20", new)
    new = edit("service ratings {\n  port http 9080\n",
               'service ratings {\n  port http 9080\n  health_check http "/healthz" interval 5s\n', new)
    got = lines(diff(new))
    assert "~ payments: timeout 2s -> 500ms (narrows)" in got
    assert "~ payments: circuit breaker max_connections 100 -> 1000 (widens)" in got
    assert "~ payments: rate limit 100/s burst 20 -> 10/s burst 20 (narrows)" in got
    assert any(x.startswith("+ ratings: health check") and x.endswith("(narrows)") for x in got), got


def test_removing_a_protection_widens():
    new = edit("  circuit_breaker max_connections 100 max_pending 10\n", "")
    new = edit("  timeout 2s\n", "", new)
    got = lines(diff(new))
    assert "- payments: circuit breaker max_connections=100 max_pending=10 (widens)" in got
    assert "~ payments: timeout 2s -> none (widens)" in got


# --------------------------------------------------------------------------- posture


def test_mtls_weakening_is_flagged():
    d = diff(edit("service ratings {\n  port http 9080\n", "service ratings {\n  port http 9080\n  mtls permissive\n"))
    got = lines(d)
    assert "! ratings: mtls strict -> permissive (weakens)" in got
    # reviews' sidecar still speaks mTLS to the permissive port: its access is unchanged
    assert not [line for line in got if "allow reviews -> ratings" in line]
    got = lines(diff(edit("service ratings {\n  port http 9080\n", "service ratings {\n  port http 9080\n  mtls disabled\n")))
    assert "! ratings: mtls strict -> disabled (weakens)" in got
    # With mTLS off the identity of reviews can no longer be proven: its allow rule stops matching.
    assert "- allow reviews -> ratings GET (narrows)" in got


def test_mesh_wide_mtls_change_is_reported_once():
    d = diff(edit("mtls  strict", "mtls  permissive"))
    posture = [c for c in d.changes if c.category == "posture"]
    assert [c.line() for c in posture] == ["! mesh: mtls strict -> permissive (weakens)"]


def test_exposure_and_egress():
    new = edit('expose ingress on port 80 paths prefix "/"', 'expose ingress on port 80 paths prefix "/", exact "/admin"')
    new = edit("service ratings {\n  port http 9080\n",
               'service ratings {\n  port http 9080\n  expose ingress on port 80 paths exact "/ratings"\n', new)
    new += 'external stripe {\n  host "api.stripe.com"\n  port tls 443\n}\n'
    got = lines(diff(new))
    assert '! frontend: ingress path exact "/admin" (weakens)' in got
    assert '! ratings: exposed on ingress port 80 hosts * paths exact "/ratings" (weakens)' in got
    assert "! stripe: egress to api.stripe.com (weakens)" in got
    assert "+ external service stripe" in got


def test_exposure_removed_strengthens():
    d = diff(edit('  expose ingress on port 80 paths prefix "/"\n', ""))
    assert '- frontend: exposed on ingress port 80 hosts * paths prefix "/" (strengthens)' in lines(d)


# --------------------------------------------------------------------------- services and targets


def test_service_added_and_removed():
    new = edit("service ratings {\n  port http 9080\n}\n", "") .replace("  calls ratings\n", "")
    new = new.replace("allow reviews  -> ratings methods GET\n", "")
    new += "service details {\n  port http 9080\n}\n"
    got = lines(diff(new))
    assert "+ service details" in got and "- service ratings" in got
    assert "- allow reviews -> ratings GET (narrows)" in got


def test_targets_list_changed_files_and_report_failures():
    d = diff(edit("split { v1 90%, v2 10% }", "split { v1 50%, v2 50% }"), targets=["envoy", "no-such-target"])
    targets = [c for c in d.changes if c.category == "targets"]
    assert any(c.text.startswith("envoy: ") and c.op == "changed" for c in targets)
    errors = [c for c in targets if c.op == "error"]
    assert {c.text.split(":")[0] for c in errors} == {"no-such-target"}
    assert [c.text for c in errors] == ["no-such-target: does not compile (either side): E300: unknown target "
                                        "'no-such-target'"]
    unchanged = diff(SHOP, targets=["envoy"])
    assert unchanged.empty


# --------------------------------------------------------------------------- renderers and CLI


def test_json_renderer_is_machine_readable():
    d = diff(SHOP + 'allow frontend -> payments methods POST paths exact "/refund"\n')
    data = json.loads(render_json(d))
    assert data["summary"] == {"changes": 1, "widening": 1, "narrowing": 0, "neutral": 0, "widens": True}
    assert data["changes"][0]["category"] == "access" and data["changes"][0]["sign"] == "+"


def test_text_renderer_colours_only_when_asked():
    d = diff(SHOP + "allow * -> ratings\n")
    assert "\x1b[" not in render_text(d)
    assert "\x1b[31m" in render_text(d, color=True)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="meshc")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    rc = args.func(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_files_and_fail_on_widen(tmp_path, capsys):
    old, new = tmp_path / "old.mesh", tmp_path / "new.mesh"
    old.write_text(SHOP)
    new.write_text(SHOP + "allow * -> ratings\n")
    rc, out, _ = run_cli(["diff", str(old), str(new)], capsys)
    assert rc == 0 and "(other services) -> ratings" in out
    rc, out, _ = run_cli(["diff", str(old), str(new), "--fail-on", "widen", "--format", "json"], capsys)
    assert rc == 1 and json.loads(out)["summary"]["widens"] is True
    rc, _, _ = run_cli(["diff", str(new), str(old), "--fail-on", "widen"], capsys)
    assert rc == 0  # the reverse change only narrows


def test_cli_directories_use_root_files(tmp_path, capsys):
    for side, extra in (("a", ""), ("b", "allow * -> ratings\n")):
        d = tmp_path / side
        d.mkdir()
        (d / "common.mesh").write_text(SHOP.split("\nallow ")[0] + "\n")
        rules = "allow " + SHOP.split("\nallow ", 1)[1]
        (d / "main.mesh").write_text('import "common.mesh"\n' + rules + extra)
    rc, out, err = run_cli(["diff", str(tmp_path / "a"), str(tmp_path / "b")], capsys)
    assert rc == 0, err
    assert "+ allow ingress -> ratings" in out


def test_cli_usage_and_load_errors(tmp_path, capsys):
    rc, _, err = run_cli(["diff", str(tmp_path)], capsys)
    assert rc == 2 and "OLD and NEW" in err
    bad = tmp_path / "bad.mesh"
    bad.write_text("service {")
    good = tmp_path / "good.mesh"
    good.write_text(SHOP)
    rc, out, err = run_cli(["diff", str(good), str(bad)], capsys)
    assert rc == 1 and out == "" and "bad.mesh" in err and "Traceback" not in err


def test_reordering_inside_declarations_reports_nothing():
    new = edit("methods GET, POST", "methods POST, GET")
    new = edit("split { v1 90%, v2 10% }", "split { v2 10%, v1 90% }", new)
    new = edit("  calls checkout, reviews\n", "  calls reviews, checkout\n", new)
    new = edit("allow frontend -> checkout, reviews", "allow frontend -> reviews, checkout", new)
    assert diff(new).empty, lines(diff(new))


def test_regex_rules_are_probed_with_matching_requests():
    rule = 'allow frontend -> ratings methods GET paths regex "^/ratings/[0-9]+$"\n'
    d = diff(SHOP + rule)
    assert lines(d) == ["+ allow frontend -> ratings GET /ratings/0 (widens)"]
    # The same rule written with an equivalent character class: nothing changes.
    assert semantic_diff(mesh(SHOP + rule), mesh(SHOP + rule.replace("[0-9]", "[0123456789]"))).empty


def test_inventory_changes_are_neutral():
    new = edit("service ratings {\n  port http 9080\n",
               "service ratings {\n  port http 9080\n  endpoints 127.0.0.1:9999\n  version v3 { labels version=v3 }\n")
    got = lines(diff(new))
    assert "~ ratings: endpoints (none) -> 127.0.0.1:9999" in got
    assert "+ ratings: version v3" in got
    assert all(c.effect == "neutral" for c in diff(new).changes)


def test_header_conditions_are_probed_together():
    rule = 'allow frontend -> ratings headers x-tenant == "a", x-env == "prod"\n'
    got = lines(diff(SHOP + rule))
    assert got == ['+ allow frontend -> ratings headers x-env == "prod", x-tenant == "a" (widens)']


def test_service_taking_an_identity_named_by_a_rule_gains_its_access():
    base = SHOP + "allow identity legacy-batch -> ratings methods GET, POST\n"
    new = edit("service checkout {\n  port http 8080\n", "service checkout {\n  port http 8080\n  identity legacy-batch\n",
               base)
    got = lines(semantic_diff(mesh(base), mesh(new)))
    assert "~ checkout: identity default/checkout -> default/legacy-batch" in got
    assert "+ allow checkout -> ratings GET, POST (widens)" in got
