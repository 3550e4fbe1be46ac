"""Each kind of invalid setting ends start-up with one line naming the variable and what it expects, and
`hotpath api` refuses to start with keys anyone could sign with (the development key, short keys)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hotpath.security import InsecureKeys, check_jwt_keys
from hotpath.settings import DEV_JWT_KID, DEV_JWT_SECRET, ApiSettings, SettingsError, describe_settings, load
from tests.services import free_port

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


# --- secure by default: `hotpath api` refuses the development key and short keys --------------------


def _api_refusal(tmp_path, **env: str) -> str:
    env = {"HOTPATH_PORT": str(free_port()), **env}
    try:
        proc = subprocess.run([HOTPATH, "api"], env=_clean_env(**env), cwd=tmp_path, capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"hotpath api started instead of refusing:\n{exc.stderr}") from None
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "HOTPATH_JWT_KEYS" in lines[0], lines[0]
    return lines[0]


def test_api_refuses_the_development_key(tmp_path):
    line = _api_refusal(tmp_path)  # HOTPATH_JWT_KEYS unset: the built-in development key
    assert "development JWT key" in line and "HOTPATH_ALLOW_DEV_KEY=true" in line


def test_api_refuses_the_development_key_among_others(tmp_path):
    keys = json.dumps({"new": "n" * 40, DEV_JWT_KID: DEV_JWT_SECRET})
    assert "development JWT key" in _api_refusal(tmp_path, HOTPATH_JWT_KEYS=keys)


def test_api_refuses_a_short_key(tmp_path):
    line = _api_refusal(tmp_path, HOTPATH_JWT_KEYS=json.dumps({"k1": "s" * 31}))
    assert "'k1' is 31 bytes" in line and "at least 32 bytes" in line


def test_a_short_key_is_refused_even_when_the_dev_key_is_allowed(tmp_path):
    line = _api_refusal(tmp_path, HOTPATH_JWT_KEYS=json.dumps({"k1": "short"}), HOTPATH_ALLOW_DEV_KEY="true")
    assert "'k1' is 5 bytes" in line


def test_check_jwt_keys_accepts_long_keys_and_the_allowed_dev_key():
    check_jwt_keys({"k1": "x" * 32, "k2": "é" * 16}, allow_dev_key=False)  # 32 bytes each (é is 2 bytes in UTF-8)
    check_jwt_keys({DEV_JWT_KID: DEV_JWT_SECRET}, allow_dev_key=True)
    with pytest.raises(InsecureKeys):
        check_jwt_keys({"k1": "é" * 15}, allow_dev_key=False)  # 15 characters, 30 bytes


def test_api_starts_with_the_dev_key_when_explicitly_allowed(tmp_path, redis_url, key_prefix):
    port = free_port()
    env = _clean_env(HOTPATH_ALLOW_DEV_KEY="true", HOTPATH_PORT=str(port), HOTPATH_REDIS_URL=redis_url,
                     HOTPATH_REDIS_PREFIX=key_prefix.rstrip(":"), HOTPATH_TASKKIT_PREFIX=key_prefix + "tk:",
                     HOTPATH_ORIGIN_URL=f"sqlite+aiosqlite:///{tmp_path}/origin.db", HOTPATH_LOG_LEVEL="WARNING")
    err = tmp_path / "api.err"
    proc = subprocess.Popen([HOTPATH, "api"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(err, "wb"))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"hotpath api exited with {proc.returncode}:\n{err.read_text()[-2000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"/livez did not answer within 30 s:\n{err.read_text()[-2000:]}"
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(15)
