"""Reading a secret the hints name: a variable or a file, bounded, errors naming the source only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidescale.errors import BrokerAuthFailed
from tidescale.sources._secret_read import MAX_SECRET_FILE_BYTES, read_secret


def test_a_variable_wins_over_a_file_and_is_trimmed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDESCALE_TEST_SECRET", " from-env\n")
    (tmp_path / "s").write_text("from-file\n")
    assert read_secret("TIDESCALE_TEST_SECRET", str(tmp_path / "s")) == "from-env"
    assert read_secret(None, str(tmp_path / "s")) == "from-file"
    assert read_secret(None, None) is None


def test_an_unset_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDESCALE_TEST_SECRET", raising=False)
    with pytest.raises(BrokerAuthFailed, match=r"TIDESCALE_TEST_SECRET \(named by a \*-env hint\) is not"):
        read_secret("TIDESCALE_TEST_SECRET", None)


def test_a_missing_huge_or_binary_file_is_refused_without_its_content(tmp_path: Path) -> None:
    with pytest.raises(BrokerAuthFailed, match="cannot read the credential file"):
        read_secret(None, str(tmp_path / "absent"))
    huge = tmp_path / "huge"
    huge.write_bytes(b"k" * (MAX_SECRET_FILE_BYTES + 1))
    with pytest.raises(BrokerAuthFailed, match="larger than 16 KiB"):
        read_secret(None, str(huge))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfesecret")
    with pytest.raises(BrokerAuthFailed, match="not UTF-8"):
        read_secret(None, str(binary))
