"""`pretextlab serve` never exposes an unauthenticated API beyond loopback."""

from __future__ import annotations

import pytest

from api.settings import Settings
from worker.serve import UnsafeBind, check_bind, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_needs_no_token(host):
    assert is_loopback(host)
    check_bind(Settings(host=host, api_tokens=None))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.org", ""])
def test_non_loopback_without_tokens_is_refused(host):
    assert not is_loopback(host)
    with pytest.raises(SystemExit) as err:
        check_bind(Settings(host=host, api_tokens=None))
    assert isinstance(err.value, UnsafeBind) and "PRETEXTLAB_API_TOKENS" in str(err.value.code)
    with pytest.raises(UnsafeBind):
        check_bind(Settings(host=host, api_tokens=" , "))  # blank tokens are no tokens
    check_bind(Settings(host=host, api_tokens="s3cret"))  # with a token: allowed


def _no_server(monkeypatch):
    import uvicorn

    import worker.serve as serve

    def boom(*_a, **_kw):
        raise AssertionError("the server must not start")

    monkeypatch.setattr(serve, "check_schema", boom)
    monkeypatch.setattr(serve, "start_background", boom)
    monkeypatch.setattr(uvicorn.Server, "run", boom)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_cli_serve_refuses_public_bind_without_tokens(monkeypatch, tmp_path, how):
    from api.settings import get_settings
    from worker.cli import main

    _no_server(monkeypatch)
    for k in ("PRETEXTLAB_API_TOKENS", "PRETEXTLAB_HOST", "PRETEXTLAB_BROKER_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PRETEXTLAB_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    argv = ["serve"]
    if how == "flag":
        argv += ["--host", "0.0.0.0"]
    else:
        monkeypatch.setenv("PRETEXTLAB_HOST", "0.0.0.0")
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as err:
            main(argv)
    finally:
        get_settings.cache_clear()
    msg = str(err.value.code)
    assert "0.0.0.0" in msg and "PRETEXTLAB_API_TOKENS" in msg
