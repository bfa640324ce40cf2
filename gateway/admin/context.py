"""Typed keys shared by the admin handlers."""

from __future__ import annotations

from aiohttp import web

from gateway.audit import AuditTrail

AuditKey = web.AppKey("audit_trail", AuditTrail)
ActorKey = web.RequestKey("admin_actor", str)
