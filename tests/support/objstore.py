"""A real S3-compatible server for tests and benchmarks: moto in server mode (``moto_server``) as a
child process on a free port, with the AWS environment a client (or a service process) needs to
reach it. Its objects live in its memory: stopping it loses them; :meth:`MotoS3.stop` and
:meth:`MotoS3.start` on the same port model an outage."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.net import free_port, wait_for_http

# Credentials moto accepts (any); never real ones. Region fixed so presigned URLs are stable.
TEST_AWS = {"AWS_ACCESS_KEY_ID": "pretextlab-test", "AWS_SECRET_ACCESS_KEY": "pretextlab-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


class MotoS3:
    """``moto_server`` on 127.0.0.1:<free port>, started and stopped by its own pid."""

    def __init__(self, log_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.log_path = Path(log_dir) / f"moto-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def installed() -> bool:
        return MotoS3._exe() is not None

    @staticmethod
    def _exe() -> str | None:
        here = Path(sys.executable).with_name("moto_server")
        return str(here) if here.exists() else shutil.which("moto_server")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables a boto3 client (or a child service) needs to use this server."""
        return {**TEST_AWS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> "MotoS3":
        exe = self._exe()
        if exe is None:
            raise FileNotFoundError("moto_server is not installed (pip install 'moto[server]')")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                         stderr=subprocess.STDOUT, env={**os.environ, **TEST_AWS})
        wait_for_http(self.endpoint + "/moto-api/", 30, f"moto_server on port {self.port}",
                      alive=lambda: self.proc is not None and self.proc.poll() is None)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=TEST_AWS["AWS_REGION"],
                            aws_access_key_id=TEST_AWS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=TEST_AWS["AWS_SECRET_ACCESS_KEY"])

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name
