"""Each kind of invalid setting ends start-up with one line naming the variable and what it expects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hotpath.settings import ApiSettings, SettingsError, describe_settings, load

ROOT = Path(__file__).resolve().parents[1]
HOTPATH = str(Path(sys.executable).parent / "hotpath")

CASES = [
    # (variable, bad value, words the message must contain)
    ("HOTPATH_PORT", "eighty", ["HOTPATH_PORT", "integer"]),
    ("HOTPATH_PORT", "70000", ["HOTPATH_PORT", "65535"]),
    ("HOTPATH_LOG_LEVEL", "LOUD", ["HOTPATH_LOG_LEVEL", "'DEBUG'"]),
    ("HOTPATH_REDIS_URL", "localhost:6379", ["HOTPATH_REDIS_URL", "redis://"]),
    ("HOTPATH_ORIGIN_URL", "mysql://db/x", ["HOTPATH_ORIGIN_URL", "postgresql+asyncpg://"]),
    ("HOTPATH_REDIS_TIMEOUT_S", "-1", ["HOTPATH_REDIS_TIMEOUT_S", "greater than 0"]),
    ("HOTPATH_JWT_KEYS", "not-json", ["HOTPATH_JWT_KEYS", "JSON"]),
]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
    env.update(extra)
    return env


@pytest.mark.parametrize(("var", "value", "words"), CASES)
def test_invalid_setting_message(var, value, words, monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("HOTPATH_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load(ApiSettings)
    msg = str(err.value)
    for w in words:
        assert w in msg, msg
    assert "\n" not in msg


def test_nested_setting_names_the_part_that_is_wrong(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOTPATH_RATE_LIMIT_TENANTS", '{"acme": ["fast", 10]}')
    with pytest.raises(SettingsError, match=r"HOTPATH_RATE_LIMIT_TENANTS .*at rate_limit_tenants\.acme\.0"):
        load(ApiSettings)


@pytest.mark.parametrize("argv", [["api"], ["worker", "thumb"], ["dev"]])
def test_cli_prints_one_line_not_a_traceback(argv, tmp_path):
    env = _clean_env(HOTPATH_PORT="eighty", HOTPATH_JWT_KEYS="{oops", HOTPATH_REDIS_URL="nope")
    proc = subprocess.run([HOTPATH, *argv], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hotpath: invalid setting HOTPATH_")


def test_dotenv_file_is_read(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HOTPATH_PORT", raising=False)
    (tmp_path / ".env").write_text("HOTPATH_PORT=8123\n")
    assert load(ApiSettings).port == 8123


def test_readme_table_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    for row in describe_settings():
        assert f"`{row['name']}`" in readme, f"README configuration table misses {row['name']}"
