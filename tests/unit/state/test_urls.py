"""open_store URL handling: scheme dispatch, Redis URL options, masking of secrets."""

from __future__ import annotations

import pytest

from gateway.state import open_store
from gateway.state.redis_url import parse_redis_url

SECRET = "p@ss:w/rd"
QUOTED = "p%40ss%3Aw%2Frd"


@pytest.mark.parametrize(
    "url", ["", "memory://", "http://x", "redis:/nohost", "postgres://u:pw@h/db", "pw-only"]
)
def test_unsupported_urls_are_value_errors(url: str) -> None:
    with pytest.raises(ValueError, match=r"state\.url") as info:
        open_store(url)
    assert "pw" not in str(info.value)


def test_local_forms() -> None:
    assert open_store("local:./var/state").describe() == "local:var/state"
    assert open_store("local:///srv/state").describe() == "local:/srv/state"
    with pytest.raises(ValueError):
        open_store("local:")


def test_redis_url_password_is_decoded_and_masked() -> None:
    target = parse_redis_url(f"redis://user:{QUOTED}@10.0.0.5:6380/3?socket_timeout=0.25")
    assert target.hosts == ((("10.0.0.5", 6380)),)
    assert (target.username, target.password, target.db) == ("user", SECRET, 3)
    assert target.options["socket_timeout"] == 0.25
    assert target.options["socket_connect_timeout"] == 1.0  # the short default
    assert target.display == "redis://user:***@10.0.0.5:6380/3?socket_timeout=0.25"
    assert SECRET not in repr(target) and QUOTED not in repr(target)
    store = open_store(f"redis://:{QUOTED}@h/0")
    assert QUOTED not in repr(store) and store.describe() == "redis://:***@h/0"


def test_rediss_options() -> None:
    target = parse_redis_url(
        "rediss://h:6390?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required&ssl_check_hostname=no"
    )
    assert target.options["ssl"] is True
    assert target.options["ssl_ca_certs"] == "/etc/ca.pem"
    assert target.options["ssl_check_hostname"] is False
    with pytest.raises(ValueError, match="ssl_ca_certs"):
        parse_redis_url("redis://h?ssl_ca_certs=/etc/ca.pem")  # TLS options need rediss://


def test_sentinel_url() -> None:
    target = parse_redis_url(
        f"redis+sentinel://:{QUOTED}@s1:26379,[::1]:26380,s3/mymaster/2?sentinel_password=sentinel-secret"
    )
    assert target.hosts == (("s1", 26379), ("::1", 26380), ("s3", 6379))
    assert (target.service, target.db, target.password) == ("mymaster", 2, SECRET)
    assert target.sentinel_password == "sentinel-secret"
    assert "sentinel-secret" not in target.display and SECRET not in target.display
    with pytest.raises(ValueError, match="service_name"):
        parse_redis_url("redis+sentinel://s1:26379")


@pytest.mark.parametrize(
    "url",
    [
        "redis://h?socket_timeout=0",
        "redis://h?socket_timeout=nan",
        "redis://h?socket_timeout=soon",
        "redis://h?bogus=1",
        "redis://h?max_connections=0",
        "redis://h:99999",
        "redis://h/notadb",
        "redis://a:1,b:2/0",
    ],
)
def test_bad_redis_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_redis_url(url)
