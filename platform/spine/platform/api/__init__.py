"""The HTTP API of GenAI Spine."""

from spine.platform.api.app import create_app

__all__ = ["create_app"]
