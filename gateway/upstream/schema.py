"""The ``upstreams`` section builder (called by ``gateway.config_schema``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.config.model import UpstreamConfig, UpstreamTls
from gateway.config.reader import Node


def build_upstreams(root: Node) -> dict[str, UpstreamConfig]:
    upstreams: dict[str, UpstreamConfig] = {}
    section = root.child("upstreams")
    for name in list(section.data):
        node = section.child(name)
        urls = node.string_list("urls")
        if not urls:
            node.report.error(node.child_path("urls"), "at least one URL is required")
        for index, url in enumerate(urls):
            parts = urlsplit(url)
            try:
                port_ok = parts.port is None or parts.port > 0
            except ValueError:
                port_ok = False
            bad_shape = parts.scheme not in ("http", "https") or not parts.hostname or parts.username
            if bad_shape or not port_ok or parts.path not in ("", "/") or parts.query:
                node.report.error(
                    f"{node.child_path('urls')}[{index}]", "expected http(s)://host:port without a path"
                )
        tls_node = node.child("tls")
        tls = UpstreamTls(
            verify=tls_node.boolean("verify", True),
            ca_file=tls_node.string("ca_file", None),
            client_cert=tls_node.string("client_cert", None),
            client_key=tls_node.string("client_key", None),
        )
        if (tls.client_cert is None) != (tls.client_key is None):
            node.report.error(tls_node.path, "client_cert and client_key go together")
        tls_node.done()
        upstreams[name] = UpstreamConfig(
            name=name,
            urls=tuple(u.rstrip("/") for u in urls),
            connect_timeout=node.duration("connect_timeout", 2.0),
            read_timeout=node.duration("read_timeout", 30.0),
            max_fails=node.integer("max_fails", 3, minimum=1),
            eject_for=node.duration("eject_for", 10.0),
            pool_size=node.integer("pool_size", 100, minimum=1),
            transport=node.string("transport", "httptools", choices=("httptools", "aiohttp")),
            tls=tls,
        )
        node.done()
    section.done()
    return upstreams
