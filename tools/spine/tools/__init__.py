"""The tool registry and the built-in tools agents may call."""

__all__: list[str] = []
