"""Deployment support: the local multi-region runner and compose support files."""

__all__: list[str] = []
