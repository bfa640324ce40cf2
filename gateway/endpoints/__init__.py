"""The gateway's own endpoints on the public listener (``/_gateway/…``), answered before route
matching: health and readiness, the MFA step, support grants, a tenant's audit export."""
