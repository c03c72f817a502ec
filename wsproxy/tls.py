"""TLS contexts from the configuration: the only module that reads certificates.

Theory of operation
-------------------
The configuration names files (``listen[].tls``, ``upstreams.<name>.tls``);
this module reads them into :class:`ssl.SSLContext` objects, at start and
again on every SIGHUP, so a rotated certificate takes effect without a
restart.  A context is built whole or not at all, and every failing file is
reported (as :class:`wsproxy.config.ConfigError`, with the key that names
it): ``wsproxy check`` and a reload refuse a certificate that does not load,
and the contexts in force stay.

Choices, and what other proxies do:

* **Termination**: TLS 1.2 and 1.3 only (Mozilla's "intermediate" profile,
  nginx's default since 1.23.4), OpenSSL's default cipher list for them;
  ALPN offers ``http/1.1`` only (no HTTP/2 here, and a client that asks for
  ``h2`` alone simply gets no ALPN answer, as from nginx without ``http2``);
  no renegotiation (a client-driven CPU cost, refused by nginx too).
* **To upstreams**: verification on by default, against ``ca_file`` or the
  system's store; the name checked and sent as SNI is ``server_name`` or the
  server's host (an IP address is checked against the certificate's IP
  entries and not sent, RFC 6066 §3).  nginx verifies nothing unless told
  (``proxy_ssl_verify off`` by default); Envoy, Caddy and HAProxy 2.5+ verify
  by default, which is what an operator who writes ``https://`` expects.
* A reload builds new contexts; a connection keeps the one it started with,
  so open sessions are untouched by a rotation.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from wsproxy.config import Address, Config, ConfigError, ConfigIssue, ListenTls, UpstreamTls

#: What the front end speaks (and the only thing it offers in ALPN).
ALPN = ["http/1.1"]


@dataclass(frozen=True, slots=True)
class TlsContexts:
    """The contexts of one configuration: per TLS listener and per upstream
    that has an ``https://`` server."""

    listeners: Mapping[Address, ssl.SSLContext] = field(
        default_factory=lambda: MappingProxyType({})
    )
    upstreams: Mapping[str, ssl.SSLContext] = field(default_factory=lambda: MappingProxyType({}))
    #: Per upstream, a digest of its TLS settings and the files they name: a
    #: reload that changes it retires the pooled connections made before.
    fingerprints: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))


class _Encrypted(Exception):
    """The key asks for a passphrase (not supported: nobody could type it)."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL asks on the terminal: a reload would block
    # the event loop reading it.
    raise _Encrypted


def server_context(settings: ListenTls) -> ssl.SSLContext:
    """A context that terminates TLS with ``settings``' certificate (OSError,
    ssl.SSLError when a file does not load)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(ALPN)
    context.load_cert_chain(settings.cert_file, settings.key_file, password=_no_passphrase)
    return context


def client_context(settings: UpstreamTls) -> ssl.SSLContext:
    """A context for connections to an upstream's ``https://`` servers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    if settings.verify:
        if settings.ca_file is not None:
            context.load_verify_locations(cafile=settings.ca_file)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.cert_file is not None and settings.key_file is not None:
        context.load_cert_chain(settings.cert_file, settings.key_file, password=_no_passphrase)
    return context


def _reason(exc: Exception) -> str:
    if isinstance(exc, _Encrypted):
        return "the key is protected by a passphrase; write it without one (openssl pkey -in KEY)"
    if isinstance(exc, ssl.SSLError):
        # OpenSSL's words ("[SSL] PEM lib (_ssl.c:3926)") say little.
        reason = exc.reason or ""
        if reason == "KEY_VALUES_MISMATCH":
            return "the key does not match the certificate"
        if reason == "NO_CERTIFICATE_OR_CRL_FOUND":
            return "no PEM certificate in the file"
        if "PEM lib" in str(exc):
            return "not a PEM certificate or key"
        return reason.replace("_", " ").lower() or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read: {exc.strerror}"
    return str(exc)


def load(config: Config) -> TlsContexts:
    """Every context ``config`` needs; ConfigError naming each file that fails."""
    issues: list[ConfigIssue] = []
    listeners: dict[Address, ssl.SSLContext] = {}
    upstreams: dict[str, ssl.SSLContext] = {}
    fingerprints: dict[str, bytes] = {}

    def issue(path: str, files: str, exc: Exception) -> None:
        issues.append(ConfigIssue(config.source, 0, 0, path, f"{files}: {_reason(exc)}"))

    for index, listen in enumerate(config.listen):
        if listen.tls is None:
            continue
        try:
            listeners[listen.address] = server_context(listen.tls)
        except (OSError, ValueError, _Encrypted) as exc:
            issue(
                f"listen[{index}].tls",
                f"cert_file {listen.tls.cert_file!r} with key_file {listen.tls.key_file!r}",
                exc,
            )
    for name, upstream in config.upstreams.items():
        if not any(server.tls for server in upstream.servers):
            continue
        settings = upstream.tls
        try:
            # Digest first: a file replaced between the two reads then costs
            # one needless retire at the next reload, never a missed one.
            fingerprints[name] = _fingerprint(settings)
            upstreams[name] = client_context(settings)
        except (OSError, ValueError, _Encrypted) as exc:
            files = ", ".join(
                f"{key} {value!r}"
                for key, value in (
                    ("ca_file", settings.ca_file),
                    ("cert_file", settings.cert_file),
                    ("key_file", settings.key_file),
                )
                if value is not None
            )
            issue(f"upstreams.{name}.tls", files or "the system's CA store", exc)
    if issues:
        raise ConfigError(issues)
    return TlsContexts(
        MappingProxyType(listeners), MappingProxyType(upstreams), MappingProxyType(fingerprints)
    )


def _fingerprint(settings: UpstreamTls) -> bytes:
    digest = hashlib.sha256(repr(settings).encode())
    for path in (settings.ca_file, settings.cert_file, settings.key_file):
        if path is not None:
            with open(path, "rb") as stream:  # just loaded: readable
                digest.update(stream.read())
    return digest.digest()


def server_hostname(settings: UpstreamTls, host: str) -> str:
    """The name a connection to ``host`` checks (and sends as SNI unless it
    is an address)."""
    return settings.server_name or host
