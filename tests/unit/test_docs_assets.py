"""The docs pages' vendored files, read from disk: named by their contents, the pinned packages' files
byte for byte, options the bundle knows."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest

from assets import vendor
from minato.web.pages import docs
from minato.web.pages.docs import SCALAR_CONFIGURATION, STATIC

pytestmark = pytest.mark.anyio


async def test_minatos_own_files_are_served_under_a_path_naming_their_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They are cached for good too, so an edited file must be a new URL."""
    (tmp_path / "start.js").write_text("// one")
    monkeypatch.setattr(docs, "START", tmp_path)
    docs.start_path.cache_clear()
    try:
        before = docs.start_path()
        (tmp_path / "start.js").write_text("// two")
        docs.start_path.cache_clear()
        after = docs.start_path()
    finally:
        docs.start_path.cache_clear()

    assert before.startswith("/assets/minato-")
    assert after.startswith("/assets/minato-")
    assert before != after


def test_every_option_minato_gives_scalar_is_one_its_bundle_knows() -> None:
    """Scalar ignores an option it does not know: a misspelt one would leave its feature on, silently."""
    bundle = (STATIC / "scalar" / "standalone.js").read_text()
    schema_at = bundle.index("showDeveloperTools:")  # its configuration's schema, where every option is named
    schema = bundle[schema_at - 20_000 : schema_at + 20_000]

    for option, value in SCALAR_CONFIGURATION.items():
        assert re.search(rf"[{{,]{option}:", schema), option
        if isinstance(value, dict):
            for inner in value:
                assert re.search(rf"[{{,]{inner}:", schema), f"{option}.{inner}"
    # One of the values it takes (its other values show the toolbar on localhost or always).
    assert re.search(rf"showDeveloperTools:[^{{}}]*?`{SCALAR_CONFIGURATION['showDeveloperTools']}`", schema)


def _manifest() -> dict[str, Any]:
    packages: dict[str, Any] = json.loads((STATIC / "manifest.json").read_text())["packages"]
    return packages


def test_the_manifest_names_the_pinned_versions_and_exactly_the_committed_files() -> None:
    manifest = _manifest()
    committed = {path.relative_to(STATIC).as_posix() for path in STATIC.rglob("*") if path.is_file()}
    listed = {f"{entry['directory']}/{name}" for entry in manifest.values() for name in entry["files"]}

    assert {name: entry["version"] for name, entry in manifest.items()} == vendor.pins()
    assert committed == listed | {"manifest.json"}
    for name, entry in manifest.items():
        assert [file["from"] for file in entry["files"].values()] == list(vendor.PACKAGES[name].files)
        for file_name, file in entry["files"].items():
            data = (STATIC / entry["directory"] / file_name).read_bytes()
            assert (hashlib.sha256(data).hexdigest(), len(data)) == (file["sha256"], file["bytes"]), file_name


@pytest.mark.parametrize("name", sorted(vendor.PACKAGES))
def test_the_committed_files_are_the_pinned_packages_files(name: str) -> None:
    entry = _manifest()[name]
    tarball = vendor.tarball(name, entry["version"])
    if not tarball.exists():
        pytest.fail(f"{tarball} is missing: `make install` fetches it (it needs npm)", pytrace=False)

    assert vendor.integrity_of(tarball.read_bytes()) == entry["integrity"], "not the tarball the manifest pins"
    with tarfile.open(tarball) as archive:
        for file_name, file in entry["files"].items():
            packed = archive.extractfile(f"package/{file['from']}")
            assert packed is not None
            assert (STATIC / entry["directory"] / file_name).read_bytes() == packed.read(), file_name
