"""Latent Desk's desktop application (PySide6). It talks to the engine only through `core`."""
