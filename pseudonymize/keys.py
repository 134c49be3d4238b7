"""The site master key and the keys derived from it with HKDF; key bytes never leave this module's objects.

A key file (or environment variable) holds at least 32 random bytes written as base64 or hex text, as
`fedgate keygen` writes them. Derived keys are HKDF-SHA256(master, info = purpose ‖ 0x00 ‖ context), so
pseudonyms made under two agreements cannot be linked. The store records only `key_id`, a fingerprint
derived the same way, from which the key cannot be recovered.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pseudonymize.errors import KeyMaterialError

MIN_KEY_BYTES = 32
_SALT = b"fedgate/v1"


def _decode(text: str, where: str) -> bytes:
    text = text.strip()
    if not text:
        raise KeyMaterialError(f"{where}: the key is empty")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise KeyMaterialError(f"{where}: the key is neither hex nor base64 text") from None
    if len(raw) < MIN_KEY_BYTES:
        raise KeyMaterialError(f"{where}: the key is too short ({len(raw)} bytes; at least {MIN_KEY_BYTES})")
    return raw


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class SecretKey:
    """Key material that derives subkeys and fingerprints but never shows itself in repr, str or errors."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) < MIN_KEY_BYTES:
            raise KeyMaterialError(f"the key is too short ({len(raw)} bytes; at least {MIN_KEY_BYTES})")
        self._raw = bytes(raw)

    @classmethod
    def from_file(cls, path: Path) -> SecretKey:
        """Read a key file; refuse one that is missing, unreadable or readable by group or others."""
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise KeyMaterialError(f"{path}: key file not found") from None
        except OSError as exc:
            raise KeyMaterialError(f"{path}: cannot read key file ({exc.strerror})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyMaterialError(f"{path}: key file is accessible by group or others; run chmod 600 on it")
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            raise KeyMaterialError(f"{path}: cannot read key file as base64 or hex text") from None
        return cls(_decode(text, str(path)))

    @classmethod
    def from_env(cls, variable: str) -> SecretKey:
        """Read a key from an environment variable."""
        value = os.environ.get(variable)
        # The variable's name is said only when it is shaped as one: a key pasted where its name belongs
        # (master_key_env = "<the key>") must not be printed back.
        named = (
            f"environment variable {variable}" if _ENV_NAME.match(variable) else "the environment variable"
        )
        if value is None:
            raise KeyMaterialError(f"{named} is not set")
        return cls(_decode(value, named))

    def derive(self, purpose: str, context: str = "", length: int = 32) -> bytes:
        """HKDF-SHA256 subkey for one purpose (e.g. 'pseudonym') and context (e.g. an agreement id)."""
        info = purpose.encode() + b"\x00" + context.encode("utf-8")
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT, info=info).derive(self._raw)

    @property
    def key_id(self) -> str:
        """A public fingerprint of the key: 'fp:' and 16 hex digits of a derived value."""
        return "fp:" + self.derive("key-id", length=8).hex()

    def __repr__(self) -> str:
        return f"SecretKey({self.key_id})"

    __str__ = __repr__


def write_new_key(path: Path) -> SecretKey:
    """Create a new random 32-byte key file (base64, mode 0600); refuse to overwrite an existing one."""
    raw = secrets.token_bytes(MIN_KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyMaterialError(f"{path}: a key file already exists; refusing to overwrite it") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(base64.b64encode(raw).decode() + "\n")
    return SecretKey(raw)
