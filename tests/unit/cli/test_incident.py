"""``incident contain`` turns its flags into the right admin calls, in the right order."""

from __future__ import annotations

import pytest

from gateway.cli.commands import build_parser
from gateway.cli.incident import plan


def _plan(*argv: str) -> list[tuple[str, str, dict[str, object]]]:
    args = build_parser().parse_args(["incident", "contain", "--incident", "INC-1", *argv])
    return [(s.action, s.path, s.body) for s in plan(args)]


def test_tenant_alone_isolates_it_then_revokes_then_rotates() -> None:
    steps = _plan("--tenant", "acme", "--revoke-sessions", "--rotate-keys")
    assert [s[0] for s in steps] == ["killswitch", "sessions", "keys"]
    assert steps[0][2] == {
        "scope": "tenant",
        "target": "acme",
        "mode": "block",
        "reason": "incident INC-1",
        "incident": "INC-1",
    }
    assert steps[1][2] == {"tenant": "acme", "incident": "INC-1"}
    assert steps[2][2] == {"revoke_old": True, "incident": "INC-1"}


def test_explicit_scope_wins_over_tenant_and_no_switch_skips_it() -> None:
    steps = _plan("--scope", "module", "--target", "finance", "--tenant", "acme", "--mode", "read-only")
    assert steps == [
        (
            "killswitch",
            "/admin/killswitch",
            {
                "scope": "module",
                "target": "finance",
                "mode": "read-only",
                "reason": "incident INC-1",
                "incident": "INC-1",
            },
        )
    ]
    assert [s[0] for s in _plan("--tenant", "acme", "--no-switch", "--revoke-sessions")] == ["sessions"]


def test_global_switch_needs_no_target_and_passes_ttl_and_reason() -> None:
    ((_, _, body),) = _plan("--scope", "global", "--ttl", "2h", "--reason", "ransomware")
    assert body == {
        "scope": "global",
        "mode": "block",
        "reason": "ransomware",
        "incident": "INC-1",
        "ttl": "2h",
    }


@pytest.mark.parametrize(
    "argv",
    [
        ("--revoke-sessions",),
        ("--scope", "module"),
        ("--target", "finance"),
        ("--tenant", "acme", "--no-switch"),
        (),
    ],
)
def test_usage_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        _plan(*argv)
