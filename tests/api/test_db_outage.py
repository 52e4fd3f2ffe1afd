"""PostgreSQL unreachable for a moment: the API answers 503 with Retry-After, then recovers by itself.

The app talks to PostgreSQL through a small TCP proxy that the test cuts (closing every
connection and the listening socket) and restores on the same port.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from api.db.session import upgrade
from api.main import create_app
from api_helpers import PRETRAIN


class TcpProxy:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self.port = srv.getsockname()[1]
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                try:  # wakes the thread blocked in accept(); close() alone does not on Linux
                    self._server.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._server.close()
                self._server = None
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.postgres
def test_postgres_outage_gives_503_then_recovers(postgres_url, make_settings):
    upgrade(postgres_url)
    url = make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with TestClient(create_app(make_settings(proxied))) as c:
            assert c.post("/v1/jobs", json={"spec": PRETRAIN}).status_code == 201
            assert c.get("/v1/jobs").status_code == 200

            proxy.stop()
            for method, path, body in [("get", "/v1/jobs", None), ("post", "/v1/jobs", {"spec": PRETRAIN}),
                                       ("get", "/v1/jobs/1", None), ("post", "/v1/jobs/1/cancel", None),
                                       ("get", "/v1/jobs/1/metrics?name=x", None), ("get", "/v1/results", None)]:
                t0 = time.monotonic()
                r = c.request(method.upper(), path, json=body)
                assert time.monotonic() - t0 < 15, "an outage must not hang a request"
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert r.headers["retry-after"] and r.json()["error"]["code"] == "service_unavailable"
                assert "postgresql" not in r.text and "5432" not in r.text  # no connection details leaked
            ready = c.get("/readyz")
            assert ready.status_code == 503 and any(d["loc"] == "database" and d["value"] == "unreachable" for d in ready.json()["error"]["details"])
            assert c.get("/healthz").status_code == 200  # alive, just not ready

            proxy.start()  # same port: the pool's pre-ping reconnects by itself
            deadline = time.monotonic() + 15
            while (r := c.get("/v1/jobs")).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert r.status_code == 200 and len(r.json()["items"]) == 1
            assert c.post("/v1/jobs", json={"spec": PRETRAIN}).status_code == 201
            assert c.get("/readyz").status_code == 200
            assert len(c.get("/v1/jobs").json()["items"]) == 2  # the outage wrote nothing half-way
    finally:
        proxy.stop()
