"""Lockouts on both state backends: threshold, doubling, cap, success semantics, list/clear."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.audit import AuditTrail
from gateway.ratelimit.limiter import RateLimitBackend
from gateway.ratelimit.lockout import LockoutService
from gateway.ratelimit.model import LoginProtectionConfig
from gateway.state import StateStore, open_store


@pytest.fixture
async def lockouts(store_url: str, tmp_path: Path) -> AsyncIterator[LockoutService]:
    async with open_store(store_url) as store:
        backend = RateLimitBackend(store_url)
        audit = AuditTrail(store, spool_dir=tmp_path / "spool")
        config = LoginProtectionConfig(
            failures_per_ip=4, failures_per_username=2, window=60, base_lockout=10, max_lockout=30
        )
        yield LockoutService(store, audit, backend, config, mode="local", timeout=0.5)
        await backend.close()
        audit.close()


async def test_threshold_doubling_and_cap(lockouts: LockoutService) -> None:
    subjects = lockouts.subjects("198.51.100.7", " Mallory ")
    await lockouts.record_failure(subjects, "r1")
    assert await lockouts.locked_for(subjects) is None
    await lockouts.record_failure(subjects, "r2")  # reaches failures_per_username: locked now
    assert 9 < (await lockouts.locked_for(lockouts.subjects("10.0.0.9", "mallory")) or 0) <= 10
    await lockouts.record_failure(subjects, "r3")
    assert 19 < (await lockouts.locked_for(subjects) or 0) <= 20  # doubled
    await lockouts.record_failure(subjects, "r4")  # the IP reaches its threshold too
    await lockouts.record_failure(subjects, "r5")
    listing = await lockouts.list()
    by_kind = {entry["kind"]: entry for entry in listing}
    assert (
        by_kind["user"]["level"] == 4 and by_kind["user"]["until"] - by_kind["user"]["since"] == 30
    )  # capped
    assert by_kind["ip"]["subject"] == "198.51.100.7" and by_kind["ip"]["level"] == 2
    assert "mallory" not in str(listing)


async def test_success_resets_the_username_but_never_the_ip(lockouts: LockoutService) -> None:
    subjects = lockouts.subjects("198.51.100.8", "carol")
    for _ in range(3):
        await lockouts.record_failure(lockouts.subjects("198.51.100.8", None), "r")
    await lockouts.record_failure(subjects, "r")  # 4th IP failure, 1st for carol
    assert await lockouts.locked_for(lockouts.subjects("198.51.100.8", None)) is not None
    await lockouts.record_success(subjects)
    assert await lockouts.locked_for(lockouts.subjects("198.51.100.8", None)) is not None
    other_ip = lockouts.subjects("203.0.113.1", "carol")
    await lockouts.record_failure(other_ip, "r")  # carol's counter restarted at 0 after the success
    assert await lockouts.locked_for(other_ip) is None


@pytest.mark.parametrize(
    ("method", "resets"), [("GET", False), ("HEAD", False), ("OPTIONS", False), ("POST", True)]
)
async def test_only_a_login_attempt_can_reset_a_username(
    lockouts: LockoutService, method: str, resets: bool
) -> None:
    await lockouts.record_failure(lockouts.subjects("198.51.100.9", "dave"), "r")  # 1 of 2 for dave
    await lockouts.record_outcome(lockouts.subjects("198.51.100.9", "dave"), 200, method, "r")
    await lockouts.record_failure(lockouts.subjects("203.0.113.2", "dave"), "r")  # 2 of 2, unless reset
    assert (await lockouts.locked_for(lockouts.subjects("203.0.113.3", "dave")) is None) == resets


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_login_counts_as_a_failure(lockouts: LockoutService, status: int) -> None:
    subjects = lockouts.subjects("198.51.100.10", "erin")
    await lockouts.record_outcome(subjects, status, "POST", "r1")
    assert await lockouts.locked_for(subjects) is None
    await lockouts.record_outcome(subjects, status, "POST", "r2")
    assert await lockouts.locked_for(subjects) is not None


@pytest.mark.parametrize("status", [100, 404, 429, 500, 502])
async def test_other_answers_neither_count_nor_reset(lockouts: LockoutService, status: int) -> None:
    subjects = lockouts.subjects("198.51.100.11", "frank")
    await lockouts.record_failure(subjects, "r")
    await lockouts.record_outcome(subjects, status, "POST", "r")
    assert await lockouts.locked_for(subjects) is None  # not a second failure
    await lockouts.record_failure(subjects, "r")  # not reset either: this is the second
    assert await lockouts.locked_for(subjects) is not None


async def test_clear_forgets_lock_failures_and_level(lockouts: LockoutService) -> None:
    subjects = lockouts.subjects("198.51.100.9", "dave")
    for _ in range(3):
        await lockouts.record_failure(subjects, "r")
    user = subjects[1]
    assert await lockouts.clear(user) is True
    assert await lockouts.clear(user) is False
    assert await lockouts.locked_for([user]) is None
    await lockouts.record_failure([user], "r")
    await lockouts.record_failure([user], "r")
    assert 9 < (await lockouts.locked_for([user]) or 0) <= 10  # level forgotten: base again


async def test_store_keys_hold_no_clear_username(lockouts: LockoutService, store_url: str) -> None:
    await lockouts.record_failure(lockouts.subjects("198.51.100.10", "Eve.Secret"), "r")
    store: StateStore = lockouts._store
    assert all("eve" not in key.lower() for key in await store.keys("rl:"))


async def test_known_lockouts_hold_while_the_store_is_down(redis_server, tmp_path: Path) -> None:
    """SECURITY (review finding): with on_store_failure local/allow, a Redis outage must not
    unlock a credential-stuffing source this process already knows to be locked."""
    url = redis_server.url
    async with open_store(url) as store:
        backend = RateLimitBackend(url)
        audit = AuditTrail(store, spool_dir=tmp_path / "spool")
        config = LoginProtectionConfig(
            failures_per_ip=50, failures_per_username=2, window=60, base_lockout=30, max_lockout=60
        )
        service = LockoutService(store, audit, backend, config, mode="local", timeout=0.3)
        try:
            attacker = service.subjects("198.51.100.7", "victim")
            for request_id in ("r1", "r2"):
                await service.record_failure(attacker, request_id)
            assert (await service.locked_for(attacker) or 0) > 25
            redis_server.stop()
            assert (await service.locked_for(service.subjects("203.0.113.1", "Victim")) or 0) > 25
            assert await service.locked_for(service.subjects("203.0.113.1", "someone-else")) is None
        finally:
            await backend.close()
            audit.close()


async def test_the_bounded_listing_caps_the_store_reads_and_says_so(lockouts: LockoutService) -> None:
    for i in range(5):  # failures_per_username is 2: five users locked
        subjects = lockouts.subjects(f"198.51.100.{20 + i}", f"user{i}")
        await lockouts.record_failure(subjects, "r")
        await lockouts.record_failure(subjects, "r")
    everything = await lockouts.list()
    assert len([e for e in everything if e["kind"] == "user"]) == 5
    first, truncated = await lockouts.list_bounded(3)
    assert len(first) == 3 and truncated is True
    subjects = {(e["kind"], e["subject"]) for e in everything}
    assert {(e["kind"], e["subject"]) for e in first} < subjects  # the same records, only fewer
    listed, truncated = await lockouts.list_bounded(len(everything))
    assert {(e["kind"], e["subject"]) for e in listed} == subjects and truncated is False


async def test_an_attempt_counts_its_ip_and_a_string_username_only(lockouts: LockoutService) -> None:
    ip_only = lockouts.subjects("198.51.100.9", None)
    assert lockouts.attempt_subjects("198.51.100.9", None) == ip_only
    assert lockouts.attempt_subjects("198.51.100.9", {"username": 42}) == ip_only  # no username
    assert lockouts.attempt_subjects("198.51.100.9", {"user": "dave"}) == ip_only  # another field
    assert lockouts.attempt_subjects("198.51.100.9", {"username": " Dave "}) == lockouts.subjects(
        "198.51.100.9", "dave"
    )
