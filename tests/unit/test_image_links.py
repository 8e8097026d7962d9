"""The SSRF guard of image links: the address check and name resolution."""

from __future__ import annotations

import ipaddress

import pytest

from minato.core.fetch import ImageFetcher, address_problem
from minato.settings import Settings
from tests.support.image_server import LIMIT, ImageServer, _start_image_server, fx_fake_dns, fx_server, fx_settings  # noqa: F401 - fixtures, found by name

pytestmark = pytest.mark.anyio
# -- links that are refused before anything is fetched ---------------------------------------------


async def test_a_name_resolving_only_to_public_addresses_passes_the_check(
    settings: Settings, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["public.example"] = ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    fetcher = ImageFetcher(settings)

    results = await fetcher.resolve_checked("public.example", 443)

    assert [(r["host"], r["port"], r["hostname"]) for r in results] == [
        ("93.184.215.14", 443, "public.example"),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", 443, "public.example"),
    ]
    await fetcher.aclose()


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("93.184.215.14", None),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fd00:ec2::254", "private (unique local)"),
        ("fc00::1", "private (unique local)"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::7f00:1", "loopback"),
        ("2002:a9fe:a9fe::", "link-local"),
        ("::7f00:1", "reserved"),  # IPv4-compatible, deprecated
        ("203.0.113.5", "private"),  # TEST-NET-3: documentation only, never routed (not is_global)
        ("255.255.255.255", "reserved"),
    ],
)
def test_the_address_check(address: str, problem: str | None) -> None:
    assert address_problem(ipaddress.ip_address(address)) == problem
