"""Load and benchmark suites: they talk to memsync like any user would."""

__all__: list[str] = []
