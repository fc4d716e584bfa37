"""Fault injection: the Toxiproxy-compatible proxy, nemeses, history and checker."""

__all__: list[str] = []
