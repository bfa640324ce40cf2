"""The upstream side: who the client is and what the upstream is told (``forwarding``), the
proxy step (``proxy``), the pools and balancing (``pools``) and the two transports behind them."""
