"""The regional gateway: HTTP API, auth, channels, cache, store adapters, CLI."""

__all__: list[str] = []
