"""A cursor over raw YAML data that records every problem as ``key.path: message``.

Section builders read fields through a ``Node``; a bad field is reported and replaced by its
default so that validation continues and the operator sees *all* errors at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config.values import interpolate_env, parse_duration, parse_size

T = TypeVar("T")
D = TypeVar("D")  # a default may be of another type than the parsed value, e.g. None
_MISSING: Any = object()

#: Where the gateway listens is not a secret (``ss -ltn`` shows it, every client connects to it),
#: but it is what deployments set through the environment (a container's port, the demo's free
#: ports). A value from ``${ENV}`` at these paths is therefore printed as it is; the output
#: fields each path fills are listed so ``effective_config`` can leave exactly those unmasked.
ADDRESS_PATHS: dict[str, tuple[tuple[str, str], ...]] = {
    "listen.host": (("listen", "host"),),
    "listen.port": (("listen", "port"),),
    "admin.listen": (("admin", "host"), ("admin", "port")),
}


@dataclass
class Report:
    """All errors found, plus the paths whose values came from the environment (masked)."""

    errors: list[str] = field(default_factory=list)
    secret_paths: set[str] = field(default_factory=set)
    secret_values: list[str] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path or '<root>'}: {message}")


class Node:
    """One mapping in the config tree. ``done()`` reports keys nobody read as unknown."""

    def __init__(self, data: object, path: str, report: Report) -> None:
        self.path = path
        self.report = report
        self._seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            report.error(path, "expected a mapping")
            data = {}
        self.data: dict[str, Any] = data

    def child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self._seen.add(key)
        if key not in self.data:
            if default is _MISSING:
                self.report.error(self.child_path(key), "is required")
                return None
            return default
        return self._interpolated(self.data[key], self.child_path(key))

    def _interpolated(self, value: Any, path: str) -> Any:
        if isinstance(value, list):
            return [self._interpolated(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            address = path in ADDRESS_PATHS
            try:
                value, replaced = interpolate_env(value, sink=None if address else self.report.secret_values)
            except ValueError as exc:
                self.report.error(path, str(exc))
                return None
            if replaced and not address:
                self.report.secret_paths.add(path)
        return value

    def convert(self, key: str, default: D, parse: Callable[[Any], T]) -> T | D:
        value = self.raw(key, default)
        if value is default or value is None:
            return default
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            self.report.error(self.child_path(key), str(exc))
            return default

    def string(self, key: str, default: Any = _MISSING, *, choices: tuple[str, ...] = ()) -> Any:
        def parse(value: Any) -> str:
            if not isinstance(value, str):
                raise ValueError("expected a string")
            if choices and value not in choices:
                raise ValueError(f"must be one of {', '.join(choices)}")
            return value

        if default is _MISSING:
            # Required: absent, null or not a string is reported, and "" stands in so that the
            # builders (which call .lower(), .startswith()...) never see the sentinel.
            if key not in self.data:
                self.raw(key)
                return ""
            if self.data[key] is None:
                self.report.error(self.child_path(key), "is required")
                self._seen.add(key)
                return ""
            return self.convert(key, "", parse)
        return self.convert(key, default, parse)

    def boolean(self, key: str, default: bool) -> bool:
        def parse(value: Any) -> bool:
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value

        return self.convert(key, default, parse)

    def integer(self, key: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        def parse(value: Any) -> int:
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)  # "${PORT}" arrives as text
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("expected an integer")
            if value < minimum or (maximum is not None and value > maximum):
                bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
                raise ValueError(f"must be {bound}")
            return value

        return self.convert(key, default, parse)

    def duration(self, key: str, default: D) -> float | D:
        return self.convert(key, default, parse_duration)

    def size(self, key: str, default: Any) -> Any:
        return self.convert(key, default, parse_size)

    def string_list(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        def parse(value: Any) -> tuple[str, ...]:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError("expected a list of strings")
            return tuple(value)

        return self.convert(key, default, parse)

    def child(self, key: str) -> Node:
        return Node(self.raw(key, {}), self.child_path(key), self.report)

    def items(self, key: str) -> Iterator[tuple[int, Any, str]]:
        """Elements of a list field with their paths; reports a non-list."""
        value = self.raw(key, [])
        if value is None:
            return
        if not isinstance(value, list):
            self.report.error(self.child_path(key), "expected a list")
            return
        base = self.child_path(key)
        for index, element in enumerate(value):
            yield index, element, f"{base}[{index}]"

    def done(self) -> None:
        for key in self.data:
            if key not in self._seen:
                self.report.error(self.child_path(key), "unknown key")
