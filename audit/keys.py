"""The site's Ed25519 log key file: unencrypted PKCS#8 PEM, mode 0600, never overwritten."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from audit.errors import LogKeyError


def generate_log_key(path: Path | str) -> Ed25519PrivateKey:
    """Create a new key file (0600) at `path`; refuses to overwrite an existing file."""
    path = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        # O_EXCL: two concurrent keygens cannot both win, and an existing key is never replaced.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise LogKeyError(f"{path}: a key file already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise LogKeyError(f"{path}: cannot create key file: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return key


def load_log_key(path: Path | str) -> Ed25519PrivateKey:
    """Read the key file; it must be readable by its owner only."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise LogKeyError(f"{path}: key file not found (create it with `fedgate audit keygen`)") from None
    except OSError as exc:
        raise LogKeyError(f"{path}: cannot read key file: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LogKeyError(f"{path}: key file is accessible by group or others; chmod 600 it")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise LogKeyError(f"{path}: not an unencrypted PKCS#8 PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LogKeyError(f"{path}: key is not an Ed25519 key")
    return key
