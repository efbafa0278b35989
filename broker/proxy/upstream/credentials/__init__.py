"""Upstream credentials and network settings: what the broker presents to the servers behind it."""
