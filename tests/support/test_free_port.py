"""free_port() never hands out one port twice in a row, even when the kernel offers it again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.support import gateway_proc
from tests.support.gateway_proc import free_port


def test_a_port_the_kernel_offers_twice_is_handed_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = iter([40001, 40001, 40003])  # what bind(0) gave, back to back, once (8 in 100,000)

    class Socket:
        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            self.port = next(offered)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(gateway_proc, "socket", SimpleNamespace(socket=Socket))
    assert [free_port(), free_port()] == [40001, 40003]


def test_real_ports_are_distinct_and_bindable() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
