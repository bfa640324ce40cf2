"""The frozen ``tenancy`` config section (SPEC §7, Appendix A). No gateway imports here:
``gateway.config.model`` imports this module, so it must not import the config package back."""

from __future__ import annotations

from dataclasses import dataclass

# SPEC §7: always removed from client requests, whatever ``tenancy.strip_headers`` says.
BUILTIN_STRIP_HEADERS = ("X-Tenant-ID", "X-User-ID", "X-User-Roles", "X-Gateway-Context")


@dataclass(frozen=True)
class TenancyConfig:
    claim: str = "tid"  # the token claim holding the user's tenant
    strip_headers: tuple[str, ...] = BUILTIN_STRIP_HEADERS

    def strip_set(self) -> frozenset[str]:
        """Lower-case names of every client header the gateway drops (built-ins included)."""
        return frozenset(h.lower() for h in (*BUILTIN_STRIP_HEADERS, *self.strip_headers))
