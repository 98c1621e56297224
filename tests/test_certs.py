"""meshc certs: a local CA issuing SPIFFE X.509 certificates, in the layout the sidecars read."""

from __future__ import annotations

import argparse
import ssl
import stat
from pathlib import Path

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
    """X.509 caps a CN at 64 characters; the identity lives in the SPIFFE URI SAN, uncut."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from meshc.certs import issue, new_ca

    long_name = "s" * 63
    ca_cert, ca_key = new_ca("t" * 70 + ".example")
    spiffe = f"spiffe://{'t' * 70}.example/ns/default/sa/{long_name}"
    cert, _ = issue(ca_cert, ca_key, spiffe, f"{long_name}.default")
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == f"{long_name}.default"[:64]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe]
