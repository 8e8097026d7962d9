"""Named keys end to end: a real Minato with a keys file, in front of the stand-in."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.servers import MinatoServer, start_minato, stop_minato

pytestmark = pytest.mark.e2e

SCOPED = "e2e-scoped-key"


@pytest.fixture(scope="module")
def scoped(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinatoServer]:
    """Minato with one key limited to ``llama3.2:1b``."""
    directory = tmp_path_factory.mktemp("keys")
    keys = directory / "keys.toml"
    keys.write_text(f'[keys.scoped-ci]\nkey = "{SCOPED}"\nmodels = ["llama3.2:1b"]\n')
    server = start_minato(standin_url, directory / "keys.log", keys_file=str(keys))
    yield server
    stop_minato(server)


def test_a_scoped_key_is_refused_other_models_and_sees_only_its_own(scoped: MinatoServer, standin_url: str) -> None:
    headers = {"X-API-Key": SCOPED}
    with httpx.Client(base_url=scoped.url, timeout=30, headers=headers) as http:
        refused = http.get("/llava:7b", params={"message": "hi"})
        answered = http.get("/llama3.2:1b", params={"message": "hi"})
        listed = http.get("/models_list/")

    installed = [m["name"] for m in httpx.get(f"{standin_url}/api/tags", timeout=10).json()["models"]]
    assert refused.status_code == 403
    assert "may not use model 'llava:7b'" in refused.json()["detail"]
    assert answered.status_code == 200
    assert len(installed) > 1
    assert [m["name"] for m in listed.json()["models_list"]] == ["llama3.2:1b"]
    log = "\n".join(scoped.log_lines())
    assert '"key":"scoped-ci"' in log
    assert SCOPED not in log
