"""Keyed pseudonyms and the site key: from --id-key, MEDAI_ID_KEY_FILE or MEDAI_ID_KEY."""

from __future__ import annotations

import pytest

from medai.pseudonyms import IdKeyError, load_id_key, pseudonym


def test_pseudonym_is_keyed_stable_and_hides_the_value():
    first, second = b"a" * 32, b"b" * 32
    assert pseudonym("PID-1", first) == pseudonym("PID-1", first)
    assert pseudonym("PID-1", first) != pseudonym("PID-1", second)
    assert pseudonym("PID-1", first) != pseudonym("PID-2", first)
    assert len(pseudonym("PID-1", first)) == 64 and "PID" not in pseudonym("PID-1", first)


def test_key_from_flag_file_then_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDAI_ID_KEY_FILE", raising=False)
    monkeypatch.delenv("MEDAI_ID_KEY", raising=False)
    flag, env = tmp_path / "flag.key", tmp_path / "env.key"
    flag.write_bytes(b"f" * 32)
    env.write_bytes(b"e" * 32)
    monkeypatch.setenv("MEDAI_ID_KEY_FILE", str(env))
    assert load_id_key(str(flag)) == b"f" * 32
    assert load_id_key() == b"e" * 32
    monkeypatch.delenv("MEDAI_ID_KEY_FILE")
    monkeypatch.setenv("MEDAI_ID_KEY", "k" * 20)
    assert load_id_key() == b"k" * 20


def test_missing_or_short_key_stops_with_one_line_saying_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDAI_ID_KEY_FILE", raising=False)
    monkeypatch.delenv("MEDAI_ID_KEY", raising=False)
    with pytest.raises(IdKeyError) as caught:
        load_id_key(needed_for="for the test")
    assert "head -c 32 /dev/urandom > site.key" in str(caught.value)
    assert "\n" not in str(caught.value)
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    with pytest.raises(IdKeyError, match="shorter than 16 bytes"):
        load_id_key(str(short))
    with pytest.raises(IdKeyError, match="cannot read"):
        load_id_key(str(tmp_path / "missing.key"))
