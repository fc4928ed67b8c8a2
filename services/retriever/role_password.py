"""The retriever role's password: where database_setup reads it, and the SCRAM verifier it stores.

The verifier is computed here, as psql's \\password does, so the password
itself never travels to the server, where a logged statement would keep it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

PASSWORD_VARIABLE = "RETRIEVER_PASSWORD"
PASSWORD_FILE_VARIABLE = "RETRIEVER_PASSWORD_FILE"

# PostgreSQL's own choices for a SCRAM-SHA-256 verifier (scram_iterations'
# default, and its salt length).
SCRAM_ITERATIONS = 4096
SCRAM_SALT_BYTES = 16


class PasswordError(ValueError):
    """A password that is missing where it was promised, or that cannot be used."""


def read_password(password_file: Path | None, environment: Mapping[str, str]) -> str | None:
    """The password from `password_file`, else RETRIEVER_PASSWORD_FILE's file, else RETRIEVER_PASSWORD.

    None when none is given. A file's final line break is not part of the password.
    """
    file_name = password_file or environment.get(PASSWORD_FILE_VARIABLE)
    if file_name:
        try:
            password = Path(file_name).read_text().rstrip("\r\n")
        except OSError as exc:
            raise PasswordError(f"cannot read the password file {file_name}: {exc.strerror}") from None
        source = f"the password file {file_name}"
    elif PASSWORD_VARIABLE in environment:
        password = environment[PASSWORD_VARIABLE]
        source = PASSWORD_VARIABLE
    else:
        return None
    return _require_usable(password, source)


def _require_usable(password: str, source: str) -> str:
    # For printable ASCII, the SASLprep normalisation PostgreSQL applies
    # before hashing changes nothing, so the verifier computed here is the
    # one the server expects; beyond it, the two could differ.
    if not password:
        raise PasswordError(f"{source} holds an empty password")
    if not (password.isascii() and password.isprintable()):
        raise PasswordError(f"{source}: the password must be printable ASCII characters")
    return password


def scram_sha256_verifier(password: str, salt: bytes | None = None) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, RFC 7677)."""
    salt = os.urandom(SCRAM_SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
