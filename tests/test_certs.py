"""meshc certs: a local CA issuing SPIFFE X.509 certificates, in the layout the sidecars read."""

from __future__ import annotations

import argparse
import re
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshc.certs import cert_file_names, identities, register, write_certs
from meshc.compiler import load_text

MESH = """
mesh demo { trust_domain "demo.local" namespace shop }
service web { port http 8080 identity web-sa endpoints 127.0.0.1:18080 calls api }
service api { port http 8081 namespace backend endpoints 127.0.0.1:18081 }
external stripe { host "api.stripe.com" port tls 443 tls originate }
"""


def test_layout_and_permissions(tmp_path: Path) -> None:
    mesh = load_text(MESH)
    written = write_certs(mesh, tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(["ca.pem", "ca-key.pem", "shop.web-sa.pem", "shop.web-sa-key.pem",
                            "backend.api.pem", "backend.api-key.pem",
                            *cert_file_names(mesh.ingress_identity)])
    for p in written:
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.name.endswith("-key.pem"):
            assert mode == 0o600, p
        else:
            assert mode & 0o400, p  # certificates are public: readable


def test_no_identity_for_externals() -> None:
    mesh = load_text(MESH)
    assert "stripe" not in {i.name for i in identities(mesh)}


def test_leaf_is_a_spiffe_svid_signed_by_the_ca(tmp_path: Path) -> None:
    mesh = load_text(MESH)
    write_certs(mesh, tmp_path)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate((tmp_path / "shop.web-sa.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://demo.local/ns/shop/sa/web-sa"]
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_openssl_accepts_the_pairs(tmp_path: Path) -> None:
    """The key matches the certificate, and the chain verifies (what Envoy's BoringSSL checks)."""
    mesh = load_text(MESH)
    write_certs(mesh, tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tmp_path / "backend.api.pem"), str(tmp_path / "backend.api-key.pem"))
    ctx.load_verify_locations(str(tmp_path / "ca.pem"))


def test_rerun_reuses_the_ca(tmp_path: Path) -> None:
    mesh = load_text(MESH)
    write_certs(mesh, tmp_path)
    first = (tmp_path / "ca.pem").read_bytes()
    write_certs(mesh, tmp_path)
    assert (tmp_path / "ca.pem").read_bytes() == first
    leaf = x509.load_pem_x509_certificate((tmp_path / "backend.api.pem").read_bytes())
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(first))


def test_cli(tmp_path: Path, capsys: object) -> None:
    src = tmp_path / "demo.mesh"
    src.write_text(MESH)
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers())
    args = ap.parse_args(["certs", str(src), "-o", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert (tmp_path / "out" / "shop.web-sa-key.pem").exists()
    bad = tmp_path / "bad.mesh"
    bad.write_text("service {")
    args = ap.parse_args(["certs", str(bad), "-o", str(tmp_path / "out2")])
    assert args.func(args) == 1
    assert not (tmp_path / "out2").exists()


def test_long_identity_and_trust_domain_fit_the_common_name(tmp_path: Path) -> None:
    """X.509 caps a CN at 64 characters; the identity lives in the SPIFFE URI SAN, uncut, and
    the shortened CN still names it alone (a hash of the whole SPIFFE ID)."""
    from cryptography.x509.oid import NameOID

    from meshc.certs import issue, new_ca, subject_cn
    from meshc.model import Identity

    long_name = "s" * 63
    ident = Identity(name=long_name, namespace="default", trust_domain="t" * 70 + ".example")
    ca_cert, ca_key = new_ca(ident.trust_domain)
    cert, _ = issue(ca_cert, ca_key, ident.spiffe, subject_cn(ident))
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == subject_cn(ident) and len(cn) == 64 and "_" in cn
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [ident.spiffe]
    with pytest.raises(ValueError, match="64"):
        issue(ca_cert, ca_key, ident.spiffe, "c" * 65)


def test_subjects_are_unique_per_identity_when_cut(tmp_path: Path) -> None:
    """The issue-16 collision: the same 59-character service account in `prod` and `prod2` had
    one subject (CN cut at 64), so nginx took one for the other. Now every identity of the mesh
    has its own subject, the short ones keep `<sa>.<ns>`, and each leaf has one URI SAN."""
    from cryptography.x509.oid import NameOID

    from meshc.certs import subject_cn, subject_dn

    sa = "payments-ledger-reconciliation-batch-worker-service-acct-x1"
    mesh = load_text(f"""
mesh m {{ trust_domain "cluster.local" }}
service a {{ port http 8080 namespace prod identity {sa} endpoints 127.0.0.1:1 }}
service b {{ port http 8081 namespace prod2 identity {sa} endpoints 127.0.0.1:2 }}
service c {{ port http 8082 namespace prod identity web endpoints 127.0.0.1:3 }}
""")
    write_certs(mesh, tmp_path)
    subjects = {}
    for ident in identities(mesh):
        leaf = x509.load_pem_x509_certificate((tmp_path / cert_file_names(ident)[0]).read_bytes())
        subjects[ident.spiffe] = leaf.subject.rfc4514_string()
        assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == subject_cn(ident)
        assert leaf.subject.rfc4514_string() == subject_dn(ident)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [ident.spiffe]
        assert not san.get_values_for_type(x509.DNSName)
    assert len(set(subjects.values())) == len(subjects) == 4, subjects
    assert subjects["spiffe://cluster.local/ns/prod/sa/web"] == "CN=web.prod,O=meshc"
    # `<sa>.prod` is exactly 64 characters and stays; `<sa>.prod2` (65) used to be cut to it
    assert subjects[f"spiffe://cluster.local/ns/prod/sa/{sa}"] == f"CN={sa}.prod,O=meshc"
    assert subjects[f"spiffe://cluster.local/ns/prod2/sa/{sa}"].startswith(f"CN={sa[:31]}_")


def test_shortened_names_never_look_like_short_ones() -> None:
    """A cut CN cannot be read as `<sa>.<ns>` of another identity (it always holds `_`), and a
    name that is not a DNS label is never written plain (`a.b` + `c` vs `a` + `b.c`)."""
    from meshc.certs import subject_cn
    from meshc.model import Identity

    short = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    one = Identity(name="a.b", namespace="c", trust_domain="t")
    two = Identity(name="a", namespace="b.c", trust_domain="t")
    assert subject_cn(one) != subject_cn(two)
    for ident in (one, two, Identity(name="x" * 40, namespace="y" * 40, trust_domain="t")):
        assert not short.match(subject_cn(ident)) and len(subject_cn(ident)) <= 64
    assert subject_cn(Identity(name="x" * 40, namespace="y" * 23, trust_domain="t")) == "x" * 40 + "." + "y" * 23
