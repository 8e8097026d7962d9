"""Image uploads: a multipart form parsed in memory, bounded while it streams in, sniffed by content.

Litestar's own form parsing spools files over 1 MiB to a temporary file; images never touch the
disk here. Size limits are enforced on the bytes as they arrive, not after the fact.

A form carries images three ways, sent to Ollama in this order: ``images`` file parts, then
``image_base64`` text fields (decoded here, so whatever base64 dialect came in, Ollama gets
standard padded base64), then ``image_url`` links (fetched by :mod:`minato.core.fetch`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from typing import Any, Final

import structlog
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from minato.errors import ErrorItem, InvalidInputError, PayloadTooLargeError
from minato.settings import Settings

logger = structlog.get_logger("minato.images")
IMAGE_FIELD: Final = "images"
BASE64_FIELD: Final = "image_base64"
URL_FIELD: Final = "image_url"
TEXT_FIELDS: Final = frozenset({"message"})
MAX_TEXT_FIELD_BYTES: Final = 4 * 1024 * 1024
MAX_URL_CHARS: Final = 8192
NOT_AN_IMAGE: Final = "is not a PNG, JPEG, WebP, GIF or BMP image"
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


def base64_field_limit(settings: Settings) -> int:
    """Longest accepted ``image_base64`` field: the largest image's base64 plus room for line breaks
    and a ``data:`` prefix."""
    return settings.max_image_bytes * 3 // 2 + 4096


def decode_base64_image(
    text: str | bytes | bytearray, index: int, settings: Settings, field: str = BASE64_FIELD
) -> bytes:
    """Decode one base64 image (the ``field`` list's ``index``-th) into its bytes, or raise a 4xx naming it.

    Accepted: a ``data:image/...;base64,`` prefix, whitespace and line breaks anywhere, the URL-safe
    alphabet (``-_``) and missing ``=`` padding.
    """
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes | bytearray) else text
    value = raw.strip()
    if value[:5].lower() == "data:":
        header, comma, value = value.partition(",")
        media_type, *parameters = header[5:].split(";")
        if not comma or "base64" not in (p.strip().lower() for p in parameters):
            raise _base64_error(field, index, "is a data URL that is not base64 (expected data:image/...;base64,...)")
        if media_type.strip() and not media_type.strip().lower().startswith("image/"):
            raise _base64_error(field, index, f"is a data URL of {media_type.strip()!r}, not an image")
    compact = "".join(value.split()).replace("-", "+").replace("_", "/").rstrip("=")
    if not compact:
        raise _base64_error(field, index, "is empty")
    if len(compact) * 3 // 4 > settings.max_image_bytes:
        raise _too_large(field, index, settings)
    try:
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _base64_error(field, index, "is not valid base64") from None
    if len(data) > settings.max_image_bytes:
        raise _too_large(field, index, settings)
    if sniff_image(data) is None:
        raise _base64_error(field, index, NOT_AN_IMAGE)
    return data


def _base64_error(field: str, index: int, msg: str) -> InvalidInputError:
    return InvalidInputError([ErrorItem(loc=["body", field, index], msg=msg, type="value_error")])


def _too_large(field: str, index: int, settings: Settings) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{field}[{index}] is larger than {settings.max_image_bytes} bytes (MINATO_MAX_IMAGE_BYTES)"
    )


class VisionForm:
    """The decoded parts of a vision request."""

    __slots__ = ("decoded", "fields", "images", "links")

    def __init__(self) -> None:
        self.images: list[bytearray] = []
        self.decoded: list[bytes] = []
        self.links: list[str] = []
        self.fields: dict[str, str] = {}

    @property
    def count(self) -> int:
        """Images in the form: uploads, base64 fields and links."""
        return len(self.images) + len(self.decoded) + len(self.links)

    def base64_images(self) -> list[str]:
        """Return the uploaded, then the base64 images as the padded standard base64 Ollama expects."""
        images: list[bytes | bytearray] = [*self.images, *self.decoded]
        return [base64.b64encode(image).decode("ascii") for image in images]


class _FormCollector:
    """python-multipart callbacks that keep parts in memory within the configured bounds."""

    def __init__(self, settings: Settings, query_links: int = 0) -> None:
        self.settings = settings
        self.query_links = query_links
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
                raise _too_large(IMAGE_FIELD, len(self.form.images), self.settings)
        elif self._name == BASE64_FIELD:
            if len(self._buffer) > base64_field_limit(self.settings):
                raise _too_large(BASE64_FIELD, len(self.form.decoded), self.settings)
        elif len(self._buffer) > MAX_TEXT_FIELD_BYTES:
            raise PayloadTooLargeError(f"form field {self._name!r} is too large")

    def _part_end(self) -> None:
        if self._name == IMAGE_FIELD:
            self._add_image()
        elif self._name == BASE64_FIELD and not self._is_file:
            self._count(BASE64_FIELD)
            self.form.decoded.append(decode_base64_image(self._buffer, len(self.form.decoded), self.settings))
        elif self._name == URL_FIELD and not self._is_file:
            self._count(URL_FIELD)
            link = self._buffer.decode("utf-8", "replace").strip()
            check_link(link, "body", len(self.form.links))
            self.form.links.append(link)
        elif self._name in TEXT_FIELDS and not self._is_file:
            self.form.fields[self._name] = self._buffer.decode("utf-8", "replace")
        else:
            raise InvalidInputError.single(
                "body",
                self._name or "<unnamed>",
                "unknown form field (send images as 'images' files, 'image_base64' or 'image_url' fields, "
                "text as 'message')",
                "extra_forbidden",
            )

    def _count(self, field: str) -> None:
        """Refuse one more image of ``field`` if the request already has as many as allowed."""
        if self.query_links + self.form.count >= self.settings.max_images:
            raise too_many_images("body", field, self.settings)

    def _add_image(self) -> None:
        index = len(self.form.images)
        self._count(IMAGE_FIELD)
        if not self._buffer:
            raise InvalidInputError([ErrorItem(loc=["body", IMAGE_FIELD, index], msg="is empty", type="value_error")])
        if sniff_image(self._buffer) is None:
            raise InvalidInputError(
                [
                    ErrorItem(
                        loc=["body", IMAGE_FIELD, index],
                        msg=NOT_AN_IMAGE,
                        type="value_error",
                    )
                ]
            )
        self.form.images.append(self._buffer)


def too_many_images(source: str, field: str, settings: Settings) -> InvalidInputError:
    """The 422 for a request with more images than ``MINATO_MAX_IMAGES``, whichever way they came."""
    return InvalidInputError.single(
        source,
        field,
        f"at most {settings.max_images} images are accepted (MINATO_MAX_IMAGES), counting uploaded files, "
        "'image_base64' fields and 'image_url' links together",
        "too_long",
    )


def check_link(link: str, source: str, index: int) -> None:
    """Reject an empty or absurdly long ``image_url`` before anything is fetched."""
    if not link.strip():
        raise InvalidInputError([ErrorItem(loc=[source, URL_FIELD, index], msg="is empty", type="missing")])
    if len(link) > MAX_URL_CHARS:
        raise InvalidInputError(
            [
                ErrorItem(
                    loc=[source, URL_FIELD, index],
                    msg=f"is longer than {MAX_URL_CHARS} characters",
                    type="string_too_long",
                )
            ]
        )


async def read_vision_form(
    header: str | None, body: AsyncIterator[bytes], settings: Settings, query_links: int = 0
) -> VisionForm:
    """Parse a ``multipart/form-data`` body (its ``Content-Type`` ``header``, and its ``body`` as it
    arrives) into images, links and text fields, or raise a 4xx.

    With ``query_links`` (links given in the query string) the body may be left out altogether.
    """
    if header is None and query_links:
        async for chunk in body:
            if chunk:
                break
        else:
            return VisionForm()
    content_type, params = parse_options_header(header or "")
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidInputError.single(
            "header",
            "content-type",
            "must be multipart/form-data with 'images' file parts or 'image_base64' fields "
            "(or leave the body out and give 'image_url' links)",
        )
    collector = _FormCollector(settings, query_links)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except (MultipartParseError, ValueError) as exc:
        # The parser's own words ("Did not find CR at end of boundary (40)") are for the log.
        logger.debug("multipart_unparsable", library_text=str(exc))
        raise InvalidInputError.single(
            "body", "form", "is not a well-formed multipart/form-data body (check the boundary and part headers)"
        ) from None
    if not collector.form.count and not query_links:
        raise InvalidInputError.single(
            "body",
            IMAGE_FIELD,
            "at least one image is required: an 'images' file part, an 'image_base64' field or an 'image_url' link",
            "missing",
        )
    return collector.form
