"""Copy the files Minato's API docs pages need out of the pinned npm packages into the Python package.

The pins are ``assets/package.json``; the copies, and ``manifest.json`` naming each one's package,
version, tarball integrity and SHA-256, are committed under ``src/minato/web/pages/static/docs``, so Minato needs
no build step and no internet to serve its docs. To update: change a version in ``assets/package.json``
and run ``make assets`` (``python3 -m assets.vendor copy``); ``make install`` fetches the pinned
tarballs (``fetch``), and ``tests/unit/test_docs_assets.py`` checks the copies are theirs, byte for byte.

Only ``npm pack`` is used: it downloads one package's tarball from the npm registry, checked against the
registry's integrity, without its dependencies or install scripts (the bundles are self-contained).
Standard library only: it runs before the project's environment exists.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Final, NamedTuple

ROOT: Final = Path(__file__).resolve().parent.parent
PINS: Final = ROOT / "assets" / "package.json"
#: Where ``fetch`` keeps the pinned tarballs (not committed).
PACKS: Final = ROOT / "assets" / ".packages"
STATIC: Final = ROOT / "src" / "minato" / "static" / "docs"
MANIFEST: Final = STATIC / "manifest.json"


class Vendored(NamedTuple):
    """What Minato takes from one package: the directory it goes to, and the package's files it needs."""

    directory: str
    files: tuple[str, ...]


#: Exactly the files the pages load, and the licences that must travel with them.
PACKAGES: Final = {
    "swagger-ui-dist": Vendored(
        "swagger-ui",
        (
            "swagger-ui-bundle.js",
            "swagger-ui.css",
            "favicon-32x32.png",
            "LICENSE",
            "NOTICE",
            "swagger-ui-bundle.js.LICENSE.txt",
        ),
    ),
    "@scalar/api-reference": Vendored("scalar", ("dist/browser/standalone.js",)),
}


class VendorError(Exception):
    """The pins, the tarballs and the copies disagree; the message says how to fix it."""


def pins() -> dict[str, str]:
    """The pinned version of every vendored package."""
    declared: dict[str, str] = json.loads(PINS.read_text())["dependencies"]
    if set(declared) != set(PACKAGES):
        raise VendorError(f"{PINS}: pins {sorted(declared)}, but vendor.py copies from {sorted(PACKAGES)}")
    return declared


def manifest() -> dict[str, Any]:
    """The committed manifest's packages (empty before the first ``copy``)."""
    if not MANIFEST.exists():
        return {}
    packages: dict[str, Any] = json.loads(MANIFEST.read_text())["packages"]
    return packages


def integrity_of(data: bytes) -> str:
    """npm's ``integrity`` of a tarball (Subresource Integrity, SHA-512)."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def tarball(name: str, version: str) -> Path:
    """Where ``fetch`` keeps ``name@version``'s tarball."""
    return PACKS / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def fetch() -> None:
    """Download each pinned tarball once, and check it against the manifest's integrity."""
    recorded = manifest()
    PACKS.mkdir(exist_ok=True)
    for name, version in pins().items():
        path = tarball(name, version)
        if not path.exists():
            subprocess.run(  # noqa: S603 (fixed arguments, the package names are this file's)
                ["npm", "pack", f"{name}@{version}", "--pack-destination", str(PACKS), "--silent"],  # noqa: S607
                check=True,
                stdout=subprocess.DEVNULL,
            )
        entry = recorded.get(name)
        if entry is not None and entry["version"] == version and integrity_of(path.read_bytes()) != entry["integrity"]:
            raise VendorError(f"{path.name}: not the tarball the manifest records ({entry['integrity']})")


def packaged_files(name: str, version: str) -> dict[str, bytes]:
    """The files Minato needs from ``name@version``'s fetched tarball, by their path in the package."""
    path = tarball(name, version)
    if not path.exists():
        raise VendorError(f"{path} is missing: run `make install` (it fetches the pinned packages with npm)")
    wanted = PACKAGES[name].files
    found: dict[str, bytes] = {}
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            inside = member.name.removeprefix("package/")
            if member.isfile() and inside in (*wanted, "package.json"):
                extracted = archive.extractfile(member)
                if extracted is not None:
                    found[inside] = extracted.read()
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise VendorError(f"{name}@{version} has no {', '.join(missing)}: update PACKAGES in assets/vendor.py")
    return found


def copy() -> None:
    """Replace ``src/minato/web/pages/static/docs`` with the pinned packages' files, and write the manifest."""
    fetch()
    packages: dict[str, Any] = {}
    if STATIC.exists():
        shutil.rmtree(STATIC)
    for name, version in pins().items():
        vendored = PACKAGES[name]
        found = packaged_files(name, version)
        target = STATIC / vendored.directory
        target.mkdir(parents=True)
        files = {}
        for source in vendored.files:
            data = found[source]
            (target / Path(source).name).write_bytes(data)
            files[Path(source).name] = {"from": source, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        packages[name] = {
            "version": version,
            "integrity": integrity_of(tarball(name, version).read_bytes()),
            "license": json.loads(found["package.json"]).get("license"),
            "directory": vendored.directory,
            "files": files,
        }
    document = {
        "about": "Written by `make assets` (assets/vendor.py) from the pins in assets/package.json.",
        "packages": packages,
    }
    MANIFEST.write_text(json.dumps(document, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``fetch`` the pinned tarballs, or ``copy`` their files into the package."""
    parser = argparse.ArgumentParser(prog="python3 -m assets.vendor", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fetch", "copy"])
    command = parser.parse_args(argv).command
    try:
        fetch() if command == "fetch" else copy()
    except (VendorError, subprocess.CalledProcessError, OSError) as exc:
        print(f"assets: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
