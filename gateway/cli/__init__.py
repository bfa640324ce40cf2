"""Entry point: the ``shopino-gateway`` commands (SPEC §1). ``commands`` parses and dispatches;
each operator verb family has its own module over one admin-API client (``operator_client``)."""
