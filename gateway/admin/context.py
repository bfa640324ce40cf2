"""Typed keys shared by the admin handlers."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway.audit import AuditTrail
from gateway.auth.revocation import RevocationEpochs
from gateway.auth.signing import SigningKeys
from gateway.auth.webhooks import IntegrationSecrets
from gateway.runtime import Runtime

AuditKey = web.AppKey("audit_trail", AuditTrail)
SigningKey = web.AppKey("signing_keys", SigningKeys)
RevocationsKey = web.AppKey("revocations", RevocationEpochs)
IntegrationsKey = web.AppKey("integrations", IntegrationSecrets)
# A callable type is no class: given as the key's type argument (aiohttp reads it from there).
RuntimeKey = web.AppKey[Callable[[], Runtime]]("current_runtime")
ActorKey = web.RequestKey("admin_actor", str)
RolesKey = web.RequestKey("admin_roles", frozenset)  # the console shows only what these allow
RequestIdKey = web.RequestKey("admin_request_id", str)  # chosen once: the response and audit agree
