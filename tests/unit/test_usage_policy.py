"""Whose usage a caller may see (the policy), and the keys by name the admin's reports name (the keyring)."""

from __future__ import annotations

import pytest

from minato.auth.caller import ANONYMOUS, Caller, Role
from minato.auth.keyring import Keyring
from minato.core.policy import Policy
from minato.errors import ForbiddenError
from minato.settings import Settings

ALICE = Caller(fingerprint="a" * 12, role=Role.USER, name="alice")
ROOT = Caller(fingerprint="b" * 12, role=Role.ADMIN, name="root")
SCRAPER = Caller(fingerprint="c" * 12, role=Role.METRICS, name="c" * 12)
POLICY = Policy(Settings(), keyed=True)


@pytest.mark.parametrize("name", [None, "alice"])
def test_a_user_key_sees_its_own_usage(name: str | None) -> None:
    POLICY.check_usage_of(ALICE, name)


@pytest.mark.parametrize("name", ["root", "mallory", ""])
def test_a_user_key_naming_another_key_is_refused_without_saying_whether_it_exists(name: str) -> None:
    with pytest.raises(ForbiddenError) as refused:
        POLICY.check_usage_of(ALICE, name)

    assert refused.value.detail == "a user key may see only its own usage"


@pytest.mark.parametrize("name", [None, "alice", "mallory"])
def test_an_admin_key_may_name_any_key(name: str | None) -> None:
    POLICY.check_usage_of(ROOT, name)
    POLICY.check_usage_of(ANONYMOUS, name)


@pytest.mark.parametrize("name", [None, SCRAPER.name, "alice"])
def test_a_metrics_key_sees_no_usage_not_even_its_own(name: str | None) -> None:
    with pytest.raises(ForbiddenError):
        POLICY.check_usage_of(SCRAPER, name)


def test_the_keyring_names_every_key_that_may_generate_once() -> None:
    settings = Settings(api_keys=("same-key", "plain-key"), admin_keys=("same-key",), metrics_keys=("scrape-key",))

    named = Keyring.from_settings(settings).callers_by_name()

    same = Keyring.from_settings(settings).identify("same-key")
    plain = Keyring.from_settings(settings).identify("plain-key")
    assert same is not None
    assert plain is not None
    assert named == {same.name: same, plain.name: plain}, "the metrics key left out, the twice-given key once"
    assert named[same.name].role is Role.ADMIN
