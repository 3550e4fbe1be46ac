"""The conftest's decision for an unreachable PostgreSQL: skip on a developer's machine, fail under CI=true
(a CI run that skips the PostgreSQL tests must not go green)."""

from __future__ import annotations

import pytest

from tests.conftest import DEFAULT_TEST_PG, resolve_pg_url


def test_explicit_url_wins_whether_or_not_the_default_port_answers():
    env = {"HOTPATH_TEST_PG_URL": "postgresql+asyncpg://u@db:5432/x", "CI": "true"}
    assert resolve_pg_url(env, default_port_open=False) == "postgresql+asyncpg://u@db:5432/x"
    assert resolve_pg_url(env, default_port_open=True) == "postgresql+asyncpg://u@db:5432/x"


def test_default_url_when_the_default_port_answers():
    assert resolve_pg_url({"CI": "true"}, default_port_open=True) == DEFAULT_TEST_PG
    assert resolve_pg_url({}, default_port_open=True) == DEFAULT_TEST_PG


@pytest.mark.parametrize("ci", ["", "false", "0"])
def test_unreachable_skips_outside_ci(ci):
    with pytest.raises(pytest.skip.Exception, match=r"not reachable at 127\.0\.0\.1:5432"):
        resolve_pg_url({"CI": ci} if ci else {}, default_port_open=False)


@pytest.mark.parametrize("ci", ["true", "TRUE", "1", "yes"])
def test_unreachable_fails_under_ci_naming_what_to_set(ci):
    with pytest.raises(pytest.fail.Exception) as failed:
        resolve_pg_url({"CI": ci}, default_port_open=False)
    assert "not reachable at 127.0.0.1:5432" in str(failed.value)
    assert "HOTPATH_TEST_PG_URL" in str(failed.value)
