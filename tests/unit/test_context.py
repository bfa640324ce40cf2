"""Request ids (SPEC §3 step 1): a client id is kept only when harmless; otherwise a fresh UUID."""

from __future__ import annotations

import os
import types
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.context import new_request_id, request_id_for


def test_new_request_ids_are_random_version_4_uuids_in_canonical_form() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lower-case hex, 8-4-4-4-12
    # Every variant nibble occurs: the two variant bits are set, the other two stay random.
    assert {text[19] for text in ids} == set("89ab")


def test_a_forked_worker_does_not_repeat_the_parents_ids() -> None:
    # Ids come from a pool of random bytes: a child that inherited the pool unchanged would hand
    # out exactly the ids its parent (or its sibling worker) hands out next.
    new_request_id()  # the pool is filled, with ids left in it
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        os.write(write_end, ",".join(new_request_id() for _ in range(4)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_ids = pipe.read().decode().split(",")
    os.waitpid(pid, 0)
    parent_ids = [new_request_id() for _ in range(4)]
    assert len(child_ids) == 4
    assert not set(child_ids) & set(parent_ids)


@pytest.mark.parametrize("incoming", ["req-1", "a.b_c~d:e-f", "x" * 64])
def test_a_harmless_client_id_is_kept(incoming: str) -> None:
    assert request_id_for(incoming) == incoming


@pytest.mark.parametrize("incoming", [None, "", "x" * 65, "a b", "id\n", "<script>", "ünï"])
def test_anything_else_gets_a_fresh_uuid(incoming: str | None) -> None:
    assert uuid.UUID(request_id_for(incoming)).version == 4


def test_a_batch_of_ids_is_the_random_digits_in_uuid_form() -> None:
    # The batch is written column by column; each id must still be exactly its own 32 random
    # digits with the version digit (4) and the variant digit (89ab from digit 16) in place.
    from gateway.context import _request_ids

    digits = os.urandom(16 * 256).hex()
    ids = _request_ids(digits)
    assert len(ids) == 256
    for n, text in enumerate(ids):
        h = digits[32 * n : 32 * n + 32]
        variant = "89ab"[int(h[16], 16) & 3]
        assert text == f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def test_a_new_context_holds_every_fields_declared_default() -> None:
    """``RequestContext.__init__`` is written by hand (positional, no keyword parsing): every
    field it does not take must start at its declared default, each context with its own dict."""
    from dataclasses import MISSING, fields

    from gateway.context import RequestContext

    taken = {"request", "runtime", "request_id", "client_ip", "peer_ip", "peer_trusted", "started"}
    args = (object(), object(), "rid", "10.0.0.1", "10.0.0.2", True)
    ctx, other = RequestContext(*args), RequestContext(*args)  # type: ignore[arg-type]
    assert (ctx.request, ctx.runtime) == args[:2] and ctx.peer_trusted is True
    assert (ctx.request_id, ctx.client_ip, ctx.peer_ip) == ("rid", "10.0.0.1", "10.0.0.2")
    assert isinstance(ctx.started, float)
    for spec in fields(RequestContext):
        if spec.name in taken:
            continue
        default = spec.default_factory() if spec.default is MISSING else spec.default  # type: ignore[misc]
        assert getattr(ctx, spec.name) == default, spec.name
    assert ctx.response_headers is not other.response_headers
    headers: dict[str, str] = {"X-Request-ID": "rid"}
    trace = ("t", "s", "p", None, None)
    given = RequestContext(*args, headers, trace, None)  # type: ignore[arg-type]
    assert given.response_headers is headers and given.trace == trace and given.token_memo is None


_EXAMPLES = 50 if os.environ.get("CI") == "true" else 300


@settings(max_examples=_EXAMPLES, deadline=None)
@given(incoming=st.none() | st.text(max_size=70) | st.from_regex(r"[A-Za-z0-9._~:-]{1,66}", fullmatch=True))
def test_a_new_context_decides_its_request_id_as_request_id_for(incoming: str | None) -> None:
    """``new_context`` takes the request id inline (no ``request_id_for`` call per request): a
    client id kept by one is kept by the other, anything else gets a fresh version 4 UUID, and the
    answer's own headers start with it, then the identity headers."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from gateway.app import new_context
    from gateway.http.answer_headers import IDENTITY_BY_TLS
    from gateway.upstream.forwarding import TrustedProxies

    headers = CIMultiDict() if incoming is None else CIMultiDict({"X-Request-ID": incoming})
    request = types.SimpleNamespace(headers=CIMultiDictProxy(headers), remote="10.0.0.1")
    for tls in (False, True):
        runtime = types.SimpleNamespace(trusted_proxies=TrustedProxies([]), tls=tls)
        ctx = new_context(request, runtime, None)  # type: ignore[arg-type]
        if request_id_for(incoming) == incoming:
            assert ctx.request_id == incoming
        else:
            assert uuid.UUID(ctx.request_id).version == 4 and str(uuid.UUID(ctx.request_id)) == ctx.request_id
        assert list(ctx.response_headers.items()) == [
            ("X-Request-ID", ctx.request_id),
            *IDENTITY_BY_TLS[tls].items(),
        ]
