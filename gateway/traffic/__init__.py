"""The gateway's own recent-traffic counters: ``recorder`` (filled on the hot path) and
``dry_run`` (kill switch dry runs). Nothing is imported here: ``gateway.metrics`` imports the
recorder, and the dry run's imports must not come along into that early import."""
