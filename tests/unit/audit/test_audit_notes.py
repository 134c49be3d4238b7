"""Signed notes: the spec's known answer and every edge case of C2SP signed-note verification."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.errors import NoteError, SignatureError
from audit.notes import (
    ALG_COSIGNATURE_V1,
    MAX_SIGNATURES,
    Note,
    VerifierKey,
    b64decode_strict,
    cosign_note,
    parse_note,
    parse_verifier_key,
    sign_note,
    verifier_key_text,
    verify_note,
)

EXAMPLE_KEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
EXAMPLE_NOTE = (
    "This is an example message.\n\n"
    "— example.com/foo "
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)


def key_pair(name: str) -> tuple[Ed25519PrivateKey, VerifierKey]:
    private = Ed25519PrivateKey.generate()
    return private, parse_verifier_key(verifier_key_text(name, private.public_key()))


def signed(text: str, *keys: tuple[str, Ed25519PrivateKey]) -> str:
    return Note(text, tuple(sign_note(text, name, k) for name, k in keys)).render()


def test_known_answer_from_the_spec() -> None:
    key = parse_verifier_key(EXAMPLE_KEY)
    assert key.key_id.hex() == "530d903a"
    assert key.text() == EXAMPLE_KEY
    verified = verify_note(EXAMPLE_NOTE, [key])
    assert verified.note.text == "This is an example message.\n"
    assert [k.name for k in verified.verified] == ["example.com/foo"]


def test_known_answer_fails_when_the_text_changes() -> None:
    with pytest.raises(SignatureError, match="does not verify"):
        verify_note(
            EXAMPLE_NOTE.replace("example message", "example massage"), [parse_verifier_key(EXAMPLE_KEY)]
        )


def test_unknown_keys_are_ignored_but_a_known_one_must_verify() -> None:
    a, ka = key_pair("log.example/a")
    b, _ = key_pair("log.example/b")
    note = signed("hello\n", ("log.example/b", b), ("log.example/a", a))
    assert [k.name for k in verify_note(note, [ka]).verified] == ["log.example/a"]
    only_unknown = signed("hello\n", ("log.example/b", b))
    with pytest.raises(SignatureError, match="no signature by a known key"):
        verify_note(only_unknown, [ka])


def test_same_name_other_key_id_is_an_unknown_key() -> None:
    a, ka = key_pair("log.example/a")
    impostor, _ = key_pair("log.example/a")
    note = signed("hello\n", ("log.example/a", impostor), ("log.example/a", a))
    assert len(verify_note(note, [ka]).verified) == 1


def test_a_failing_signature_by_a_known_key_rejects_the_note() -> None:
    a, ka = key_pair("log.example/a")
    good = sign_note("hello\n", "log.example/a", a)
    bad = sign_note("other\n", "log.example/a", a)  # right key ID, signature over other text
    note = Note("hello\n", (good, bad)).render()
    with pytest.raises(SignatureError, match="does not verify"):
        verify_note(note, [ka])


def test_missing_final_newline_is_rejected() -> None:
    with pytest.raises(NoteError, match="newline"):
        parse_note(EXAMPLE_NOTE[:-1])
    with pytest.raises(NoteError):
        sign_note("no newline", "log.example/a", Ed25519PrivateKey.generate())


@pytest.mark.parametrize("char", ["\x00", "\t", "\r", "\x1b", "\x7f"])
def test_control_characters_are_rejected(char: str) -> None:
    with pytest.raises(NoteError, match="control character"):
        parse_note(EXAMPLE_NOTE.replace("example", f"ex{char}ample"))


def test_malformed_notes() -> None:
    for message in [
        "text only\n",
        "text\n\n",
        "text\n\n- example.com/foo AAAAAAA=\n",
        "text\n\n— example.com/foo not-base64!\n",
        "text\n\n— example.com/foo AAAA\n",
        "text\n\n—  AAAAAAAAAAAA\n",
        "text\n\n— bad+name AAAAAAAAAAAA\n",
    ]:
        with pytest.raises(NoteError):
            parse_note(message)
    with pytest.raises(NoteError, match="UTF-8"):
        parse_note(b"\xff\xfe\n\n")


def test_only_canonical_base64_is_accepted() -> None:
    # "AAE=" is bytes 00 01; "AAF=" decodes to the same bytes with a spare bit set before the padding.
    assert b64decode_strict("AAE=", "x") == b"\x00\x01"
    for text in ("AAF=", "AB==", "AAE", "AA E="):
        with pytest.raises(NoteError):
            b64decode_strict(text, "x")
    sig = EXAMPLE_NOTE.rstrip("\n").rsplit(" ", 1)[1]
    assert sig.endswith("aQM=")
    with pytest.raises(NoteError, match="canonical"):
        parse_note(EXAMPLE_NOTE.replace(sig, sig[:-2] + "N="))  # 'M' (001100) and 'N' differ in a spare bit


def test_more_than_sixteen_signatures_are_accepted_but_the_total_is_bounded() -> None:
    a, ka = key_pair("log.example/a")
    others = [Ed25519PrivateKey.generate() for _ in range(20)]
    many = [sign_note("hello\n", f"w{i}.example", k) for i, k in enumerate(others)]
    note = Note("hello\n", (*many, sign_note("hello\n", "log.example/a", a))).render()
    assert verify_note(note, [ka]).verified == (ka,)
    filler = many[0]
    too_many = Note("hello\n", tuple([filler] * MAX_SIGNATURES + [sign_note("hello\n", "log.example/a", a)]))
    with pytest.raises(NoteError, match="more than"):
        verify_note(too_many.render(), [ka])


def test_verifier_key_parsing() -> None:
    _, key = key_pair("log.example/a")
    name, kid, b64key = key.text().split("+", 2)
    assert parse_verifier_key(key.text()).key_id == key.key_id
    for bad in [
        f"{name}+{kid}",
        f"{name}+00000000+{b64key}",
        f"{name}+zz+{b64key}",
        f"{name}+{kid}+{b64key[:-4]}",
        f"other.example+{kid}+{b64key}",
        f"+{kid}+{b64key}",
    ]:
        with pytest.raises(NoteError):
            parse_verifier_key(bad)


def test_cosignature_keys_verify_timestamped_cosignatures() -> None:
    w = Ed25519PrivateKey.generate()
    wkey = parse_verifier_key(verifier_key_text("witness.example/w", w.public_key(), ALG_COSIGNATURE_V1))
    assert wkey.alg == ALG_COSIGNATURE_V1
    sig = cosign_note("log\n5\nroot\n", "witness.example/w", w, 1_700_000_000)
    note = Note("log\n5\nroot\n", (sig,))
    verified = verify_note(note.render(), [wkey])
    assert verified.timestamps == {"witness.example/w": 1_700_000_000}
    # The timestamp is signed: changing it breaks the cosignature.
    forged = type(sig)(sig.name, sig.key_id, (1_700_000_001).to_bytes(8, "big") + sig.signature[8:])
    with pytest.raises(SignatureError):
        verify_note(Note(note.text, (forged,)).render(), [wkey])
    # An Ed25519 note key and a cosignature key of the same name and key have different key IDs.
    as_note_key = parse_verifier_key(verifier_key_text("witness.example/w", w.public_key()))
    assert as_note_key.key_id != wkey.key_id
