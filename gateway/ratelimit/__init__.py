"""Rate limiting and credential-stuffing defence (SPEC §8).

``model`` (config objects), ``schema`` (their builder), ``keys`` (what a rule counts),
``policies`` (config → compiled items, once per runtime), ``limiter`` (storages, strategies,
failure mode, circuit breaker; once per process), ``lockout`` (login failures and lockouts in
the state store), ``headers`` (RateLimit-Policy / RateLimit). Kept import-light on purpose:
``gateway.config_model`` imports ``gateway.ratelimit.model``.
"""
