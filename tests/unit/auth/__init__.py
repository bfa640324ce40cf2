"""Unit tests for gateway.auth."""
