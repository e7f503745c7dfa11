"""Settings: defaults, then instance/config.py, then the environment, then test_config."""

from __future__ import annotations

from pathlib import Path

import pytest

from webapp import config


def test_defaults_then_instance_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flask import Config

    (tmp_path / "config.py").write_text("UPSTREAM_TIMEOUT = 30\nUPSTREAM_BASE_URL = 'http://from-file/v1'\n")
    monkeypatch.setenv("UPSTREAM_BASE_URL", "http://from-env/v1")
    monkeypatch.delenv("UPSTREAM_TIMEOUT", raising=False)
    values = Config(str(tmp_path))
    values.from_mapping(config.defaults(str(tmp_path)))
    values.from_pyfile("config.py")
    values.from_mapping(config.from_environment())
    assert values["UPSTREAM_TIMEOUT"] == 30
    assert values["UPSTREAM_BASE_URL"] == "http://from-env/v1"
    assert values["DATABASE_URL"] == f"sqlite:///{tmp_path / 'completions.db'}"


def test_a_bad_number_in_the_environment_says_what_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_TIMEOUT", "five")
    with pytest.raises(ValueError, match="DATABASE_TIMEOUT='five' is not a number: fix or unset it"):
        config.from_environment()


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_postgresql_urls_mean_psycopg_3(url: str, expected: str) -> None:
    assert config.normalize_database_url(url) == expected


def test_the_secret_key_is_made_once_and_kept(tmp_path: Path) -> None:
    first = config._secret_key(str(tmp_path))
    assert len(first) == 64 and config._secret_key(str(tmp_path)) == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
