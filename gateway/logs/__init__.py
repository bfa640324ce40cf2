"""Logging: the structlog setup, the access log, the per-request log fields, flood-proof refusal
lines (SPEC §11) and the access records of ``audit: true`` routes (``access_audit``). Redaction
itself is its own package (``gateway.redaction``)."""
