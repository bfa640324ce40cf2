"""Authentication metrics (prometheus; summed over workers like gateway.metrics).

The refusal counter lives here, below every module that counts a refused token (the
authentication stage, tenancy, the admin listener), so counting one does not import the
per-request aggregator in ``gateway.metrics`` (which holds it too, as ``auth_failures``).
"""

from __future__ import annotations

from prometheus_client import Counter

AUTH_FAILURES = Counter("shopino_gateway_auth_failures", "Refused authentications, by reason", ("reason",))
