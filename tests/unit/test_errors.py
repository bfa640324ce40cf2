"""SPEC §13 and Appendix B "Problem types": one error family (rendered by gateway.http.problem,
tests/unit/http/test_problem.py)."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.errors import GatewayError, Isolated

# SPEC Appendix B "Problem types", verbatim: slug → status.
SPEC_PROBLEM_TYPES = {
    "bad-request": 400,
    "missing-token": 401,
    "invalid-token": 401,
    "mfa-required": 401,
    "forbidden": 403,
    "tenant-mismatch": 403,
    "not-found": 404,
    "method-not-allowed": 405,
    "request-timeout": 408,  # Appendix C: listen.limits.body_timeout
    "conflict": 409,
    "payload-too-large": 413,
    "headers-too-large": 431,
    "rate-limited": 429,
    "locked-out": 429,
    "tenant-leak-blocked": 502,
    "upstream-unavailable": 502,
    "isolated": 503,
    "not-ready": 503,
    "store-unavailable": 503,
    "upstream-timeout": 504,
    "internal": 500,
    "not-implemented": 501,  # App. C transfer codings: extends App. B's list
    "mfa-enrolment-frozen": 503,  # App. C store reset: MFA enrolment frozen (extends App. B)
}

# The class raised for each problem type.
CLASSES = {
    "BadRequest": "bad-request",
    "MissingToken": "missing-token",
    "InvalidToken": "invalid-token",
    "MfaRequired": "mfa-required",
    "Forbidden": "forbidden",
    "TenantMismatch": "tenant-mismatch",
    "NotFound": "not-found",
    "MethodNotAllowed": "method-not-allowed",
    "RequestTimeout": "request-timeout",
    "Conflict": "conflict",
    "PayloadTooLarge": "payload-too-large",
    "HeadersTooLarge": "headers-too-large",
    "RateLimited": "rate-limited",
    "LockedOut": "locked-out",
    "TenantLeakBlocked": "tenant-leak-blocked",
    "UpstreamUnavailable": "upstream-unavailable",
    "Isolated": "isolated",
    "NotReady": "not-ready",
    "StoreUnavailable": "store-unavailable",
    "UpstreamTimeout": "upstream-timeout",
    "InternalError": "internal",
    "NotImplementedCoding": "not-implemented",
    "MfaEnrolmentFrozen": "mfa-enrolment-frozen",
}


def _module_subclasses() -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = []
    pending = list(GatewayError.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__ == errors.__name__:
            found.append(cls)
    return found


def test_spec_table_has_twenty_three_problem_types() -> None:
    # App. B's twenty, Appendix C's request-timeout, not-implemented and mfa-enrolment-frozen
    # (both extend App. B's list).
    assert len(SPEC_PROBLEM_TYPES) == 23
    assert set(CLASSES.values()) == set(SPEC_PROBLEM_TYPES)


@pytest.mark.parametrize(("class_name", "slug"), sorted(CLASSES.items()))
def test_error_class_has_spec_status_and_slug(class_name: str, slug: str) -> None:
    cls = getattr(errors, class_name)
    assert issubclass(cls, GatewayError)
    assert cls.slug == slug
    assert cls.status == SPEC_PROBLEM_TYPES[slug]
    assert cls.title and cls.title.strip() == cls.title


def test_every_subclass_uses_a_spec_problem_type() -> None:
    subclasses = _module_subclasses()
    assert {cls.slug for cls in subclasses} == set(SPEC_PROBLEM_TYPES)
    for cls in subclasses:
        assert SPEC_PROBLEM_TYPES[cls.slug] == cls.status, cls.__name__
    # No two classes share one slug (the slug is the client's stable identifier).
    assert len({cls.slug for cls in subclasses}) == len(subclasses)


def test_base_class_is_an_internal_error() -> None:
    assert (GatewayError.status, GatewayError.slug) == (500, "internal")


def test_detail_defaults_to_title() -> None:
    error = Isolated()
    assert error.detail == "Isolated by an incident response switch"
    assert str(error) == error.detail
    assert Isolated("Finance is isolated").detail == "Finance is isolated"


def test_error_copies_its_mappings() -> None:
    ext = {"incident": "INC-1"}
    hdrs = {"Retry-After": "5"}
    error = Isolated(extensions=ext, headers=hdrs)
    ext["incident"] = "changed"
    hdrs["Retry-After"] = "999"
    assert error.extensions == {"incident": "INC-1"}
    assert error.headers == {"Retry-After": "5"}
