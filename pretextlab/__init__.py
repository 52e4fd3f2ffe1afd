"""pretextlab's Python client and remote command line: talk to a running pretextlab server.

    from pretextlab.client import Client

    client = Client("http://127.0.0.1:8000")      # or PRETEXTLAB_URL / PRETEXTLAB_TOKEN
    job = client.submit({"method": {"name": "simclr"}, "epochs": 5})
    client.wait(job["id"])

Importing this package loads neither torch nor the server's libraries (fastapi, sqlalchemy): a
notebook or a laptop needs only httpx to use it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pretextlab")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
