"""Local ports and polling: pick a free port, wait for a condition, a port or an HTTP endpoint."""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.1,
             on_timeout: Callable[[], str] | None = None) -> Any:
    """Poll ``cond`` until it returns something truthy and return that (no fixed sleeps).

    Raises AssertionError after ``timeout`` seconds, with ``on_timeout()`` (a log tail, say)
    appended to the message. ``cond`` may itself raise to give up early (a process that died)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{extra}")
        time.sleep(interval)


def wait_for_port(port: int, timeout: float, what: str, host: str = HOST) -> None:
    wait_for(lambda: port_open(port, host, timeout=0.3), timeout, what, interval=0.05)


def wait_for_http(url: str, timeout: float, what: str, alive: Callable[[], bool] | None = None,
                  on_timeout: Callable[[], str] | None = None) -> None:
    """Wait until GET ``url`` answers 200; fail at once if ``alive()`` turns false (the server exited)."""
    import httpx

    def answers() -> bool:
        if alive is not None and not alive():
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(f"{what}: the process exited\n{extra}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, timeout, what, interval=0.2, on_timeout=on_timeout)
