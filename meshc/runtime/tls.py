"""TLS for the native proxy: server and client contexts (the `ssl` module) and the peer's
SPIFFE identity, read from the URI SAN of its certificate with `cryptography`.

Mesh mTLS verifies the peer's chain against the mesh CA but not its host name: identity is
the SPIFFE id, checked by the caller against the id the config expects (as Envoy's
`match_typed_subject_alt_names`) and by the callee's authorization rules.

The identity is THE `spiffe://` URI SAN: a certificate with several (which one would the
rules mean?) or with one that is no visible-ASCII URI (it is written into
`x-forwarded-client-cert`) is refused, `IdentityRefused`: the callee closes the connection
and logs why, the caller treats the upstream as the wrong peer.
"""

from __future__ import annotations

import re
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


class IdentityRefused(Exception):
    """A peer certificate whose SPIFFE identity is ambiguous or unsafe (the message says why)."""


_SPIFFE_TEXT = re.compile(r"spiffe://[\x21-\x7e]+")


@lru_cache(maxsize=256)
def _spiffe_of_der(der: bytes) -> str | IdentityRefused | None:
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    ids = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.lower().startswith("spiffe://")]
    if len(ids) > 1:
        return IdentityRefused(f"the peer certificate has {len(ids)} SPIFFE URI SANs ({', '.join(map(repr, ids))}): "
                               "a mesh identity must be exactly one")
    if ids and _SPIFFE_TEXT.fullmatch(ids[0]) is None:
        return IdentityRefused(f"the peer certificate's SPIFFE URI SAN {ids[0]!r} is not lower-case "
                               "`spiffe://` followed by visible ASCII")
    return ids[0] if ids else None


def spiffe_of_der(der: bytes) -> str | None:
    """The `spiffe://` URI SAN of a DER certificate; None without one; IdentityRefused for
    several or a malformed one (cached: peers reuse certificates, refusals too)."""
    got = _spiffe_of_der(der)
    if isinstance(got, IdentityRefused):
        raise IdentityRefused(str(got))
    return got


def peer_spiffe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The peer's SPIFFE id (None: no certificate or no SPIFFE SAN); raises IdentityRefused."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return spiffe_of_der(der) if der else None
