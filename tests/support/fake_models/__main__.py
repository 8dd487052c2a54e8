"""Serve the fake model server in the foreground: ``python -m support.fake_models --port 0``."""

from .process import main

main()
