"""The Host check's memo of valid values: bounded whatever a client sends, and never a way
around the check itself."""

from __future__ import annotations

import types

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import BadRequest
from gateway.middleware import route
from gateway.middleware.route import VALID_HOSTS_MAX, checked_host


def _request(*hosts: str) -> types.SimpleNamespace:
    headers = CIMultiDictProxy(CIMultiDict([("Host", host) for host in hosts]))
    return types.SimpleNamespace(headers=headers, version=(1, 1))


def test_valid_hosts_are_remembered_and_the_memo_stays_bounded() -> None:
    for n in range(3 * VALID_HOSTS_MAX):
        host = f"h{n}.example:{n % 65536}"
        assert checked_host(_request(host)) == host  # type: ignore[arg-type]
        assert len(route._VALID_HOSTS) <= VALID_HOSTS_MAX
    assert "api.example" not in route._VALID_HOSTS
    assert checked_host(_request("api.example")) == "api.example"  # type: ignore[arg-type]
    assert "api.example" in route._VALID_HOSTS


@pytest.mark.parametrize("bad", ['a"b', "a b", "a\tb", "host:1:2", "x" * 254, "[::1]x", "é.example"])
def test_invalid_hosts_are_refused_every_time_and_never_remembered(bad: str) -> None:
    checked_host(_request("api.example"))  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(BadRequest):
            checked_host(_request(bad))  # type: ignore[arg-type]
    assert bad not in route._VALID_HOSTS


def test_a_remembered_host_twice_is_still_refused() -> None:
    checked_host(_request("api.example"))  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        checked_host(_request("api.example", "api.example"))  # type: ignore[arg-type]
