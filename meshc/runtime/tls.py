"""TLS for the native proxy: server and client contexts (the `ssl` module) and the peer's
SPIFFE identity, read from the URI SAN of its certificate with `cryptography`.

Mesh mTLS verifies the peer's chain against the mesh CA but not its host name: identity is
the SPIFFE id, checked by the caller against the id the config expects (as Envoy's
`match_typed_subject_alt_names`) and by the callee's authorization rules.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from pathlib import Path

from cryptography import x509


def _resolve(base: Path, p: str | None) -> str:
    if not p:
        raise ValueError("a TLS setting needs ca, cert and key")
    q = Path(p)
    q = q if q.is_absolute() else base / q
    if not q.is_file():
        raise ValueError(f"missing TLS file {q} (issue the mesh's certificates with `meshc certs`)")
    return str(q)


def server_context(base: Path, ca: str | None, cert: str | None, key: str | None,
                   require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(_resolve(base, cert), _resolve(base, key))
    ctx.load_verify_locations(_resolve(base, ca))
    # Permissive listeners accept TLS without a client certificate too (the caller is then
    # unauthenticated); strict ones refuse the handshake.
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def mesh_client_context(base: Path, ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the SPIFFE id is checked instead
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(_resolve(base, ca))
    ctx.load_cert_chain(_resolve(base, cert), _resolve(base, key))
    return ctx


def origination_context() -> ssl.SSLContext:
    """TLS origination to an external service: the system trust store and host name checks."""
    return ssl.create_default_context()


@lru_cache(maxsize=256)
def spiffe_of_der(der: bytes) -> str | None:
    """The first `spiffe://` URI SAN of a DER certificate (cached: peers reuse certificates)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri
    return None


def peer_spiffe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return spiffe_of_der(der) if der else None
