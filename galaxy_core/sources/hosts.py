"""Which hosts a fetch on someone else's behalf (the app, shown to visitors) may reach.

The command line fetches whatever its own user asks for; the app must not become a way for a
visitor to read the server's own network (``http://127.0.0.1:8501/...``, a cloud metadata
address, a printer on the LAN). ``HostPolicy`` allows only listed host names, resolves each one
and refuses loopback, private, link-local and other non-public addresses unless an address or
network is itself listed. ``fetch.get`` checks it again for every redirect.

Configured with ``GALAXY_ALLOWED_HOSTS``: a comma-separated list of host names (``.example.org``
also allows its subdomains), IP addresses or networks (``10.0.0.0/8``), replacing the default
list; ``+name`` entries add to it instead.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from galaxy_core.base.config import DEFAULT_CATALOGUE_URL, DEFAULT_CUTOUT_URL
from galaxy_core.base.fields import clip
from galaxy_core.sources.fetch import Address, FetchError, split_url

ENV_NAME = "GALAXY_ALLOWED_HOSTS"
DEFAULT_HOSTS = (
    urlsplit(DEFAULT_CUTOUT_URL).hostname, "skyserver.sdss.org", "skyservice.pha.jhu.edu",
    urlsplit(DEFAULT_CATALOGUE_URL).hostname, "data.galaxyzoo.org",
)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HostNotAllowed(FetchError):
    """The URL's host is not one this app may fetch from."""


def _resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise HostNotAllowed(f"host {clip(host, 100)} cannot be resolved") from None
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


def _public(address: Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class HostPolicy:
    """Allowed host names plus the non-public networks explicitly let through."""

    hosts: tuple[str, ...] = tuple(dict.fromkeys(h for h in DEFAULT_HOSTS if h))
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> HostPolicy:
        """From the ``GALAXY_ALLOWED_HOSTS`` syntax; empty or unset gives the defaults."""
        entries = [e.strip().lower() for e in (text or "").split(",") if e.strip()]
        if not entries:
            return cls()
        base = cls().hosts if all(e.startswith("+") for e in entries) else ()
        hosts, networks = list(base), []
        for entry in (e.lstrip("+") for e in entries):
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                pass
            hosts.append(entry.strip("[]"))
        return cls(tuple(dict.fromkeys(hosts)), tuple(networks))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> HostPolicy:
        return cls.parse(environ.get(ENV_NAME))

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for entry in self.hosts:
            if host == entry.lstrip(".") or (entry.startswith(".") and host.endswith(entry)):
                return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self.networks)

    def check(self, url: str, *, resolve: bool = True) -> None:
        """Raise HostNotAllowed unless ``url`` is http(s) to an allowed host at allowed addresses
        (``resolve=False``: the name only, for a form to check before any network is used).

        The URL is read as the HTTP client reads it (``fetch.split_url``): one that parsers could
        read differently is refused. The message names the host, never what answers there.
        """
        try:
            _, host, port = split_url(url)
        except FetchError as exc:
            raise HostNotAllowed(str(exc)) from None
        self._check_name(host)
        if resolve:
            self.addresses(host, port)

    def _check_name(self, host: str) -> None:
        if not self.host_allowed(host):
            raise HostNotAllowed(f"this app does not fetch from {clip(host, 100)}: allowed hosts are "
                                 f"{', '.join(self.hosts)} (set {ENV_NAME} to change the list)")

    def addresses(self, host: str, port: int) -> list[Address]:
        """Every address ``host`` resolves to, each one checked: the connection is opened to one
        of these (``fetch`` pins it), so a later lookup's different answer is never used."""
        self._check_name(host)
        found = _resolve(host, port)
        for address in found:
            if not _public(address) and not any(address in net for net in self.networks):
                raise HostNotAllowed(f"this app does not fetch from {clip(host, 100)}: it is a loopback, private "
                                     f"or link-local address (list the address in {ENV_NAME} to allow it)")
        return found
