"""Log redaction (SPEC §11): the structlog processor (``processor``) and the tables it applies
(``patterns``: masked keys, PII and secret patterns, their validators)."""
