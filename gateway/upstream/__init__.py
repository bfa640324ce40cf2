"""The upstream side: who the client is and what the upstream is told (``forwarding``), the
pools and balancing (``pools``) and the two transports behind them. The proxy step that drives
them for one request is ``gateway.proxy``."""
