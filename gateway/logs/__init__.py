"""Logging: the structlog setup, the access log, the per-request log fields and flood-proof
refusal lines (SPEC §11). Redaction itself is its own package (``gateway.redaction``)."""
