"""The webhook target policy, the retry schedule and the secret: pure logic, no I/O."""

from __future__ import annotations

import ipaddress
import random

import pytest
from pydantic import ValidationError

from core.settings import Settings
from core.webhooks import (
    RETRY_WAIT_MAX_S,
    AllowList,
    TargetRefused,
    check_secret,
    message_id,
    parse_target,
    retry_wait,
    special_kind,
)


def _refusal(allow: str, url: str, *addresses: str) -> str | None:
    return AllowList.parse(allow).refusal(parse_target(url), [ipaddress.ip_address(a) for a in addresses])


@pytest.mark.parametrize(
    "address,kind",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "private"),  # reserved (Python counts it private too)
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_special_addresses(address: str, kind: str | None) -> None:
    assert special_kind(ipaddress.ip_address(address)) == kind


def test_default_allows_public_addresses_only() -> None:
    assert _refusal("public", "https://hooks.example.com/x", "93.184.216.34") is None
    assert "private" in (_refusal("public", "https://hooks.example.com/x", "10.0.0.1") or "")
    # every address must pass: one internal address among public ones is refused (DNS with a poisoned entry)
    assert "loopback" in (_refusal("public", "https://a.example/x", "93.184.216.34", "127.0.0.1") or "")
    assert "does not resolve" in (_refusal("public", "https://a.example/x") or "")


def test_allow_list_entries() -> None:
    allow = "127.0.0.1, 10.0.0.0/8, hooks.internal, public"
    assert _refusal(allow, "http://127.0.0.1:9000/h", "127.0.0.1") is None
    assert _refusal(allow, "http://10.9.8.7/h", "10.9.8.7") is None
    assert _refusal(allow, "http://hooks.internal/h", "192.168.5.5") is None  # a host listed by name
    assert "loopback" in (_refusal(allow, "http://[::1]/h", "::1") or "")
    assert "private" in (_refusal(allow, "http://192.168.0.2/h", "192.168.0.2") or "")
    # without `public`, a public address is outside the list too
    assert "public" in (_refusal("127.0.0.1", "http://8.8.8.8/h", "8.8.8.8") or "")


def test_metadata_is_never_allowed() -> None:
    allow = "169.254.0.0/16, metadata.google.internal, public"
    assert "metadata" in (_refusal(allow, "http://169.254.169.254/latest", "169.254.169.254") or "")
    assert "metadata" in (_refusal(allow, "http://metadata.google.internal/", "169.254.169.254") or "")
    assert "metadata" in (_refusal(allow, "http://evil.example/", "::ffff:169.254.169.254") or "")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://x",
        "http:///nohost",
        "http://exa mple.com/",
        "http://a:99999/",
    ],
)
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(TargetRefused):
        parse_target(url)


def test_target_parts() -> None:
    t = parse_target("HTTPS://User:pw@Hooks.Example.COM./a?b=1")
    assert (t.scheme, t.host, t.port, t.literal) == ("https", "hooks.example.com", 443, None)
    assert parse_target("http://[::1]:8080/x").literal == ipaddress.ip_address("::1")


def test_allow_list_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="WEBHOOK_ALLOW"):
        AllowList.parse("127.0.0.1, not a host!")
    with pytest.raises(ValidationError):
        Settings(webhook_allow="10.0.0.0/33x")


def test_retry_waits_grow_and_the_first_comes_within_30_s() -> None:
    rng = random.Random(0)
    initial = Settings().webhook_retry_initial_s
    waits = [retry_wait(n, initial, rng) for n in range(1, 12)]
    assert initial <= waits[0] <= 2 * initial <= 30
    assert all(initial * 2 ** (n - 1) <= w <= initial * 2 ** (n - 1) + initial for n, w in enumerate(waits[:6], 1))
    assert max(waits) <= RETRY_WAIT_MAX_S
    # the largest setting still retries within 30 s
    assert retry_wait(1, 15, rng) <= 30


def test_secret_format() -> None:
    good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert len(check_secret(good)) == 24
    for bad in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_c2hvcnQ="):
        with pytest.raises(ValueError):
            check_secret(bad)
    assert Settings(webhook_secret=good).webhook_secret is not None
    assert Settings(webhook_secret="").webhook_secret is None
    with pytest.raises(ValidationError):
        Settings(webhook_secret="whsec_short")


def test_the_completed_message_id_is_stable() -> None:
    assert message_id("ab" * 16, "completed") == "abababababababababababababababab-completed"
