"""The HTTP API of GenAI Spine."""

from spine.platform.app.api.server import create_app

__all__ = ["create_app"]
