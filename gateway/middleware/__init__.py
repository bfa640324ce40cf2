"""Pipeline stages: thin adapters, one per file, ordered in ``gateway.pipeline.PIPELINE``."""
