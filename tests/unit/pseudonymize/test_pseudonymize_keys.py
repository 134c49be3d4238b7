"""Master key loading, HKDF derivation and fingerprints; key bytes never show."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from pseudonymize.errors import KeyMaterialError
from pseudonymize.keys import SecretKey, write_new_key


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_reads_base64_and_hex_to_the_same_key(tmp_path: Path) -> None:
    raw = os.urandom(32)
    a = SecretKey.from_file(_write(tmp_path / "a.key", base64.b64encode(raw).decode()))
    b = SecretKey.from_file(_write(tmp_path / "b.key", raw.hex() + "\n"))
    assert a.key_id == b.key_id
    assert a.derive("pseudonym", "DSA-1") == b.derive("pseudonym", "DSA-1")


def test_short_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    raw = os.urandom(16)
    with pytest.raises(KeyMaterialError, match=r"too short \(16 bytes; at least 32\)") as err:
        SecretKey.from_file(_write(tmp_path / "short.key", raw.hex()))
    assert raw.hex() not in str(err.value)


def test_missing_empty_and_garbled_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="key file not found"):
        SecretKey.from_file(tmp_path / "absent.key")
    with pytest.raises(KeyMaterialError, match="the key is empty"):
        SecretKey.from_file(_write(tmp_path / "empty.key", "\n"))
    with pytest.raises(KeyMaterialError, match="neither hex nor base64"):
        SecretKey.from_file(_write(tmp_path / "bad.key", "not a key at all!"))


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "open.key", os.urandom(32).hex(), mode=0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        SecretKey.from_file(path)


def test_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KeyMaterialError, match="FEDGATE_TEST_KEY is not set"):
        SecretKey.from_env("FEDGATE_TEST_KEY")
    monkeypatch.setenv("FEDGATE_TEST_KEY", os.urandom(40).hex())
    assert SecretKey.from_env("FEDGATE_TEST_KEY").key_id.startswith("fp:")


def test_derivation_separates_purposes_and_agreements() -> None:
    key = SecretKey(os.urandom(32))
    a = key.derive("pseudonym", "DSA-1")
    assert len(a) == 32
    assert a != key.derive("pseudonym", "DSA-2")
    assert a != key.derive("date-shift", "DSA-1")
    assert a == key.derive("pseudonym", "DSA-1")


def test_repr_and_key_id_never_show_key_material() -> None:
    raw = os.urandom(32)
    key = SecretKey(raw)
    shown = repr(key) + str(key) + key.key_id
    for form in (raw.hex(), base64.b64encode(raw).decode(), key.derive("pseudonym", "x").hex()):
        assert form not in shown
    assert len(key.key_id) == len("fp:") + 16


def test_write_new_key_is_private_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    key = write_new_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert SecretKey.from_file(path).key_id == key.key_id
    with pytest.raises(KeyMaterialError, match="refusing to overwrite"):
        write_new_key(path)
    assert SecretKey.from_file(path).key_id == key.key_id


def test_a_key_pasted_where_its_variable_name_belongs_is_not_printed() -> None:
    pasted = base64.b64encode(os.urandom(32)).decode()  # master_key_env = "<the key>"
    with pytest.raises(KeyMaterialError) as caught:
        SecretKey.from_env(pasted)
    assert pasted not in str(caught.value) and "is not set" in str(caught.value)
