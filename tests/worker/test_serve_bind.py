"""`pretextlab serve` never exposes an unauthenticated API: no token -> refused (unless
PRETEXTLAB_AUTH=off on loopback), a short or empty token -> refused, AUTH=off beyond loopback ->
refused; and the `pretextlab token` commands that make the tokens it accepts."""

from __future__ import annotations

import pytest

from api.db.session import upgrade
from api.settings import Settings
from worker.serve import UnsafeBind, check_bind, is_loopback

TOKEN = "a-long-enough-admin-token-" + "z" * 10


@pytest.fixture
def url(sqlite_url):
    upgrade(sqlite_url)
    return sqlite_url


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_auth_off_is_allowed_on_loopback(url, host):
    assert is_loopback(host)
    check_bind(Settings(database_url=url, host=host, auth="off"))
    with pytest.raises(UnsafeBind, match="no API token"):  # not implicitly: AUTH=off must be said
        check_bind(Settings(database_url=url, host=host, api_tokens=None))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.org", ""])
def test_non_loopback_needs_sound_tokens(url, host):
    assert not is_loopback(host)
    with pytest.raises(SystemExit) as err:
        check_bind(Settings(database_url=url, host=host, auth="off"))
    assert isinstance(err.value, UnsafeBind) and "PRETEXTLAB_AUTH=off is refused" in str(err.value.code)
    for bad in (" , ", ",", "s3cret", f"{TOKEN},,"):
        with pytest.raises(UnsafeBind, match="PRETEXTLAB_API_TOKENS"):
            check_bind(Settings(database_url=url, host=host, api_tokens=bad))
    check_bind(Settings(database_url=url, host=host, api_tokens=TOKEN))  # a sound token: allowed


def _no_server(monkeypatch):
    import uvicorn

    import worker.serve as serve

    def boom(*_a, **_kw):
        raise AssertionError("the server must not start")

    monkeypatch.setattr(serve, "start_background", boom)
    monkeypatch.setattr(uvicorn.Server, "run", boom)


def _cli(monkeypatch, url, argv, **env):
    from api.settings import get_settings
    from worker.cli import main

    for k in ("PRETEXTLAB_API_TOKENS", "PRETEXTLAB_HOST", "PRETEXTLAB_BROKER_URL", "PRETEXTLAB_AUTH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PRETEXTLAB_DATABASE_URL", url)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    try:
        return main(argv)
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_cli_serve_refuses_public_bind_with_auth_off(monkeypatch, url, how):
    _no_server(monkeypatch)
    argv, env = ["serve"], {"PRETEXTLAB_AUTH": "off"}
    if how == "flag":
        argv += ["--host", "0.0.0.0"]
    else:
        env["PRETEXTLAB_HOST"] = "0.0.0.0"
    with pytest.raises(SystemExit) as err:
        _cli(monkeypatch, url, argv, **env)
    msg = str(err.value.code)
    assert "0.0.0.0" in msg and "PRETEXTLAB_AUTH=off" in msg


def test_token_commands(monkeypatch, url, capsys):
    assert _cli(monkeypatch, url, ["token", "create", "alice"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("ptl_") and len(token) >= 32
    assert _cli(monkeypatch, url, ["token", "create", "root", "--admin"]) == 0
    assert _cli(monkeypatch, url, ["token", "create", "alice"]) == 2
    assert "exists" in capsys.readouterr().err
    assert _cli(monkeypatch, url, ["token", "revoke", "alice"]) == 0
    capsys.readouterr()
    assert _cli(monkeypatch, url, ["token", "list"]) == 0
    listing = capsys.readouterr().out
    assert token not in listing
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert rows["alice"][1] == "no" and rows["alice"][-1] != "-"  # revoked
    assert rows["root"][1] == "yes" and rows["root"][-1] == "-"
    # a named token is enough for serve to start on any address
    _no_server(monkeypatch)
    with pytest.raises(AssertionError, match="must not start"):
        _cli(monkeypatch, url, ["serve", "--host", "0.0.0.0"])
    assert _cli(monkeypatch, url, ["db", "prune"]) == 0
