"""``POST /{model}``'s body Struct takes exactly the GET routes' query parameters and the images."""

from __future__ import annotations

import msgspec
import pytest

from minato.web.params import GENERATION_QUERY_PARAMETERS, GenerationBody

pytestmark = pytest.mark.anyio


def test_the_body_takes_exactly_the_query_parameters_and_images() -> None:
    fields = {field.name for field in msgspec.structs.fields(GenerationBody)}

    assert fields == GENERATION_QUERY_PARAMETERS | {"images"}
