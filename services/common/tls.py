"""TLS from PEM files: credentials for a server (serve()) and for a client's channels.

Files are read once, when credentials are made at start-up, so a wrong path
stops the process at once with the name of the setting to fix, not at the
first call. Every error names the environment variable the path came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """A TLS setting that cannot be used; the message names the setting."""


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and key, and for mTLS the CA its clients' certificates must chain to."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    # e.g. "EMBEDDER_TLS_": what the error messages call the settings.
    setting_prefix: str

    def credentials(self) -> grpc.ServerCredentials:
        key = read_pem(self.key_file, f"{self.setting_prefix}KEY_FILE")
        cert = read_pem(self.cert_file, f"{self.setting_prefix}CERT_FILE")
        if self.client_ca_file is None:
            return grpc.ssl_server_credentials([(key, cert)])
        client_ca = read_pem(self.client_ca_file, f"{self.setting_prefix}CLIENT_CA_FILE")
        return grpc.ssl_server_credentials([(key, cert)], client_ca, require_client_auth=True)


@dataclass(frozen=True)
class ClientTls:
    """What a client trusts, and for mTLS the certificate it presents."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    # Checked against the server's certificate instead of the target's host name,
    # for targets such as an IP list or a name the certificate does not carry.
    server_name: str | None = None
    # e.g. "GATEWAY_UPSTREAM_TLS_": what the error messages call the settings.
    setting_prefix: str = ""

    def __post_init__(self) -> None:
        check_pair(self.cert_file, self.key_file, self.setting_prefix)

    def credentials(self) -> grpc.ChannelCredentials:
        ca = read_pem(self.ca_file, f"{self.setting_prefix}CA_FILE")
        if self.cert_file is None or self.key_file is None:
            return grpc.ssl_channel_credentials(root_certificates=ca)
        key = read_pem(self.key_file, f"{self.setting_prefix}KEY_FILE")
        cert = read_pem(self.cert_file, f"{self.setting_prefix}CERT_FILE")
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def channel_options(self) -> list[tuple[str, str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def check_pair(cert_file: Path | None, key_file: Path | None, setting_prefix: str) -> None:
    """A certificate is useless without its key and the other way round: both or neither."""
    if (cert_file is None) != (key_file is None):
        raise TlsConfigError(f"set both {setting_prefix}CERT_FILE and {setting_prefix}KEY_FILE, or neither")


def read_pem(path: Path, setting: str) -> bytes:
    """The file's bytes; gRPC's own error for a bad file comes late and names no setting."""
    try:
        content = path.read_bytes()
    except OSError as error:
        raise TlsConfigError(f"{setting}={path}: cannot read: {error.strerror}") from error
    if b"-----BEGIN " not in content:
        raise TlsConfigError(f"{setting}={path}: not a PEM file")
    return content
