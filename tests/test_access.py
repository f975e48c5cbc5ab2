"""Who may pass: client addresses seen through proxies, and the bypass secret."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import itertools
import os
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from starlette.types import Message

from maintguard.exceptions import ConfigurationError
from maintguard.starlette._access import Address, Bypass, ClientRule
from tests.asgi import http_scope

SECRET = "s3cret-bypass-token-0123456789"
NOW = 1_700_000_000.0
PROXY = "127.0.0.1"
EXAMPLES = int(os.environ.get("MAINTGUARD_PROPERTY_EXAMPLES", "60"))

Header = tuple[str | bytes, str | bytes]


def make_scope(*headers: Header, client: Any = (PROXY, 5000), **extra: Any) -> dict[str, Any]:
    raw = [
        (k if isinstance(k, bytes) else k.encode(), v if isinstance(v, bytes) else v.encode())
        for k, v in headers
    ]
    return {**http_scope("/", headers=raw, client=client), **extra}


def ip(text: str) -> Address:
    return ipaddress.ip_address(text)


def rule(header: str = "x-forwarded-for", trusted: tuple[str, ...] = (PROXY,)) -> ClientRule:
    return ClientRule(["10.0.0.0/8"], trusted, forwarded_header=header)


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"allow_ips": "10.0.0.0/8"}, "['10.0.0.0/8']"),
        ({"trusted_proxies": "127.0.0.1"}, "takes a list"),
        ({"allow_ips": b"10.0.0.0/8"}, "takes a list"),
        ({"allow_ips": None}, "takes a list"),
        ({"allow_ips": ["10.0.0.300"]}, "'10.0.0.300' is not an IP address or network"),
        ({"trusted_proxies": ["localhost"]}, "write e.g."),
        ({"allow_ips": [ipaddress.ip_network("10.0.0.0/8")]}, "must be a string"),
        ({"allow_ips": [10]}, "must be a string"),
        ({"forwarded_header": "x-real-ip"}, "'x-forwarded-for' or 'forwarded'"),
        ({"forwarded_header": b"forwarded"}, "'x-forwarded-for' or 'forwarded'"),
    ],
)
def test_client_rule_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ClientRule(**options)
    assert message in str(caught.value)


def test_client_rule_accepts_either_header_in_any_case_and_reports_enabled() -> None:
    assert ClientRule(forwarded_header="Forwarded").enabled is False
    assert ClientRule(["10.0.0.1"], forwarded_header="X-Forwarded-For").enabled is True
    assert ClientRule(n for n in ["10.0.0.5/8"]).allows(make_scope(client=("10.9.9.9", 1)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"secret": "short"}, "16 characters or more"),
        ({"secret": SECRET.encode()}, "16 characters or more"),
        ({"secret": "\ud800" * 16}, "UTF-8"),
        ({"header": "x bypass"}, "bypass_header"),
        ({"header": ""}, "bypass_header"),
        ({"header": None}, "bypass_header"),
        ({"path": "_maintenance/bypass"}, "bypass_path"),
        ({"path": None}, "bypass_path"),
        ({"cookie": "bad;name"}, "bypass_cookie"),
        ({"cookie": ""}, "bypass_cookie"),
        ({"max_age": 0}, "bypass_max_age"),
        ({"max_age": -5}, "bypass_max_age"),
        ({"max_age": float("nan")}, "bypass_max_age"),
        ({"max_age": float("inf")}, "bypass_max_age"),
        ({"max_age": "3600"}, "bypass_max_age"),
        ({"max_age": True}, "bypass_max_age"),
        ({"max_age": 401 * 86400}, "400 days"),
    ],
)
def test_bypass_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Bypass(**{"secret": SECRET, **options})
    assert message in str(caught.value)
    assert str(options.get("secret", SECRET)) not in str(caught.value)


def test_bypass_without_a_secret_lets_nothing_through() -> None:
    bypass = Bypass(None)
    assert bypass.enabled is False
    assert Bypass(SECRET).enabled is True
    assert not bypass.is_grant_path("/_maintenance/bypass/")
    assert not bypass.carried(make_scope(("x-maintenance-bypass", "")), NOW)


# -- the client address ----------------------------------------------------------------------


def test_an_untrusted_peer_is_the_client_whatever_it_sends() -> None:
    scope = make_scope(
        ("x-forwarded-for", "10.0.0.5"), ("forwarded", "for=10.0.0.5"), client=("203.0.113.9", 1)
    )
    assert rule().client_ip(scope) == ip("203.0.113.9")
    assert not rule().allows(scope)
    assert not rule("forwarded").allows(scope)


def test_a_trusted_peer_without_a_header_is_the_client() -> None:
    assert rule().client_ip(make_scope()) == ip(PROXY)
    assert ClientRule([PROXY], [PROXY]).allows(make_scope())


def test_every_line_of_the_header_counts_so_a_client_line_cannot_spoof() -> None:
    # HAProxy's "option forwardfor" adds its own line after the one the client sent.
    scope = make_scope(("x-forwarded-for", "10.0.0.5"), ("x-forwarded-for", "203.0.113.9"))
    assert rule().client_ip(scope) == ip("203.0.113.9")
    assert not rule().allows(scope)
    forwarded = make_scope(("forwarded", "for=10.0.0.5"), ("forwarded", "for=203.0.113.9"))
    assert not rule("forwarded").allows(forwarded)


def test_header_names_are_matched_in_any_case() -> None:
    scope = make_scope((b"x-forwarded-for", b"10.0.0.5"), (b"X-Forwarded-For", b"203.0.113.9"))
    assert rule().client_ip(scope) == ip("203.0.113.9")
    assert Bypass(SECRET).carried(make_scope((b"X-Maintenance-Bypass", SECRET)), NOW)


def test_lines_are_one_list_in_order() -> None:
    trusted = (PROXY, "192.0.2.0/24")
    one = make_scope(("x-forwarded-for", "198.51.100.1, 10.0.0.5, 192.0.2.1"))
    two = make_scope(
        ("x-forwarded-for", "198.51.100.1"),
        ("accept", "*/*"),
        ("x-forwarded-for", "10.0.0.5, 192.0.2.1"),
    )
    assert rule(trusted=trusted).client_ip(one) == ip("10.0.0.5")
    assert rule(trusted=trusted).client_ip(two) == ip("10.0.0.5")


def test_only_the_configured_header_is_read() -> None:
    # A client's own Forwarded header, passed on by a proxy that appends X-Forwarded-For.
    spoof = make_scope(("forwarded", "for=10.0.0.5"), ("x-forwarded-for", "203.0.113.9"))
    assert rule().client_ip(spoof) == ip("203.0.113.9")
    assert not rule().allows(spoof)
    reverse = make_scope(("x-forwarded-for", "10.0.0.5"), ("forwarded", "for=203.0.113.9"))
    assert rule("forwarded").client_ip(reverse) == ip("203.0.113.9")
    assert not rule("forwarded").allows(reverse)
    assert rule().allows(reverse)


def test_the_chain_is_walked_from_the_right_past_trusted_proxies() -> None:
    trusted = (PROXY, "192.0.2.0/24")
    scope = make_scope(("x-forwarded-for", "10.0.0.5, 203.0.113.9, 192.0.2.7, 192.0.2.8"))
    assert rule(trusted=trusted).client_ip(scope) == ip("203.0.113.9")
    every_hop_trusted = make_scope(("x-forwarded-for", "192.0.2.1, 192.0.2.7"))
    assert rule(trusted=trusted).client_ip(every_hop_trusted) == ip("192.0.2.1")


@pytest.mark.parametrize(
    "chain", ["10.0.0.5, garbage", "10.0.0.5, unknown", "10.0.0.5, 10.0.0.6:", "10.0.0.5, [::1"]
)
def test_an_unreadable_hop_makes_the_client_unknown(chain: str) -> None:
    scope = make_scope(("x-forwarded-for", chain))
    assert rule().client_ip(scope) is None
    assert not rule().allows(scope)


def test_unreadable_hops_beyond_the_client_do_not_matter() -> None:
    scope = make_scope(("x-forwarded-for", "garbage, 10.0.0.5"), ("x-forwarded-for", ", ,"))
    assert rule().client_ip(scope) == ip("10.0.0.5")


@pytest.mark.parametrize(
    ("hop", "expected"),
    [
        (" 10.0.0.5 ", "10.0.0.5"),
        ("\t10.0.0.5:4711", "10.0.0.5"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("::ffff:10.0.0.5", "10.0.0.5"),
        ("[::ffff:10.0.0.5]:80", "10.0.0.5"),
    ],
)
def test_x_forwarded_for_hops(hop: str, expected: str) -> None:
    assert rule().client_ip(make_scope(("x-forwarded-for", hop))) == ip(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("for=10.0.0.5", "10.0.0.5"),
        ('for="[2001:db8::1]:4711"', "2001:db8::1"),
        ('For="10.0.0.5:80";proto=https;by=_proxy', "10.0.0.5"),
        ("by=192.0.2.1; FOR=10.0.0.5 ;host=example.com", "10.0.0.5"),
        ('for="10.0.0.\\5"', "10.0.0.5"),
        ('for=203.0.113.9, for="[::ffff:10.0.0.5]"', "10.0.0.5"),
        ("for=203.0.113.9,,  ,for=10.0.0.5", "10.0.0.5"),
        ('for=10.0.0.5;by="a,for=203.0.113.9;x"', "10.0.0.5"),
    ],
)
def test_forwarded_values_are_tokenized(value: str, expected: str) -> None:
    assert rule("forwarded").client_ip(make_scope(("forwarded", value))) == ip(expected)


def test_a_comma_inside_quotes_does_not_split_an_element() -> None:
    # Split naively, the quoted string would yield a hop "for=10.0.0.5" the client wrote.
    scope = make_scope(("forwarded", 'for=203.0.113.9;by="x,for=10.0.0.5"'))
    assert rule("forwarded").client_ip(scope) == ip("203.0.113.9")
    assert not rule("forwarded").allows(scope)


@pytest.mark.parametrize(
    "value",
    [
        "for=10.0.0.5, for=unknown",
        "for=10.0.0.5, for=_hidden",
        'for=10.0.0.5, for="_hidden:_port"',
        "for=10.0.0.5, by=192.0.2.1",
        "for=10.0.0.5, for=10.0.0.6;for=10.0.0.7",
        "for=10.0.0.5, for=10.0.0.6 junk",
        'for=10.0.0.5, for="10.0.0.6',
        "for=10.0.0.5, for",
        "for=10.0.0.5, =10.0.0.6",
        "for=10.0.0.5, for=[2001:db8::1]",  # a bracket is not a token character: quote it
    ],
)
def test_an_unreadable_forwarded_element_makes_the_client_unknown(value: str) -> None:
    scope = make_scope(("forwarded", value))
    assert rule("forwarded").client_ip(scope) is None
    assert not rule("forwarded").allows(scope)


def test_a_broken_client_line_of_forwarded_is_not_reached() -> None:
    scope = make_scope(("forwarded", 'for="10.0.0.5'), ("forwarded", "for=203.0.113.9"))
    assert rule("forwarded").client_ip(scope) == ip("203.0.113.9")


def test_ipv4_mapped_addresses_match_ipv4_networks() -> None:
    mapped_peer = make_scope(("x-forwarded-for", "10.0.0.5"), client=("::ffff:127.0.0.1", 1))
    assert rule().client_ip(mapped_peer) == ip("10.0.0.5")
    assert rule().allows(mapped_peer)
    assert rule().client_ip(make_scope(client=("::ffff:10.0.0.5", 1))) == ip("10.0.0.5")
    assert rule().allows(make_scope(client=("::ffff:10.0.0.5", 1)))
    trusted_mapped = ClientRule(["10.0.0.0/8"], ["::ffff:127.0.0.1"])
    assert trusted_mapped.allows(make_scope(("x-forwarded-for", "10.0.0.5")))


def test_networks_written_as_mapped_ipv6_match_both_forms() -> None:
    allow = ClientRule(["::ffff:10.0.0.0/104"])
    assert allow.allows(make_scope(client=("10.0.0.5", 1)))
    assert allow.allows(make_scope(client=("::ffff:10.0.0.5", 1)))
    assert not allow.allows(make_scope(client=("11.0.0.5", 1)))
    everything = ClientRule(["::/0"])
    assert everything.allows(make_scope(client=("192.0.2.1", 1)))
    assert everything.allows(make_scope(client=("2001:db8::1", 1)))
    assert not ClientRule(["2001:db8::/32"]).allows(make_scope(client=("192.0.2.1", 1)))


@pytest.mark.parametrize(
    "client",
    [None, (), [], ("", 0), (None, 0), (10, 1), ("/tmp/app.sock", None), "10.0.0.5", 5, ("x",)],
)
def test_a_missing_or_odd_client_is_unknown(client: Any) -> None:
    scope = make_scope(("x-forwarded-for", "10.0.0.5"), client=client)
    assert rule().client_ip(scope) is None
    assert not rule().allows(scope)
    scope.pop("client")
    assert rule().client_ip(scope) is None


def test_allows_is_false_when_no_address_is_allowed() -> None:
    assert not ClientRule([], [PROXY]).allows(make_scope())


def test_huge_forwarding_headers_are_handled_quickly() -> None:
    values = [
        " " * 100_000 + "x",
        "for=" + "a" * 100_000 + " x",
        'for="' + "\\a" * 50_000,
        "1," * 50_000,
        ";" * 100_000,
        "for=10.0.0.5," * 8_000 + "for=203.0.113.9",
    ]
    started = time.perf_counter()
    for value in values:
        for header in ("x-forwarded-for", "forwarded"):
            rule(header).allows(make_scope((header, value)))
    assert time.perf_counter() - started < 2


# -- the bypass secret -----------------------------------------------------------------------


def test_the_grant_path_is_exact() -> None:
    bypass = Bypass(SECRET)
    assert bypass.is_grant_path(f"/_maintenance/bypass/{SECRET}")
    for path in (
        "/_maintenance/bypass/",
        f"/_maintenance/bypass/{SECRET}/",
        f"/_maintenance/bypass/{SECRET[:-1]}",
        f"/_maintenance/bypass{SECRET}",
        f"/other/{SECRET}",
        f"/_maintenance/bypass/{SECRET}\ud800",
        "\ud800",
        "",
    ):
        assert not bypass.is_grant_path(path)
    assert not bypass.is_grant_path(None)  # type: ignore[arg-type]
    assert Bypass(SECRET, path="/let-me-in/").is_grant_path(f"/let-me-in/{SECRET}")


def test_a_non_ascii_secret_works_in_the_path_and_header() -> None:
    secret = "pässwörd-ünd-mehr-🔑"
    bypass = Bypass(secret)
    assert bypass.is_grant_path(f"/_maintenance/bypass/{secret}")
    assert bypass.carried(make_scope(("x-maintenance-bypass", secret.encode())), NOW)
    assert not bypass.carried(
        make_scope(("x-maintenance-bypass", secret.encode("latin-1", "replace"))), NOW
    )


def test_the_header_carries_the_secret_on_any_of_its_lines() -> None:
    bypass = Bypass(SECRET, header="X-Let-Me-In")
    assert bypass.carried(make_scope(("x-let-me-in", SECRET)), NOW)
    repeated = make_scope(("x-let-me-in", "wrong"), ("x-let-me-in", SECRET))
    assert bypass.carried(repeated, NOW)
    for value in (b"", SECRET[:-1].encode(), SECRET.encode() + b" ", "é".encode(), b"\xff" * 40):
        assert not bypass.carried(make_scope(("x-let-me-in", value)), NOW)
    assert not bypass.carried(make_scope(("x-maintenance-bypass", SECRET)), NOW)


async def granted(bypass: Bypass, **scope: Any) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await bypass.grant(make_scope(**scope), send, NOW)
    return sent


def cookie_of(sent: list[Message]) -> tuple[bytes, list[bytes]]:
    (set_cookie,) = [v for k, v in sent[0]["headers"] if k == b"set-cookie"]
    pair, *attributes = set_cookie.split(b"; ")
    return pair, attributes


@pytest.mark.anyio
async def test_grant_answers_303_with_a_signed_cookie() -> None:
    bypass = Bypass(SECRET, max_age=3600)
    sent = await granted(bypass)
    start, body = sent
    assert start["type"] == "http.response.start"
    assert start["status"] == 303
    headers = dict(start["headers"])
    assert headers[b"location"] == b"/"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"content-length"] == b"0"
    assert body == {"type": "http.response.body", "body": b""}
    pair, attributes = cookie_of(sent)
    assert pair.startswith(b"maintguard_bypass=%d." % (NOW + 3600))
    assert attributes == [b"Path=/", b"Max-Age=3600", b"HttpOnly", b"SameSite=Lax"]
    assert SECRET.encode() not in repr(sent).encode()


@pytest.mark.anyio
@pytest.mark.parametrize(("scheme", "secure"), [("http", False), ("https", True), ("wss", True)])
async def test_grant_marks_the_cookie_secure_over_tls(scheme: str, secure: bool) -> None:
    _, attributes = cookie_of(await granted(Bypass(SECRET), scheme=scheme))
    assert (b"Secure" in attributes) is secure


@pytest.mark.anyio
async def test_grant_scopes_the_cookie_and_redirect_to_the_root_path() -> None:
    sent = await granted(Bypass(SECRET, cookie="let_in", max_age=90.5), root_path="/app")
    pair, attributes = cookie_of(sent)
    assert pair.startswith(b"let_in=")
    assert b"Path=/app" in attributes
    assert b"Max-Age=91" in attributes
    assert dict(sent[0]["headers"])[b"location"] == b"/app/"
    odd = await granted(Bypass(SECRET), root_path="/a;Domain=evil.example\r\n/ü/")
    _, attributes = cookie_of(odd)
    assert b"Path=/a%3BDomain=evil.example%0D%0A/%C3%BC" in attributes
    assert not any(a.startswith(b"Domain") for a in attributes)


@pytest.mark.anyio
async def test_the_granted_cookie_passes_until_it_expires() -> None:
    bypass = Bypass(SECRET, max_age=3600)
    pair, _ = cookie_of(await granted(bypass))
    scope = make_scope(("cookie", b"a=1; " + pair + b"; b=2"))
    assert bypass.carried(scope, NOW)
    assert bypass.carried(scope, NOW + 3600)
    assert not bypass.carried(scope, NOW + 3601)
    assert not Bypass("another-secret-0123456789").carried(scope, NOW)
    assert not Bypass(SECRET, cookie="other").carried(scope, NOW)
    second_line = make_scope(("cookie", b"a=1"), ("cookie", pair))
    assert bypass.carried(second_line, NOW)


@pytest.mark.anyio
async def test_any_valid_cookie_of_the_name_passes() -> None:
    bypass = Bypass(SECRET)
    pair = cookie_of(await granted(bypass))[0].split(b"=", 1)[1]
    scope = make_scope(("cookie", b"maintguard_bypass=junk; maintguard_bypass=" + pair))
    assert bypass.carried(scope, NOW)


@pytest.mark.anyio
async def test_a_tampered_cookie_fails() -> None:
    bypass = Bypass(SECRET)
    value = cookie_of(await granted(bypass))[0].split(b"=", 1)[1]
    expires, signature = value.split(b".")
    for forged in (
        b"%d.%s" % (int(expires) + 1, signature),
        expires + b"." + signature[:-1] + (b"0" if signature[-1:] != b"0" else b"1"),
        expires + b"." + signature.upper(),
        expires + b"." + signature + b"0",
        expires + signature,
        b"0" * 13 + expires + b"." + signature,
    ):
        assert not bypass.carried(make_scope(("cookie", b"maintguard_bypass=" + forged)), NOW)


def test_an_expiry_longer_than_twelve_digits_fails_even_when_signed() -> None:
    bypass = Bypass(SECRET)
    expires = b"9" * 13
    signature = hmac.new(SECRET.encode(), b"maintguard-bypass:" + expires, hashlib.sha256)
    value = expires + b"." + signature.hexdigest().encode()
    assert not bypass.carried(make_scope(("cookie", b"maintguard_bypass=" + value)), NOW)


@pytest.mark.parametrize(
    "cookie",
    [
        "maintguard_bypass=².abc".encode("latin-1"),  # isdigit() but not int()
        "maintguard_bypass=¹³.abc".encode("latin-1"),
        "maintguard_bypass=١٢٣.abc".encode(),
        b"maintguard_bypass=" + b"9" * 5000 + b".abc",
        "maintguard_bypass=1.é".encode(),
        b"maintguard_bypass=1.\xff\xfe",
        "maintguard_bypass=9999999999.ü".encode("latin-1"),
        b";;;",
        b"=",
        b"maintguard_bypass",
        b"maintguard_bypass=",
        b"maintguard_bypass=.",
        b"maintguard_bypass=" + b"1." * 50_000,
        b"maintguard_bypass=1" + b"a" * 100_000,
        b"maintguard_bypass=" + b"\x00" * 100_000,
    ],
)
def test_garbage_cookies_fail_without_raising(cookie: bytes) -> None:
    assert not Bypass(SECRET).carried(make_scope(("cookie", cookie)), NOW)


# -- properties ------------------------------------------------------------------------------

names = st.sampled_from(
    [b"x-forwarded-for", b"forwarded", b"cookie", b"x-maintenance-bypass", b"X-Forwarded-For"]
) | st.binary(max_size=20)
hop_text = st.sampled_from(
    ["10.0.0.5", "127.0.0.1", "::ffff:10.0.0.5", "[::1]:80", "for=10.0.0.5", "unknown", '"', ";"]
)
values = st.binary(max_size=200) | st.lists(hop_text, max_size=6).map(
    lambda parts: ", ".join(parts).encode()
)
headers = st.lists(st.tuples(names, values), max_size=8)
clients = st.one_of(
    st.none(),
    st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)),
    st.tuples(st.sampled_from([PROXY, "::ffff:127.0.0.1", "192.0.2.1"]), st.integers(0, 9)),
    st.tuples(st.text(max_size=40), st.none()),
    st.tuples(),
    st.lists(st.integers(), max_size=2),
    st.text(max_size=10),
    st.integers(),
)
TRUSTED = [PROXY, "192.0.2.0/24", "::1"]
TRUSTED_NETS = [ipaddress.ip_network(net) for net in TRUSTED]
rules = [
    ClientRule(["10.0.0.0/8", "2001:db8::/32"], TRUSTED, header)
    for header in ("x-forwarded-for", "forwarded")
]
bypasses = [Bypass(SECRET), Bypass(None)]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=headers, client=clients, path=st.text(max_size=60), now=st.floats(0, 2e12))
def test_no_request_makes_the_checks_raise(
    headers: list[tuple[bytes, bytes]], client: Any, path: str, now: float
) -> None:
    scope = make_scope(*headers, client=client, path=path)
    for client_rule in rules:
        found = client_rule.client_ip(scope)
        assert found is None or isinstance(found, ipaddress.IPv4Address | ipaddress.IPv6Address)
        assert isinstance(client_rule.allows(scope), bool)
    for bypass in bypasses:
        assert isinstance(bypass.carried(scope, now), bool)
        assert isinstance(bypass.is_grant_path(path), bool)
        assert isinstance(bypass.is_grant_path("/_maintenance/bypass/" + path), bool)


@settings(max_examples=EXAMPLES, deadline=None)
@given(headers=headers, peer=st.ip_addresses())
def test_headers_never_matter_when_the_peer_is_untrusted(
    headers: list[tuple[bytes, bytes]], peer: Address
) -> None:
    bare = make_scope(client=(str(peer), 1))
    seen = rules[0].client_ip(bare)
    assume(seen is not None and not any(seen in net for net in TRUSTED_NETS))
    for client_rule in rules:
        sent = make_scope(*headers, client=(str(peer), 1))
        assert client_rule.client_ip(sent) == client_rule.client_ip(bare)
        assert client_rule.allows(sent) == client_rule.allows(bare)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    chain=st.lists(st.ip_addresses(v=4).map(str) | hop_text, min_size=1, max_size=8),
    cuts=st.sets(st.integers(1, 7)),
)
def test_splitting_the_header_into_lines_changes_nothing(chain: list[str], cuts: set[int]) -> None:
    client_rule = rules[0]
    whole = make_scope(("x-forwarded-for", ", ".join(chain)))
    bounds = [0, *sorted(c for c in cuts if c < len(chain)), len(chain)]
    lines = [", ".join(chain[a:b]) for a, b in itertools.pairwise(bounds)]
    split = make_scope(*[("x-forwarded-for", line) for line in lines])
    assert client_rule.client_ip(split) == client_rule.client_ip(whole)
