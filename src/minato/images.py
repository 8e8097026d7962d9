"""Image uploads: a multipart form parsed in memory, bounded while it streams in, sniffed by content.

Litestar's own form parsing spools files over 1 MiB to a temporary file; images never touch the
disk here. Size limits are enforced on the bytes as they arrive, not after the fact.
"""

from __future__ import annotations

import base64
from typing import Any, Final

from litestar import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from minato.errors import ErrorItem, InvalidInputError, PayloadTooLargeError
from minato.settings import Settings

IMAGE_FIELD: Final = "images"
TEXT_FIELDS: Final = frozenset({"message"})
MAX_TEXT_FIELD_BYTES: Final = 4 * 1024 * 1024
_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)


def sniff_image(data: bytes | bytearray) -> str | None:
    """Return the image format of ``data`` judged by its magic bytes, or ``None``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    return None


class VisionForm:
    """The decoded parts of a vision request."""

    __slots__ = ("fields", "images")

    def __init__(self) -> None:
        self.images: list[bytearray] = []
        self.fields: dict[str, str] = {}

    def base64_images(self) -> list[str]:
        """Return the images as the padded standard base64 Ollama expects."""
        return [base64.b64encode(image).decode("ascii") for image in self.images]


class _FormCollector:
    """python-multipart callbacks that keep parts in memory within the configured bounds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.form = VisionForm()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._name = ""
        self._is_file = False
        self._buffer = bytearray()

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._name, self._is_file = "", False
        self._buffer = bytearray()

    def _header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            _, params = parse_options_header(bytes(self._header_value))
            self._name = params.get(b"name", b"").decode("utf-8", "replace")
            self._is_file = b"filename" in params
        self._header_field.clear()
        self._header_value.clear()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._buffer.extend(data[start:end])
        if self._name == IMAGE_FIELD:
            if len(self._buffer) > self.settings.max_image_bytes:
                index = len(self.form.images)
                raise PayloadTooLargeError(
                    f"images[{index}] is larger than {self.settings.max_image_bytes} bytes (MINATO_MAX_IMAGE_BYTES)"
                )
        elif len(self._buffer) > MAX_TEXT_FIELD_BYTES:
            raise PayloadTooLargeError(f"form field {self._name!r} is too large")

    def _part_end(self) -> None:
        if self._name == IMAGE_FIELD:
            self._add_image()
        elif self._name in TEXT_FIELDS and not self._is_file:
            self.form.fields[self._name] = self._buffer.decode("utf-8", "replace")
        else:
            raise InvalidInputError.single(
                "body",
                self._name or "<unnamed>",
                "unknown form field (send images as 'images', text as 'message')",
                "extra_forbidden",
            )

    def _add_image(self) -> None:
        index = len(self.form.images)
        if index >= self.settings.max_images:
            raise InvalidInputError.single(
                "body",
                IMAGE_FIELD,
                f"at most {self.settings.max_images} images are accepted (MINATO_MAX_IMAGES)",
                "too_long",
            )
        if not self._buffer:
            raise InvalidInputError([ErrorItem(loc=["body", IMAGE_FIELD, index], msg="is empty", type="value_error")])
        if sniff_image(self._buffer) is None:
            raise InvalidInputError(
                [
                    ErrorItem(
                        loc=["body", IMAGE_FIELD, index],
                        msg="is not a PNG, JPEG, WebP, GIF or BMP image",
                        type="value_error",
                    )
                ]
            )
        self.form.images.append(self._buffer)


async def read_vision_form(request: Request[Any, Any, Any], settings: Settings) -> VisionForm:
    """Parse a ``multipart/form-data`` body into images and text fields, or raise a 4xx."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidInputError.single(
            "header",
            "content-type",
            "must be multipart/form-data with one or more 'images' file parts",
        )
    collector = _FormCollector(settings)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except (MultipartParseError, ValueError) as exc:
        raise InvalidInputError.single("body", "form", f"malformed multipart body: {exc}") from None
    if not collector.form.images:
        raise InvalidInputError.single("body", IMAGE_FIELD, "at least one image file part is required", "missing")
    return collector.form
