"""An audit export as a download, streamed chunk by chunk: the tenant's own export
(``endpoints/tenant_audit.py``) and the admin API's (``admin/audit_api.py``) answer alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from gateway.audit import CONTENT_TYPES


def export_headers(tenant: str, fmt: str) -> dict[str, str]:
    return {
        "Content-Type": CONTENT_TYPES[fmt],
        "Content-Disposition": f'attachment; filename="audit-{tenant}.{fmt}"',
        "Cache-Control": "no-store",
    }


async def stream_export(
    request: web.BaseRequest,
    chunks: AsyncIterator[bytes],
    tenant: str,
    fmt: str,
    extra_headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Stream an audit export as a download, chunk by chunk (constant memory)."""
    response = web.StreamResponse(headers={**export_headers(tenant, fmt), **(extra_headers or {})})
    await response.prepare(request)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response
