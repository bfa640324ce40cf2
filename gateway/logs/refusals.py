"""Flood-proof access logging of refusals (issue 13 "cheap refusals").

A flood of refusals from one client (429s over a ``pre_auth`` limit, 401s of a token sprayer)
would otherwise cost one formatted, redacted access line each: more than the refusal itself
once it is answered from memory. Per second and per (problem type, client IP), the first
``full_lines`` refusals are logged as ordinary access lines; the rest of that second are only
counted, and one ``access_refusals`` line per key gives their exact number once the second
has ended. Metrics still count every refusal (``shopino_gateway_errors_total``), and audit
records are never sampled: this only thins the access log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FULL_LINES_PER_SECOND = 10


@dataclass(slots=True)
class _Window:
    status: int
    route: str | None
    logged: int = 0
    suppressed: int = 0


@dataclass(slots=True)
class RefusalAggregator:
    full_lines: int = FULL_LINES_PER_SECOND
    _second: int = -1
    _windows: dict[tuple[str, str], _Window] = field(default_factory=dict)
    _finished: list[dict[str, object]] = field(default_factory=list)

    def admit(self, second: int, slug: str, client: str, status: int, route: str | None) -> bool:
        """True: this refusal gets its full access line; False: it was counted for a summary."""
        if second != self._second:
            self._finish_window()
            self._second = second
        window = self._windows.get((slug, client))
        if window is None:
            window = self._windows[(slug, client)] = _Window(status, route)
        if window.logged < self.full_lines:
            window.logged += 1
            return True
        window.suppressed += 1
        return False

    def take_summaries(self, second: int | None = None) -> list[dict[str, object]]:
        """The summaries of every second before ``second`` (all of them when None), once each."""
        if second is None or self._second < second:
            self._finish_window()
            if second is not None:
                self._second = second
        lines, self._finished = self._finished, []
        return lines

    def _finish_window(self) -> None:
        for (slug, client), window in self._windows.items():
            if window.suppressed:
                self._finished.append(
                    {
                        "event": "access_refusals",
                        "reason": slug,
                        "status": window.status,
                        "route": window.route,
                        "client_ip": client,
                        "count": window.suppressed,
                        "second": self._second,
                    }
                )
        self._windows.clear()
