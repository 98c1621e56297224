"""`meshc certs`: a small local CA issuing SPIFFE X.509 certificates for every identity in a mesh.

For local runs and tests only (the Envoy and native sidecars read these files at run time).
Layout of the output directory (what `cert_file_names` returns, relative to it):

    ca.pem                        the CA certificate (trust anchor of every sidecar)
    ca-key.pem                    the CA private key (kept, so a re-run re-issues from the same CA)
    <namespace>.<sa>.pem          leaf certificate, URI SAN spiffe://<td>/ns/<namespace>/sa/<sa>
    <namespace>.<sa>-key.pem      its private key (PKCS#8 PEM, EC P-256)

Namespaces and service accounts are DNS-1123 labels, so the `.` keeps names unambiguous.
Private keys are written with mode 0600. Identities: every service's, plus the mesh's ingress
gateway identity.

Subjects: `CN=<sa>.<namespace>,O=meshc`, unique per identity, because the nginx target reads the
caller from the verified subject (stock nginx has no variable for the URI SAN). X.509 caps a CN
at 64 characters (RFC 5280 ub-common-name); a name that does not fit, or whose parts are not
DNS-1123 labels, gets `CN=<first characters of sa.namespace>_<32 hex digits of SHA-256 of the
SPIFFE ID>` instead: still unique (128 bits of the whole identity, trust domain included), and
never of the `label.label` shape, so it cannot be read as some other service account's name.
Every leaf carries exactly one URI SAN (the SPIFFE ID) and no DNS SAN.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import re
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshc.model import Identity, Mesh

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
VALIDITY = dt.timedelta(days=365)
CN_MAX = 64  # RFC 5280 ub-common-name
CN_HASH_HEX = 32  # hex digits of SHA-256(SPIFFE ID) in a shortened CN: 128 bits
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def subject_cn(ident: Identity) -> str:
    """The leaf's common name: `<sa>.<namespace>` when both are DNS-1123 labels and it fits in
    64 characters; otherwise a readable prefix, `_` (never in a label, so the two forms cannot
    meet) and a hash of the full SPIFFE ID. One function, used by `meshc certs` and by the nginx
    target (which maps subjects to identities and verifies callees by this name)."""
    plain = f"{ident.name}.{ident.namespace}"
    if len(plain) <= CN_MAX and _LABEL.match(ident.name) and _LABEL.match(ident.namespace):
        return plain
    digest = hashlib.sha256(ident.spiffe.encode()).hexdigest()[:CN_HASH_HEX]
    # the prefix is for people only: DNS characters, so the subject string is predictable
    prefix = re.sub(r"[^a-z0-9.-]", "-", plain.lower())[:CN_MAX - 1 - CN_HASH_HEX]
    return f"{prefix}_{digest}"


def subject_dn(ident: Identity) -> str:
    """The leaf subject as nginx's `$ssl_client_s_dn` writes it (RFC 2253 order; the CN holds
    no character that RFC 2253 escapes)."""
    return f"CN={subject_cn(ident)},O=meshc"


def cert_file_names(ident: Identity) -> tuple[str, str]:
    """(certificate, private key) file names of an identity, relative to the certs directory."""
    stem = f"{ident.namespace}.{ident.name}"
    return f"{stem}.pem", f"{stem}-key.pem"


def identities(mesh: Mesh) -> list[Identity]:
    """Every identity that needs a certificate: services (not externals) and the ingress gateway."""
    found = {i.spiffe: i for i in [s.identity for s in mesh.services if s.external is None]}
    found[mesh.ingress_identity.spiffe] = mesh.ingress_identity
    return [found[k] for k in sorted(found)]


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    # Create with 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def new_ca(trust_domain: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshc"),
                      x509.NameAttribute(NameOID.COMMON_NAME, _common_name(f"meshc local CA for {trust_domain}"))])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _common_name(text: str) -> str:
    """The CA's common name, a label for people only, cut to X.509's 64 characters. Leaf names
    are never cut here: they come from `subject_cn`, which keeps them unique."""
    return text[:CN_MAX]


def issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, spiffe: str,
          common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf for one SPIFFE ID: URI SAN, client and server auth, signed by the CA. The common
    name is written as given (at most 64 characters: `subject_cn` makes identity names fit)."""
    if len(common_name) > CN_MAX:
        raise ValueError(f"common name over {CN_MAX} characters: {common_name!r} (use subject_cn)")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshc"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=True, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def load_or_create_ca(out_dir: Path, trust_domain: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Reuse the CA in `out_dir` if there is one, so running sidecars keep trusting new leaves."""
    cert_p, key_p = out_dir / CA_CERT, out_dir / CA_KEY
    if cert_p.exists() and key_p.exists():
        cert = x509.load_pem_x509_certificate(cert_p.read_bytes())
        key = serialization.load_pem_private_key(key_p.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return cert, key
    cert, key = new_ca(trust_domain)
    _write_cert(cert_p, cert)
    _write_key(key_p, key)
    return cert, key


def write_certs(mesh: Mesh, out_dir: Path) -> list[Path]:
    """Write the CA and one certificate + key per identity of `mesh`; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = load_or_create_ca(out_dir, mesh.trust_domain)
    written = [out_dir / CA_CERT, out_dir / CA_KEY]
    for ident in identities(mesh):
        cert, key = issue(ca_cert, ca_key, ident.spiffe, subject_cn(ident))
        cert_name, key_name = cert_file_names(ident)
        _write_cert(out_dir / cert_name, cert)
        _write_key(out_dir / key_name, key)
        written += [out_dir / cert_name, out_dir / key_name]
    return written


# --------------------------------------------------------------------------- CLI


def _run(args: argparse.Namespace) -> int:
    from meshc.compiler import load
    from meshc.diagnostics import MeshcError, render

    try:
        mesh = load([Path(f) for f in args.files])
    except MeshcError as e:
        sources = {}
        for d in e.diagnostics:
            try:
                sources[d.span.file] = Path(d.span.file).read_text()
            except OSError:
                pass
        sys.stderr.write(render(e.diagnostics, "text", sources))
        return 1
    except OSError as e:
        print(f"meshc certs: {e}", file=sys.stderr)
        return 2
    for p in write_certs(mesh, Path(args.output)):
        print(p)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `meshc certs FILES -o DIR`."""
    p = subparsers.add_parser("certs", help="issue SPIFFE X.509 certificates for local runs",
                              description="Create a local CA (or reuse the one in DIR) and issue one "
                                          "SPIFFE certificate per identity of the mesh.")
    p.add_argument("files", nargs="+", help=".mesh files")
    p.add_argument("-o", "--output", default="certs", help="output directory (default: certs)")
    p.set_defaults(func=_run)
