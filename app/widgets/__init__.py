"""The window's parts, each a small widget that knows nothing about the engine."""
