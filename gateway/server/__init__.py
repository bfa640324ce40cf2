"""Entry point: the gateway process (``run``): one process or N workers, listeners, TLS, reload
and graceful drain (SPEC §2, §14, §15)."""
