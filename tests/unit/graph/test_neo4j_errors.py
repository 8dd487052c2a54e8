"""Neo4j's refusals in the store's terms: a query past its limits is the caller's 400."""

from __future__ import annotations

import pytest
from neo4j.exceptions import Neo4jError

from spine.graph.neo4j_store import _translated
from spine.graph.store import GraphError, QueryLimitExceeded
from spine.platform.errors import ServiceUnavailable


@pytest.mark.parametrize(
    ("code", "limit"),
    [
        ("Neo.ClientError.Transaction.TransactionTimedOut", "time"),
        ("Neo.ClientError.Transaction.TransactionTimedOutClientConfiguration", "time"),
        ("Neo.TransientError.General.MemoryPoolOutOfMemoryError", "memory"),
    ],
)
def test_a_query_stopped_at_a_limit_is_query_limit_exceeded(code: str, limit: str) -> None:
    error = _translated(Neo4jError._hydrate_neo4j(code=code, message="stopped"), "the query")
    assert isinstance(error, QueryLimitExceeded)
    assert error.status_code == 400
    assert error.details == {"limit": limit}


def test_other_refusals_and_busy_servers_keep_their_mapping() -> None:
    syntax = Neo4jError._hydrate_neo4j(code="Neo.ClientError.Statement.SyntaxError", message="x")
    busy = Neo4jError._hydrate_neo4j(code="Neo.TransientError.General.DatabaseUnavailable")
    refused = _translated(syntax, "the query")
    assert isinstance(refused, GraphError) and not isinstance(refused, QueryLimitExceeded)
    assert isinstance(_translated(busy, "the query"), ServiceUnavailable)
