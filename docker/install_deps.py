"""Install pretextlab's dependencies from pyproject.toml, without the project itself.

The images run this in a layer that sees only ``pyproject.toml``, so editing the source does not
re-download fastapi or torch; the source is copied afterwards and installed with ``--no-deps``.

    python install_deps.py pyproject.toml                 # base deps (the API image: no torch)
    python install_deps.py pyproject.toml --extra ml \\
        --keep torch --keep torchvision                   # the worker image, on a PyTorch base

``--keep NAME`` pins NAME to the version already installed (the CUDA build the base image ships),
so the resolver can never swap it for a CPU wheel or another CUDA version.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r} (has: {', '.join(sorted(optional))})")
        reqs += optional[extra]
    return reqs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pyproject")
    ap.add_argument("--extra", action="append", default=[], help="optional-dependencies group to add")
    ap.add_argument("--keep", action="append", default=[], help="pin this installed package to its version")
    args = ap.parse_args(argv)

    reqs = requirements(args.pyproject, args.extra)
    pins = []
    for name in args.keep:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            print(f"install_deps: {name} is not installed; leaving it to the resolver", file=sys.stderr)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as c:
        c.write("\n".join(pins) + "\n")
    print("install_deps:", *reqs, *(f"(pinned {p})" for p in pins), file=sys.stderr)
    return subprocess.call([sys.executable, "-m", "pip", "install", "-c", c.name, *reqs])


if __name__ == "__main__":
    sys.exit(main())
