"""The frozen ``tenancy`` config section (SPEC §7, Appendix A). No gateway imports here:
``gateway.config_model`` imports this module, so it must not import the config package back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_SUPPORT_TENANT = "shopino-support"  # Appendix C

# SPEC §7: always removed from client requests, whatever ``tenancy.strip_headers`` says.
BUILTIN_STRIP_HEADERS = ("X-Tenant-ID", "X-User-ID", "X-User-Roles", "X-Gateway-Context")


class HeaderNameSet(frozenset[str]):
    """Lower-case header names, matched with ``_`` and ``-`` treated alike.

    SECURITY: CGI/WSGI servers (and PHP, Rack, many frameworks) map both ``X-Tenant-ID`` and
    ``X_Tenant_ID`` to ``HTTP_X_TENANT_ID``; forwarding the underscore spelling would let a
    client smuggle an identity header past the strip set (cf. oauth2-proxy GHSA-vjrc-mh2v-45x6).
    """

    __slots__ = ()

    def __new__(cls, names: Iterable[str] = ()) -> HeaderNameSet:
        return super().__new__(cls, (_fold(n) for n in names))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and frozenset.__contains__(self, _fold(name))


def _fold(name: str) -> str:
    return name.lower().replace("_", "-")


@dataclass(frozen=True)
class SupportConfig:
    """``tenancy.support`` (Appendix C): the only identities the ``support`` role counts on."""

    tenant: str = DEFAULT_SUPPORT_TENANT
    issuers: tuple[str, ...] = ()  # resolved at load: unset means the first of auth.issuers


@dataclass(frozen=True)
class TenancyConfig:
    claim: str = "tid"  # the token claim holding the user's tenant
    strip_headers: tuple[str, ...] = BUILTIN_STRIP_HEADERS
    support: SupportConfig = field(default_factory=SupportConfig)

    def strip_set(self) -> frozenset[str]:
        """Lower-case names of every client header the gateway drops (built-ins included);
        membership ignores ``_`` versus ``-`` (see ``HeaderNameSet``)."""
        return HeaderNameSet((*BUILTIN_STRIP_HEADERS, *self.strip_headers))
