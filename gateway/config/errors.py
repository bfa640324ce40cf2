"""``ConfigError``: the one error a config load raises, carrying every problem found."""

from __future__ import annotations


class ConfigError(Exception):
    """Every problem of one config file; ``str()`` is one ``key.path: message`` per line."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))
