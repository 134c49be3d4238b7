"""Checkpoint bodies, their signing and opening, and witness cosignatures on them."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import (
    Checkpoint,
    cosign_checkpoint,
    open_checkpoint,
    parse_checkpoint_body,
    sign_checkpoint,
    verify_cosignatures,
)
from audit.errors import NoteError, SignatureError
from audit.merkle import EMPTY_ROOT
from audit.notes import ALG_COSIGNATURE_V1, parse_verifier_key, verifier_key_text

ORIGIN = "fedgate.example/site-de"


def test_body_is_three_lines() -> None:
    cp = Checkpoint(ORIGIN, 12, bytes(range(32)))
    assert cp.body() == f"{ORIGIN}\n12\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    assert parse_checkpoint_body(cp.body()) == cp
    assert parse_checkpoint_body(Checkpoint(ORIGIN, 0, EMPTY_ROOT).body()).size == 0


@pytest.mark.parametrize(
    "body",
    [
        f"{ORIGIN}\n012\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        f"{ORIGIN}\n-1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        f"{ORIGIN}\n12\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==\n",
        f"{ORIGIN}\n12\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\nextension\n",
        f"{ORIGIN}\n12\n",
        "\n12\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        f"{ORIGIN}\n12\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        # Sizes no entry index (a canonical JSON number) reaches, nor a database integer.
        f"{ORIGIN}\n{2**53}\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        f"{ORIGIN}\n{2**63 + 5}\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        f"{ORIGIN}\n1²\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    ],
)
def test_malformed_bodies_are_rejected(body: str) -> None:
    with pytest.raises(NoteError):
        parse_checkpoint_body(body)


def test_sign_and_open() -> None:
    key = Ed25519PrivateKey.generate()
    vkey = parse_verifier_key(verifier_key_text(ORIGIN, key.public_key()))
    note = sign_checkpoint(Checkpoint(ORIGIN, 3, EMPTY_ROOT), key)
    opened = open_checkpoint(note, [vkey], ORIGIN)
    assert opened.checkpoint.size == 3
    assert opened.text == note
    with pytest.raises(NoteError, match="is not"):
        open_checkpoint(note, [vkey], "fedgate.example/other")
    other = parse_verifier_key(verifier_key_text(ORIGIN, Ed25519PrivateKey.generate().public_key()))
    with pytest.raises(SignatureError):
        open_checkpoint(note, [other])


def test_cosignatures_count_only_known_witnesses_and_reject_bad_ones() -> None:
    key = Ed25519PrivateKey.generate()
    cp = Checkpoint(ORIGIN, 3, EMPTY_ROOT)
    note = sign_checkpoint(cp, key)
    w1, w2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    k1 = parse_verifier_key(verifier_key_text("w1.example", w1.public_key(), ALG_COSIGNATURE_V1))
    k2 = parse_verifier_key(verifier_key_text("w2.example", w2.public_key(), ALG_COSIGNATURE_V1))
    with_cosigs = (
        note + cosign_checkpoint(cp, "w1.example", w1, 100) + cosign_checkpoint(cp, "w2.example", w2, 100)
    )
    assert {k.name for k in verify_cosignatures(with_cosigs, [k1, k2])} == {"w1.example", "w2.example"}
    assert verify_cosignatures(note, [k1]) == ()
    other = Checkpoint(ORIGIN, 4, EMPTY_ROOT)
    wrong = note + cosign_checkpoint(other, "w1.example", w1, 100)  # cosigned another checkpoint
    with pytest.raises(SignatureError):
        verify_cosignatures(wrong, [k1])
