"""The knowledge graph: driver, schema, ingestion mappings and exploration queries."""

from spine.graph.driver import open_driver, ping

__all__ = ["open_driver", "ping"]
