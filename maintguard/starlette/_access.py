"""Who may pass during maintenance: client address rules and the bypass secret."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import re
from collections.abc import Iterable, Iterator
from typing import TypeAlias
from urllib.parse import quote

from starlette.types import Scope, Send

from .._options import seconds
from ..exceptions import ConfigurationError

__all__ = ["Address", "Bypass", "ClientRule", "is_token"]

logger = logging.getLogger("maintguard")

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_IS_TOKEN = re.compile(_TOKEN)
# One RFC 7239 forwarded-pair (or none) and the separator after it. Written so that no two
# parts can match the same characters: the match stays linear on hostile input.
_PAIR = re.compile(rf'[ \t]*(?:({_TOKEN})=({_TOKEN}|"(?:[^"\\]|\\.)*")[ \t]*)?([;,]|\Z)', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_PORT = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]+")  # a port, or an RFC 7239 obfuscated one
_EXPIRY = re.compile(rb"[0-9]{1,12}")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_PATH_SAFE = "/:@!$&'()*+,="  # RFC 3986 path characters, less ";" (it would end Path=)
_MAX_AGE_LIMIT = 400 * 24 * 3600  # browsers keep a cookie no longer (RFC 6265bis)


def is_token(text: str) -> bool:
    """Whether ``text`` is an HTTP token (RFC 9110): what a header or cookie name is."""
    return _IS_TOKEN.fullmatch(text) is not None


class ClientRule:
    """Which client addresses pass: ``allow_ips``, seen through ``trusted_proxies``.

    The client is the peer, unless the peer is a trusted proxy: then the header named by
    ``forwarded_header`` (``x-forwarded-for`` or ``forwarded``; the other is never read) is
    read, every line of it in order as one list, and walked from the right past trusted
    proxies; the first untrusted hop is the client, or the leftmost hop when all are
    trusted. A hop that cannot be read (``unknown``, an obfuscated node, garbage, a
    ``Forwarded`` element without ``for=``) makes the client unknown. IPv4-mapped IPv6
    addresses are taken as the IPv4 address they carry.
    """

    def __init__(
        self,
        allow_ips: Iterable[str] = (),
        trusted_proxies: Iterable[str] = (),
        forwarded_header: str = "x-forwarded-for",
    ) -> None:
        self._allow = _networks(allow_ips, "allow_ips")
        self._trusted = _networks(trusted_proxies, "trusted_proxies")
        if not isinstance(forwarded_header, str) or forwarded_header.lower() not in (
            "x-forwarded-for",
            "forwarded",
        ):
            raise ConfigurationError(
                "forwarded_header must be 'x-forwarded-for' or 'forwarded' (the header your "
                f"trusted proxy sets), not {forwarded_header!r}"
            )
        self._header = forwarded_header.lower().encode()
        #: True when ``allow_ips`` names any address.
        self.enabled = bool(self._allow)
        self._warned = False

    def client_ip(self, scope: Scope) -> Address | None:
        """The client's address, or None when it cannot be known."""
        peer = _peer(scope)
        if peer is None or not _within(peer, self._trusted):
            return peer
        hop: Address | None = peer
        for text in reversed(self._hops(scope)):
            hop = _hop(text) if text is not None else None
            if hop is None or not _within(hop, self._trusted):
                break
        return hop

    def allows(self, scope: Scope) -> bool:
        """Whether the client is in ``allow_ips`` (never when its address is unknown)."""
        if not self.enabled:
            return False
        ip = self.client_ip(scope)
        if not self._warned and ip is not None and ip == _peer(scope) and _rewritten(scope, ip):
            self._warn("the server took it from the request's forwarding header")
        return ip is not None and _within(ip, self._allow)

    def _warn(self, how: str) -> None:
        self._warned = True
        logger.warning(
            "maintguard: allow_ips judges the client address the server hands over, and %s "
            "before this middleware sees the request: a client the server trusts (any "
            "process on this host, by default) can pass allow_ips by sending that header, "
            "and trusted_proxies has no say. Run uvicorn with --no-proxy-headers (and give "
            "this middleware trusted_proxies= your proxy's addresses if one fronts the "
            "app), or set --forwarded-allow-ips to exactly your proxy's addresses, none "
            "that untrusted local processes use.",
            how,
        )

    def _hops(self, scope: Scope) -> list[str | None]:
        lines = [value.decode("latin-1") for value in _lines(scope, self._header)]
        if self._header == b"forwarded":
            return [hop for line in lines for hop in _forwarded_hops(line)]
        return [hop for line in lines for hop in (h.strip(" \t") for h in line.split(",")) if hop]


class Bypass:
    """The bypass secret: a header carrying it, or a signed cookie got from a secret URL.

    ``GET {path}/{secret}`` is answered with a cookie valid for ``max_age`` seconds; a
    request passes while it carries that cookie (any valid one, when the name is given
    several times) or a ``header`` line equal to the secret. Every comparison is of bytes,
    in constant time, and no input makes one raise.
    """

    def __init__(
        self,
        secret: str | None,
        *,
        header: str = "x-maintenance-bypass",
        path: str = "/_maintenance/bypass",
        cookie: str = "maintguard_bypass",
        max_age: float = 12 * 3600,
    ) -> None:
        if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
            raise ConfigurationError(
                "bypass_secret must be a string of 16 characters or more, e.g. "
                "secrets.token_urlsafe(32)"
            )
        try:
            self._secret = secret.encode() if secret is not None else None
        except UnicodeEncodeError:
            raise ConfigurationError(
                "bypass_secret must be text that UTF-8 can encode (no lone surrogates)"
            ) from None
        if not isinstance(header, str) or not is_token(header):
            raise ConfigurationError(
                f"bypass_header must be a header name such as 'x-maintenance-bypass', "
                f"not {header!r}"
            )
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(
                f"bypass_path must be a path starting with '/', such as "
                f"'/_maintenance/bypass', not {path!r}"
            )
        if not isinstance(cookie, str) or not is_token(cookie):
            raise ConfigurationError(
                f"bypass_cookie must be a cookie name (letters, digits, '_' or '-'), such as "
                f"'maintguard_bypass', not {cookie!r}"
            )
        max_age = seconds(
            "bypass_max_age",
            max_age,
            positive=True,
            at_most=_MAX_AGE_LIMIT,
            limit=f"at most 400 days, {_MAX_AGE_LIMIT}: the longest a browser keeps a cookie",
        )
        self._header = header.lower().encode()
        self._prefix = path.rstrip("/") + "/"
        self._cookie = cookie.encode()
        self._max_age = math.ceil(max_age)
        #: True when a secret is set.
        self.enabled = self._secret is not None

    def is_grant_path(self, route_path: str) -> bool:
        """Whether ``route_path`` is the secret URL, ``{path}/{secret}``."""
        if self._secret is None or not isinstance(route_path, str):
            return False
        if not route_path.startswith(self._prefix):
            return False
        candidate = route_path[len(self._prefix) :].encode("utf-8", "surrogatepass")
        return hmac.compare_digest(candidate, self._secret)

    def covers(self, path: str) -> bool:
        """Whether ``path`` is a secret URL's own path or under it (with a secret set)."""
        return self.enabled and (path + "/").startswith(self._prefix)

    def carried(self, scope: Scope, now: float) -> bool:
        """Whether the request carries the secret header or a valid cookie unexpired at ``now``."""
        if self._secret is None:
            return False
        secret = self._secret
        if any(hmac.compare_digest(value, secret) for value in _lines(scope, self._header)):
            return True
        return any(self._valid(value, now) for value in _cookies(scope, self._cookie))

    async def grant(self, scope: Scope, send: Send, now: float) -> None:
        """Answer 303 to the site's root, setting the bypass cookie (HTTP only)."""
        expires = str(int(now) + self._max_age).encode()
        root = scope.get("root_path") or ""
        root = quote(root, safe=_PATH_SAFE, errors="surrogatepass").rstrip("/")
        secure = b"; Secure" if scope.get("scheme") in ("https", "wss") else b""
        cookie = b"%s=%s.%s; Path=%s; Max-Age=%d; HttpOnly; SameSite=Lax%s" % (
            self._cookie,
            expires,
            self._sign(expires),
            (root or "/").encode(),
            self._max_age,
            secure,
        )
        headers = [
            (b"location", (root + "/").encode()),
            (b"set-cookie", cookie),
            (b"cache-control", b"no-store"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _valid(self, value: bytes, now: float) -> bool:
        expires, dot, signature = value.partition(b".")
        if not dot or not _EXPIRY.fullmatch(expires) or int(expires) < now:
            return False
        return hmac.compare_digest(signature, self._sign(expires))

    def _sign(self, expires: bytes) -> bytes:
        if self._secret is None:
            raise RuntimeError("no bypass secret is set")
        digest = hmac.new(self._secret, b"maintguard-bypass:" + expires, hashlib.sha256)
        return digest.hexdigest().encode()


def _rewritten(scope: Scope, peer: Address) -> bool:
    # The peer is an address the request's own forwarding header names: a server (or a
    # middleware before this one) rewrote the client from it. A real TCP peer sending
    # its own address there is rare, and is told the same.
    for name in (b"x-forwarded-for", b"forwarded"):
        for line in _lines(scope, name):
            text = line.decode("latin-1")
            hops = (
                _forwarded_hops(text)
                if name == b"forwarded"
                else [h.strip(" \t") for h in text.split(",")]
            )
            if any(hop is not None and _hop(hop) == peer for hop in hops):
                return True
    return False


def _networks(values: Iterable[str], option: str) -> list[Network]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ConfigurationError(
            f"{option} takes a list of addresses or networks, e.g. ['10.0.0.0/8'], not {values!r}"
        )
    found: list[Network] = []
    for value in values:
        if not isinstance(value, str):
            raise ConfigurationError(
                f"{option}: {value!r} must be a string such as '10.0.0.0/8' or '2001:db8::1'"
            )
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigurationError(
                f"{option}: {value!r} is not an IP address or network; write e.g. "
                "'192.0.2.7', '10.0.0.0/8' or '2001:db8::/32'"
            ) from None
        found.append(net)
        # Mapped addresses are matched as IPv4, so a network of them must be one too.
        if isinstance(net, ipaddress.IPv6Network) and net.overlaps(_MAPPED):
            if net.prefixlen >= _MAPPED.prefixlen:
                found[-1] = ipaddress.IPv4Network(
                    (int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96)
                )
            else:  # it holds every mapped address
                found.append(ipaddress.IPv4Network("0.0.0.0/0"))
    return found


def _within(ip: Address, networks: list[Network]) -> bool:
    return any(ip in net for net in networks)


def _address(text: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _peer(scope: Scope) -> Address | None:
    client = scope.get("client")
    if not isinstance(client, tuple | list) or not client or not isinstance(client[0], str):
        return None
    return _address(client[0])


def _hop(text: str) -> Address | None:
    # v4, v4:port, v6, [v6], [v6]:port
    host, port = text, None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if port is not None and not _PORT.fullmatch(port):
        return None
    return _address(host)


def _forwarded_hops(line: str) -> list[str | None]:
    """The ``for=`` value of each element of one ``Forwarded`` line; None for one unreadable.

    Whatever follows a syntax error cannot be read either: it ends the list with None.
    """
    hops: list[str | None] = []
    fors: list[str] = []
    pairs, pos = 0, 0
    while True:
        match = _PAIR.match(line, pos)
        if match is None:
            hops.append(None)
            return hops
        name, value, separator = match.groups()
        if name is not None:
            pairs += 1
            if name.lower() == "for":
                quoted = value.startswith('"')
                fors.append(_QUOTED_PAIR.sub(r"\1", value[1:-1]) if quoted else value)
        if separator != ";":  # the element ends; an empty one (no pairs) is skipped
            if pairs:
                hops.append(fors[0] if len(fors) == 1 else None)
            fors, pairs = [], 0
            if not separator:
                return hops
        pos = match.end()


def _lines(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope.get("headers", ()) if key.lower() == name]


def _cookies(scope: Scope, name: bytes) -> Iterator[bytes]:
    for line in _lines(scope, b"cookie"):
        for part in line.split(b";"):
            key, equals, value = part.strip().partition(b"=")
            if equals and key.rstrip() == name:
                yield value.lstrip()
