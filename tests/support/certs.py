"""Certificates made by the tests (trustme): files for the proxy, contexts for clients."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as files, and the authority that signed it."""

    authority: trustme.CA
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate's authority only."""
        context = ssl.create_default_context()
        self.authority.configure_trust(context)
        return context


def issue(
    directory: Path,
    name: str = "server",
    authority: trustme.CA | None = None,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
) -> Issued:
    """A leaf certificate for ``hosts`` written to ``directory/name.{crt,key}``."""
    authority = authority or trustme.CA()
    leaf = authority.issue_cert(*hosts)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_file.write_bytes(leaf.private_key_pem.bytes())
    return Issued(authority, cert_file, key_file)


def write_authority(authority: trustme.CA, path: Path) -> Path:
    authority.cert_pem.write_to_path(str(path))
    return path


def server_context(issued: Issued, client_authority: trustme.CA | None = None) -> ssl.SSLContext:
    """A backend's server context; ``client_authority``: require client
    certificates it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert_file, issued.key_file)
    if client_authority is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_authority.configure_trust(context)
    return context
