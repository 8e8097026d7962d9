"""Images given as links (``image_url``): fetched by Minato itself, guarded against SSRF.

A link is the caller's URL, fetched from inside the network Minato runs in, so it must not become
a way to reach what only Minato can reach (Ollama, cloud metadata at 169.254.169.254, an admin
page on localhost). Every hop of a fetch is checked the same way:

* only ``http`` and ``https`` URLs with a host and without a user name or password;
* the host is resolved here, and refused unless *every* address it resolves to is public
  (hosts listed in ``MINATO_IMAGE_FETCH_ALLOW`` are exempt);
* the connection goes to the addresses that were checked: the connector's resolver only returns
  the addresses pinned for that host, so a second DNS answer (DNS rebinding) is never used;
* redirects are followed by hand, at most ``MINATO_IMAGE_FETCH_MAX_REDIRECTS``, each target checked
  like the first URL.

The body is bounded while it downloads (``MINATO_MAX_IMAGE_BYTES``), the whole fetch by
``MINATO_IMAGE_FETCH_TIMEOUT``, and what arrives must be an image by its bytes. Logs name the
host only: a link's path and query string can carry the caller's tokens.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from contextvars import ContextVar
from typing import Final

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from minato.core.images import NOT_AN_IMAGE, URL_FIELD, sniff_image
from minato.errors import ErrorItem, ImageLinkRefusedError, InvalidInputError, PayloadTooLargeError
from minato.settings import Settings
from minato.upstream.failures import connection_problem

logger = structlog.get_logger("minato.fetch")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_SHARED_ADDRESS_SPACE: Final = ipaddress.ip_network("100.64.0.0/10")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_UNIQUE_LOCAL: Final = ipaddress.ip_network("fc00::/7")
_HEADERS: Final = {"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "minato-image-fetch"}
_READ_CHUNK: Final = 64 * 1024

#: The addresses checked for the hop being fetched, by host; the resolver serves nothing else.
_PINNED: ContextVar[dict[str, list[ResolveResult]]] = ContextVar("minato_pinned_addresses")


def _ipv4_inside(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, NAT64 or 6to4), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def address_problem(address: IPAddress) -> str | None:
    """Say why ``address`` must not be fetched from (``"loopback"``, ``"private"``, ...), or ``None``."""
    inside = _ipv4_inside(address)
    if inside is not None:
        # Forms that carry an IPv4 address are judged by the IPv4 address they reach.
        return address_problem(inside)
    is_v4 = address.version == 4
    checks = (
        (is_v4 and address in _SHARED_ADDRESS_SPACE, "shared (carrier-grade NAT)"),
        (not is_v4 and address in _UNIQUE_LOCAL, "private (unique local)"),
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (not address.is_global, "non-public"),
    )
    return next((kind for failed, kind in checks if failed), None)


class _PinnedResolver(AbstractResolver):
    """Resolves a host only to the addresses this fetch checked for it; never asks DNS."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        pinned = _PINNED.get({}).get(host)
        if not pinned:
            raise OSError(f"no checked address for {host}")
        return [{**result, "port": port} for result in pinned]

    async def close(self) -> None:
        return None


class ImageFetcher:
    """Downloads ``image_url`` links through one aiohttp session, refusing non-public destinations."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.allowed_hosts = frozenset(_normal_host(host) for host in settings.image_fetch_allow)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: aiohttp binds the session to the running event loop.
        connector = aiohttp.TCPConnector(resolver=_PinnedResolver(), use_dns_cache=False, limit=100)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=_HEADERS,
            auto_decompress=False,  # a compressed body could expand past the size limit in one chunk
            cookie_jar=aiohttp.DummyCookieJar(),  # one caller's cookies must never reach another's fetch
            trust_env=False,  # a proxy would do its own DNS lookup, past the address checks
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str, index: int, *, source: str = "query") -> bytes:
        """Download the image at ``url`` (the ``index``-th link), or raise a 4xx naming the reason."""
        try:
            async with asyncio.timeout(self.settings.image_fetch_timeout):
                data, host = await self._follow(url)
        except ImageLinkRefusedError as exc:
            logger.info("image_fetch_refused", host=_host_of(url), index=index, reason=exc.msg)
            if exc.too_large:
                raise PayloadTooLargeError(f"{URL_FIELD}[{index}] {exc.msg}") from None
            raise _invalid(source, index, exc.msg) from None
        except TimeoutError:
            logger.info("image_fetch_refused", host=_host_of(url), index=index, reason="timeout")
            raise _invalid(
                source,
                index,
                f"timed out after {self.settings.image_fetch_timeout:g} seconds (MINATO_IMAGE_FETCH_TIMEOUT)",
            ) from None
        logger.info("image_fetched", host=host, index=index, size=len(data))
        return data

    async def _follow(self, url: str) -> tuple[bytes, str]:
        try:
            target = URL(url)
        except (ValueError, TypeError):
            raise ImageLinkRefusedError("is not a valid URL") from None
        redirects = 0
        while True:
            await self._check(target, redirected=redirects > 0)
            host = target.raw_host or ""
            status, location, data = await self._get(target)
            if status in _REDIRECTS and location is not None:
                redirects += 1
                if redirects > self.settings.image_fetch_max_redirects:
                    raise ImageLinkRefusedError(
                        f"was redirected more than {self.settings.image_fetch_max_redirects} times "
                        "(MINATO_IMAGE_FETCH_MAX_REDIRECTS)"
                    )
                try:
                    target = target.join(URL(location))
                except (ValueError, TypeError):
                    raise ImageLinkRefusedError("was redirected to an invalid URL") from None
                continue
            if not 200 <= status < 300:
                raise ImageLinkRefusedError(f"answered HTTP {status}")
            if not data:
                raise ImageLinkRefusedError("answered with an empty body")
            if sniff_image(data) is None:
                raise ImageLinkRefusedError(NOT_AN_IMAGE)
            return bytes(data), host

    async def _check(self, target: URL, *, redirected: bool) -> None:
        """Refuse ``target`` unless it is a plain http(s) URL whose host resolves only to allowed addresses.

        Pins the checked addresses for the connection that follows.
        """
        what = "was redirected to a URL that " if redirected else ""
        if target.scheme not in {"http", "https"}:
            scheme = target.scheme or "none"
            raise ImageLinkRefusedError(f"{what}has scheme {scheme!r}: the scheme must be http or https")
        if target.raw_user is not None or target.raw_password is not None:
            raise ImageLinkRefusedError(f"{what}contains a user name or password, which image links may not")
        host = target.raw_host
        if not host:
            raise ImageLinkRefusedError(f"{what}has no host")
        port = target.port or (443 if target.scheme == "https" else 80)
        results = await self.resolve_checked(host, port, what=what)
        _PINNED.set({host: results})

    async def resolve_checked(self, host: str, port: int, *, what: str = "") -> list[ResolveResult]:
        """Resolve ``host`` and return its addresses, refusing unless every one is public or the host
        is allow-listed."""
        infos = await self.lookup(host, port)
        if not infos:
            raise ImageLinkRefusedError(f"{what}names host {host} which does not resolve")
        allowed = _normal_host(host) in self.allowed_hosts
        results: list[ResolveResult] = []
        for family, address in infos:
            try:
                parsed = ipaddress.ip_address(address)
            except ValueError:
                raise ImageLinkRefusedError(f"{what}names host {host} which resolves to an unusable address") from None
            problem = None if allowed else address_problem(parsed)
            if problem is not None:
                raise ImageLinkRefusedError(
                    f"{what}names host {host} which resolves to a {problem} address; "
                    "image links may only reach public addresses"
                )
            results.append(
                {
                    "hostname": host,
                    "host": address,
                    "port": port,
                    "family": family,
                    "proto": socket.IPPROTO_TCP,
                    "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                }
            )
        return results

    async def lookup(self, host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
        """Resolve ``host`` to ``(family, address)`` pairs (an IP literal stands for itself)."""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [(socket.AF_INET if literal.version == 4 else socket.AF_INET6, str(literal))]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            raise ImageLinkRefusedError(f"names host {host} which does not resolve") from None
        pairs: list[tuple[socket.AddressFamily, str]] = []
        for family, _, _, _, sockaddr in infos:
            if (family, str(sockaddr[0])) not in pairs:
                pairs.append((family, str(sockaddr[0])))
        return pairs

    async def _get(self, target: URL) -> tuple[int, str | None, bytearray]:
        """GET ``target`` without following redirects: status, ``Location`` and the bounded body."""
        session = self._session or self._open()
        limit = self.settings.max_image_bytes
        try:
            async with session.get(target, allow_redirects=False) as response:
                if response.status in _REDIRECTS:
                    return response.status, response.headers.get("Location"), bytearray()
                if not 200 <= response.status < 300:
                    return response.status, None, bytearray()
                too_large = ImageLinkRefusedError(
                    f"is larger than {limit} bytes (MINATO_MAX_IMAGE_BYTES)", too_large=True
                )
                if response.content_length is not None and response.content_length > limit:
                    raise too_large
                body = bytearray()
                while chunk := await response.content.read(_READ_CHUNK):
                    body.extend(chunk)
                    if len(body) > limit:
                        raise too_large
                return response.status, None, body
        except aiohttp.ClientError as exc:
            logger.info("image_fetch_failed", host=target.host, library_text=f"{type(exc).__name__}: {exc}")
            raise ImageLinkRefusedError(f"could not be fetched: {connection_problem(exc, target.host or '')}") from None


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _host_of(url: str) -> str:
    try:
        return URL(url).raw_host or "?"
    except (ValueError, TypeError):
        return "?"


def _invalid(source: str, index: int, msg: str) -> InvalidInputError:
    return InvalidInputError([ErrorItem(loc=[source, URL_FIELD, index], msg=msg, type="value_error")])
