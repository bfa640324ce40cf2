"""Config → compiled rate-limit items, built once per runtime and only applied per request.

A rule ``{key: user, limit: "50/second;2000/minute"}`` becomes two ``LimitItem``s sharing a
key spec. Each item's store identity holds its strategy and a rule identity, so a reload that
changes a rule's strategy (a list in Redis for moving-window, a counter for fixed-window)
starts new keys instead of colliding with the old ones (WRONGTYPE errors, or a fixed window
reading a moving window's list).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from limits import RateLimitItem, parse_many

from gateway.bounded_memo import remember
from gateway.config.model import RouteConfig
from gateway.facts import RequestFacts
from gateway.ratelimit.headers import policy_header, state_head
from gateway.ratelimit.keys import ADDRESS_KIND, IDENTITY_KINDS, KeySpec, ValueHasher
from gateway.ratelimit.model import LoginProtectionConfig, RateLimitRule, RateLimitsConfig, StoreFailureMode
from gateway.ratelimit.script_args import bulk_strings, item_args, key_framing, pack_item


class LimitedConfig(Protocol):
    """What rate limiting reads of the whole config: ``gateway.config_model.GatewayConfig``
    holds this package's section (``rate_limits``), so it sits above and is not imported here."""

    @property
    def rate_limits(self) -> RateLimitsConfig: ...

    @property
    def routes(self) -> tuple[RouteConfig, ...]: ...


PRE_AUTH_POLICY = "pre_auth"
IDENTITY_MEMO_LIMIT = 4096  # (route, identity) pairs remembered: the last moments' users
ADDRESS_MEMO_LIMIT = 4096  # client addresses remembered (address_checks)
# (route name, user, tenant, issuer): what a route's identity-keyed checks are read from
Identity = tuple[str, str | None, str | None, str | None]
SHADOW_STRICTNESS = 1 << 62  # above any quota
_STRATEGY_TAGS = {"moving-window": "mw", "sliding-window-counter": "swc", "fixed-window": "fw"}


@dataclass(frozen=True, slots=True)
class LimitItem:
    policy: str  # the name shown in RateLimit-Policy / RateLimit
    item: RateLimitItem
    key: KeySpec
    methods: frozenset[str] | None
    cost: int
    strategy: str
    prefix: str  # "<strategy tag>.<rule id>": the first identifier of every store key
    quota: int
    window: int  # seconds
    strictness: tuple[int, int]  # (quota, -window): the smallest is the most restrictive
    policy_header: str  # precomputed RateLimit-Policy value
    state_head: str  # the RateLimit value's constant start (headers.state_head)
    # The stage script's per-item arguments (script_args.item_args), as strings built once:
    # a number handed to redis.call is formatted by sprintf inside Redis, a string is not.
    store_args: tuple[str, ...] = ()
    # store_args packed into the script's one argument per item (script_args.pack_item), framed
    # for the wire (script_args.bulk_strings)
    store_resp: bytes = b""
    # ``item.key_for(prefix, value)`` is ``key_head + value + key_tail`` (limits' key grammar),
    # split once here so the stage script's keys cost one concatenation per request.
    key_head: str = ""
    key_tail: str = ""
    # The stage script's key framing (script_args.key_framing): the bytes of the store key
    # before and after the value, and the key's byte length less the value's.
    store_key_head: bytes = b""
    store_key_tail: bytes = b""
    store_key_size: int = 0
    # value → its framed store key (stage_script.StageScript.frame, bounded there): a busy
    # client, user or tenant is framed once, not once per request. Not part of the item's
    # identity (no equality, no hash).
    store_keys: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)
    # ``mode: shadow``: counted exactly like an enforced item (same keys), reported when over,
    # never the reason for a refusal nor the source of RateLimit headers
    shadow: bool = False

    def applies(self, method: str) -> bool:
        return self.methods is None or method in self.methods


@dataclass(frozen=True)
class CompiledLimits:
    pre_auth: tuple[LimitItem, ...]
    by_route: Mapping[str, tuple[LimitItem, ...]]
    # route name → the body fields its items (``body:FIELD``) or login protection count; a
    # route absent here reads no body
    counted_fields: Mapping[str, frozenset[str]]
    login: LoginProtectionConfig
    on_store_failure: StoreFailureMode
    store_timeout: float
    # routes whose pre_auth hit may be sent with the route stage's in one store call: nothing
    # between the two stages there reads a body or writes an audit record (deferred_pre_auth),
    # and the stage script takes every item of both stages (no sliding-window counter), so the
    # pair never needs to be split back into two stages per request
    deferrable: frozenset[str] = frozenset()
    # route name → the index of its most restrictive item in ``by_route`` (the smallest
    # strictness, the first on a tie: ``policies.strictest``), for a request every item
    # of its route applies to (the common case), so no request searches for it
    strictest: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # routes whose items all count identity keys (``keys.IDENTITY_KINDS``) for every method: a
    # request's checks there are those of its identity (``identity_checks``)
    by_identity: frozenset[str] = frozenset()
    # every pre_auth item counts the client's address (``keys.ADDRESS_KIND``) for every method:
    # a request's pre_auth checks are those of its address (``address_checks``)
    pre_auth_by_address: bool = False
    # client address → its pre_auth checks (``address_checks``, bounded there: addresses are the
    # clients'). Not part of the value (no equality, no hash).
    address_memo: dict[str, tuple[tuple[LimitItem, str], ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # route and identity → its checks there (``identity_checks``, bounded there: users and
    # tenants are the tokens'). Not part of the value (no equality, no hash).
    identity_memo: dict[Identity, tuple[tuple[LimitItem, str], ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def empty(self) -> bool:
        return not self.pre_auth and not self.by_route


def counted_checks(
    facts: RequestFacts,
    hasher: ValueHasher,
    items: tuple[LimitItem, ...],
    fields: Mapping[str, Any] | None,
) -> list[tuple[LimitItem, str]]:
    """The items that apply to this request, each with the hashed value it counts (an item
    whose key does not apply, such as ``user`` on an anonymous request, is left out)."""
    method = facts.request.method
    memo = hasher.memo  # a value hashed recently (most of them): one lookup, no call
    checks = []
    # The items of one rule ("50/second;2000/minute") share one key object and sit side by side:
    # its value is read, canonicalised and hashed once, not once per item.
    last_key: object = None
    hashed: str | None = None
    for item in items:
        methods = item.methods  # item.applies(method), inline: once per item and request
        if methods is not None and method not in methods:
            continue
        if item.key is not last_key:
            last_key = item.key
            value = item.key.raw_value(facts, fields)
            if value is None:
                hashed = None
            else:
                hashed = memo.get(value)
                if hashed is None:
                    hashed = hasher(value)
        if hashed is not None:
            checks.append((item, hashed))
    return checks


def identity_checks(
    facts: RequestFacts,
    hasher: ValueHasher,
    route: str,
    items: tuple[LimitItem, ...],
    memo: dict[Identity, tuple[tuple[LimitItem, str], ...]],
) -> Sequence[tuple[LimitItem, str]]:
    """``counted_checks`` on a route whose items all count identity keys for every method
    (``CompiledLimits.by_identity``): their values are read from the user, the acting tenant
    and the token's issuer alone (``keys.IDENTITY_KINDS``), so the checks are remembered per
    route and identity (``memo``: the runtime's ``CompiledLimits.identity_memo``, its items
    hashed by its backend's one hasher). A busy user's are worked out once, not per request."""
    claims = facts.claims
    identity = (route, facts.user, facts.tenant, None if claims is None else claims.issuer)
    checks = memo.get(identity)
    if checks is None:  # shared by the identity's requests: a tuple, never changed
        checks = tuple(counted_checks(facts, hasher, items, None))
        remember(memo, IDENTITY_MEMO_LIMIT, identity, checks)  # identities vary freely
    return checks


def address_checks(
    facts: RequestFacts,
    hasher: ValueHasher,
    items: tuple[LimitItem, ...],
    memo: dict[str, tuple[tuple[LimitItem, str], ...]],
) -> Sequence[tuple[LimitItem, str]]:
    """``counted_checks`` of pre_auth items that all count the client's address for every
    method (``CompiledLimits.pre_auth_by_address``): their values are read from
    ``facts.client_ip`` alone, so the checks are remembered per address (``memo``: the
    runtime's ``CompiledLimits.address_memo``, hashed by its backend's one hasher)."""
    address = facts.client_ip
    checks = memo.get(address)
    if checks is None:  # shared by the address's requests: a tuple, never changed
        checks = tuple(counted_checks(facts, hasher, items, None))
        remember(memo, ADDRESS_MEMO_LIMIT, address, checks)  # SECURITY: addresses vary freely
    return checks


def _rule_id(scope: str, index: int, rule: RateLimitRule) -> str:
    methods = ",".join(sorted(rule.methods)) if rule.methods is not None else "*"
    text = f"{scope}\x00{index}\x00{rule.key}\x00{rule.strategy}\x00{methods}\x00{rule.cost}"
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def compile_rule(scope: str, policy: str, index: int, rule: RateLimitRule) -> list[LimitItem]:
    # The mode is not part of the rule id: turning a watched shadow rule into an enforced one
    # keeps its counts (the same buckets).
    prefix = f"{_STRATEGY_TAGS[rule.strategy]}.{_rule_id(scope, index, rule)}"
    key = KeySpec.parse(rule.key)
    shadow = rule.mode == "shadow"
    items = []
    for parsed in parse_many(rule.limit):
        window = int(parsed.get_expiry())
        store_args = item_args(rule.strategy, parsed.amount, window, rule.cost, shadow)
        key_head = f"{parsed.namespace}/{prefix}/"
        key_tail = f"/{parsed.amount}/{parsed.multiples}/{parsed.GRANULARITY.name}"
        store_key_head, store_key_tail, store_key_size = key_framing(key_head, key_tail)
        items.append(
            LimitItem(
                policy=policy,
                item=parsed,
                key=key,
                methods=rule.methods,
                cost=rule.cost,
                strategy=rule.strategy,
                prefix=prefix,
                quota=parsed.amount,
                window=window,
                # A shadow item is never the stage's strictest while an enforced one is there.
                strictness=(SHADOW_STRICTNESS, 0) if shadow else (parsed.amount, -window),
                policy_header=policy_header(policy, parsed.amount, window),
                state_head=state_head(policy),
                store_args=store_args,
                store_resp=bulk_strings((pack_item(store_args),)) if store_args else b"",
                key_head=key_head,
                key_tail=key_tail,
                store_key_head=store_key_head,
                store_key_tail=store_key_tail,
                store_key_size=store_key_size,
                shadow=shadow,
            )
        )
    return items


def _compile_rules(scope: str, policy: str, rules: Iterable[RateLimitRule]) -> tuple[LimitItem, ...]:
    return tuple(
        item for index, rule in enumerate(rules) for item in compile_rule(scope, policy, index, rule)
    )


def _counted_fields(
    route: RouteConfig, items: tuple[LimitItem, ...], login: LoginProtectionConfig
) -> frozenset[str]:
    names = {item.key.name for item in items if item.key.needs_body}
    if route.login:
        names.add(login.username_field)
    return frozenset(names)


def strictest(checks: Sequence[tuple[LimitItem, object]]) -> int:
    """The index of the most restrictive item (the smallest strictness, the first on a tie, as
    ``min`` picks) among ``(item, value)`` checks: a plain loop, the limiter asks on every
    request; ``compile_limits`` asks once per route."""
    best, strictness = 0, checks[0][0].strictness
    for index in range(1, len(checks)):
        candidate = checks[index][0].strictness
        if candidate < strictness:
            best, strictness = index, candidate
    return best


def compile_limits(config: LimitedConfig) -> CompiledLimits:
    settings = config.rate_limits
    policies = {
        name: _compile_rules(f"policy:{name}", name, rules) for name, rules in settings.policies.items()
    }
    by_route: dict[str, tuple[LimitItem, ...]] = {}
    counted: dict[str, frozenset[str]] = {}
    deferrable: set[str] = set()
    pre_auth = _compile_rules("pre_auth", PRE_AUTH_POLICY, settings.pre_auth)
    scripted_pre_auth = all(item.store_args for item in pre_auth)
    for route in config.routes:
        items = tuple(item for name in route.rate_limit for item in policies.get(name, ()))
        if items:
            by_route[route.name] = items
        fields = _counted_fields(route, items, settings.login)
        if fields:
            counted[route.name] = fields
        elif (
            items
            and route.auth == "jwt"
            and not route.login
            and route.tenant_from is None
            and scripted_pre_auth
            and all(item.store_args for item in items)
        ):
            deferrable.add(route.name)
    by_identity = frozenset(
        name
        for name, items in by_route.items()
        if all(item.key.kind in IDENTITY_KINDS and item.methods is None for item in items)
    )
    return CompiledLimits(
        pre_auth=pre_auth,
        by_route=MappingProxyType(by_route),
        counted_fields=MappingProxyType(counted),
        login=settings.login,
        on_store_failure=settings.on_store_failure,
        store_timeout=settings.store_timeout,
        deferrable=frozenset(deferrable) if settings.pre_auth else frozenset(),
        strictest=MappingProxyType(
            {name: strictest([(item, "") for item in items]) for name, items in by_route.items()}
        ),
        by_identity=by_identity,
        pre_auth_by_address=all(item.key.kind == ADDRESS_KIND and item.methods is None for item in pre_auth),
    )
