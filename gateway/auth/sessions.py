"""When the session behind an open stream ends (SPEC Appendix C, "Streams end with the session").

A request is authenticated once, at its start; a WebSocket or a download can then run for hours.
These two functions say, for the claims (and the support grant) a stream was opened with, when it
must end at the latest and whether it has ended already. ``gateway.killswitch.streams`` applies
them to the streams it tracks: at the deadline by a timer, and on every new revocation or grant
snapshot.

Deadline and ``auth.leeway`` (a choice, documented in the README)
-----------------------------------------------------------------
A stream ends at the token's ``exp`` by the gateway's clock — not at ``exp + leeway``: the
leeway only forgives a little clock skew when a token is *presented*, it does not extend a
session. A stream opened with a token already past its ``exp`` (accepted inside the leeway) ends
when the leeway runs out, ``exp + leeway``, the instant the gateway would refuse that token:
closing it at once would turn the leeway into a refusal of every stream opened in that window.
A stream under a support grant ends at the grant's expiry when that comes first (no leeway).

Claims and grant are typed by what these functions read of them (``gateway.facts``'s views), so
auth does not import tenancy, the package that issues grants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.auth.revocation import RevocationEpochs
    from gateway.facts import ClaimsView, GrantView

REVOKED = "session-revoked"
GRANT_ENDED = "grant-ended"
EXPIRED = "token-expired"


def stream_deadline(claims: ClaimsView, grant: GrantView | None, *, leeway: float, now: float) -> float:
    """Unix time at which a stream opened now with ``claims`` (under ``grant``) must end."""
    end = float(claims.expires_at)
    if end <= now:
        end += leeway  # accepted inside the leeway: ends when the gateway would refuse the token
    if grant is not None and grant.expires_at < end:
        end = grant.expires_at
    return end


def session_end(
    claims: ClaimsView,
    grant: GrantView | None,
    *,
    revocations: RevocationEpochs,
    live_grants: frozenset[str],
    now: float,
) -> str | None:
    """Why the session of a stream has ended (``REVOKED``, ``GRANT_ENDED``), or None while it
    holds. Memory only; the same rules as the request path (authenticate, apply_tenancy)."""
    if revocations.is_revoked(claims.tenant, claims.subject, claims.issued_at):
        return REVOKED
    if grant is None:
        return None
    # SECURITY: a support user's stream in another tenant ends with that tenant's revocation too,
    # and with the grant it acts under: revoked, purged with its tenant, or expired.
    if grant.tenant != claims.tenant and revocations.is_revoked(
        grant.tenant, claims.subject, claims.issued_at
    ):
        return REVOKED
    if grant.id not in live_grants or grant.expires_at <= now:
        return GRANT_ENDED
    return None


__all__ = ["EXPIRED", "GRANT_ENDED", "REVOKED", "session_end", "stream_deadline"]
