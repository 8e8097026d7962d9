"""``/metrics`` answers with a ``Content-Type`` a strict reader takes: Prometheus 3 reads it with Go's
``mime.ParseMediaType`` and fails the whole scrape on a parameter sent twice.

The reader (``tests/support/media_type.py``) is tested first, on what Go and RFC 9110 refuse, so that its
verdict on Minato's header means something.
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tests.support.media_type import MediaType, parse_media_type

pytestmark = pytest.mark.anyio


async def test_metrics_sends_one_charset(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers.get_list("content-type") == [CONTENT_TYPE_LATEST]
    assert parse_media_type(response.headers["content-type"]) == MediaType(
        "text/plain", {"version": "1.0.0", "charset": "utf-8"}
    )
    assert response.text.startswith("# HELP ")


async def test_the_openapi_document_names_the_media_type_metrics_sends(client: AsyncTestClient[Litestar]) -> None:
    document: dict[str, Any] = (await client.get("/docs/openapi.json")).json()
    sent = (await client.get("/metrics")).headers["content-type"]

    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [sent]
