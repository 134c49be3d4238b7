"""C2SP signed notes with Ed25519 keys: verifier keys, key IDs, signing, parsing and verification (pure).

Two key types are supported: 0x01 (Ed25519 note signatures, the log's key) and 0x04 (Ed25519
cosignature/v1, a witness's key, whose signature also carries an 8-byte timestamp).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.errors import NoteError, SignatureError

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
EM_DASH = "\u2014"
# C2SP asks verifiers to accept at least 16 signatures and to bound the total; 100 matches Go's note package.
MAX_SIGNATURES = 100
_SIG_PREFIX = EM_DASH + " "


def b64(data: bytes) -> str:
    """Standard base64 with padding, as every C2SP format uses."""
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: str, what: str) -> bytes:
    """Decode standard padded base64, rejecting anything else (whitespace, URL alphabet, bad padding).

    Only the canonical encoding is accepted: one whose unused bits before the padding are zero, so that
    the text re-encodes to itself. Other encodings of the same bytes would let two different texts carry
    one value, and a signature over the one would not verify on the other."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoteError(f"{what} is not valid base64") from None
    if b64(data) != text:
        raise NoteError(f"{what} is not canonical base64 (non-zero bits before its padding)")
    return data


def is_valid_key_name(name: str) -> bool:
    """A key name is non-empty UTF-8 with no '+', no whitespace and no control characters."""
    return bool(name) and "+" not in name and not any(c.isspace() or ord(c) < 0x20 for c in name)


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    """The raw 32-byte Ed25519 public key."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, alg: int, public_key: bytes) -> bytes:
    """First 4 bytes of SHA-256(name ‖ 0x0A ‖ alg ‖ public key)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()[:4]


def cosignature_message(body: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: the header lines, then the checkpoint's note text."""
    return f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode()


@dataclass(frozen=True)
class VerifierKey:
    """A named public key that verifies note signatures (0x01) or cosignatures (0x04)."""

    name: str
    alg: int
    public_key: Ed25519PublicKey

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.alg, public_key_bytes(self.public_key))

    def text(self) -> str:
        """`<name>+<hex key ID>+<base64(alg ‖ public key)>`."""
        raw = bytes([self.alg]) + public_key_bytes(self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{b64(raw)}"

    def verify(self, body: str, signature: bytes) -> bool:
        """True when `signature` (after the key ID) verifies over the note text `body`."""
        try:
            if self.alg == ALG_ED25519:
                if len(signature) != 64:
                    return False
                self.public_key.verify(signature, body.encode())
            else:
                if len(signature) != 72:
                    return False
                (timestamp,) = struct.unpack(">Q", signature[:8])
                self.public_key.verify(signature[8:], cosignature_message(body, timestamp))
        except InvalidSignature:
            return False
        return True


def verifier_key_text(name: str, public_key: Ed25519PublicKey, alg: int = ALG_ED25519) -> str:
    """The verifier-key text an auditor needs, e.g. `fedgate.example/site-de+1a2b3c4d+AX…`."""
    if not is_valid_key_name(name):
        raise NoteError(f"invalid key name {name!r}")
    return VerifierKey(name, alg, public_key).text()


def parse_verifier_key(text: str) -> VerifierKey:
    """Parse verifier-key text; the key ID must match the name and key."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise NoteError("verifier key must be <name>+<hex key id>+<base64 key>")
    name, hex_id, key_b64 = parts
    if not is_valid_key_name(name):
        raise NoteError("verifier key has an invalid name")
    try:
        claimed_id = bytes.fromhex(hex_id)
    except ValueError:
        raise NoteError("verifier key ID is not hex") from None
    raw = b64decode_strict(key_b64, "verifier key")
    if len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
        raise NoteError("verifier key is not an Ed25519 (0x01) or cosignature/v1 (0x04) key")
    key = VerifierKey(name, raw[0], Ed25519PublicKey.from_public_bytes(raw[1:]))
    if len(claimed_id) != 4 or claimed_id != key.key_id:
        raise NoteError(f"verifier key ID {hex_id} does not match its name and key")
    return key


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key ID, and the signature bytes after the ID."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_SIG_PREFIX}{self.name} {b64(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A parsed signed note; `text` includes its final newline."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def render(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


@dataclass(frozen=True)
class VerifiedNote:
    """A note and the known keys whose signatures verified on it."""

    note: Note
    verified: tuple[VerifierKey, ...]
    timestamps: dict[str, int]  # cosignature timestamps by key name


def _check_text_chars(msg: str) -> None:
    for ch in msg:
        o = ord(ch)
        if (o < 0x20 and ch != "\n") or o == 0x7F:
            raise NoteError(f"note contains control character U+{o:04X}")


def parse_note(message: str | bytes) -> Note:
    """Split a signed note into text and signature lines, enforcing the C2SP signed-note syntax."""
    if isinstance(message, bytes):
        try:
            message = message.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("note is not valid UTF-8") from None
    _check_text_chars(message)
    if not message.endswith("\n"):
        raise NoteError("note does not end with a newline")
    split = message.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = message[: split + 1], message[split + 2 :]
    if not block:
        raise NoteError("note has no signatures")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signatures, more than {MAX_SIGNATURES}")
    sigs: list[NoteSignature] = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise NoteError("signature line does not start with an em dash and a space")
        name, sep, sig_b64 = line[len(_SIG_PREFIX) :].rpartition(" ")
        if not sep or not is_valid_key_name(name):
            raise NoteError("signature line has an invalid key name")
        raw = b64decode_strict(sig_b64, f"signature by {name}")
        if len(raw) < 5:
            raise NoteError(f"signature by {name} is too short")
        sigs.append(NoteSignature(name, raw[:4], raw[4:]))
    return Note(text, tuple(sigs))


def verify_note(message: str | bytes | Note, keys: Sequence[VerifierKey]) -> VerifiedNote:
    """Verify a note against known keys: unknown keys are ignored, a failing known key rejects the note,
    and at least one known key must verify."""
    note = message if isinstance(message, Note) else parse_note(message)
    verified: list[VerifierKey] = []
    timestamps: dict[str, int] = {}
    for sig in note.signatures:
        for key in keys:
            if key.name != sig.name or key.key_id != sig.key_id:
                continue
            if not key.verify(note.text, sig.signature):
                raise SignatureError(f"signature by known key {key.name}+{key.key_id.hex()} does not verify")
            if not any(k is key for k in verified):
                verified.append(key)
            if key.alg == ALG_COSIGNATURE_V1:
                timestamps[key.name] = struct.unpack(">Q", sig.signature[:8])[0]
    if not verified:
        raise SignatureError("no signature by a known key")
    return VerifiedNote(note, tuple(verified), timestamps)


def sign_note(text: str, name: str, key: Ed25519PrivateKey) -> NoteSignature:
    """An Ed25519 (0x01) signature of the note text by the key named `name`."""
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    _check_text_chars(text)
    if not is_valid_key_name(name):
        raise NoteError(f"invalid key name {name!r}")
    kid = key_id(name, ALG_ED25519, public_key_bytes(key.public_key()))
    return NoteSignature(name, kid, key.sign(text.encode()))


def cosign_note(text: str, name: str, key: Ed25519PrivateKey, timestamp: int) -> NoteSignature:
    """A cosignature/v1 (0x04) over the checkpoint note text at `timestamp` (Unix seconds)."""
    if not is_valid_key_name(name):
        raise NoteError(f"invalid key name {name!r}")
    kid = key_id(name, ALG_COSIGNATURE_V1, public_key_bytes(key.public_key()))
    signature = key.sign(cosignature_message(text, timestamp))
    return NoteSignature(name, kid, struct.pack(">Q", timestamp) + signature)
