"""How a process reaches the embedded servers: URLs carrying its credentials, and NATS users.

``spine up`` gives each child the URLs of its role (:func:`endpoints_for`); ``spine keys nats``
adds a user to the credentials and has the running NATS read them again (:func:`reload_nats`).
"""

from __future__ import annotations

import logging
import signal
from dataclasses import replace
from pathlib import Path

from spine.platform.embedded.credentials import OPERATOR, load_credentials
from spine.platform.embedded.servers import NatsServer
from spine.platform.embedded.state import Endpoints, find_process, read_state

__all__ = ["endpoints_for", "reload_nats"]

logger = logging.getLogger(__name__)


def endpoints_for(data_dir: Path, endpoints: Endpoints, *, nats_user: str = OPERATOR) -> Endpoints:
    """Return ``endpoints`` with the credentials of ``data_dir`` in the NATS and database URLs.

    Args:
        data_dir: The data directory (its ``credentials.json``).
        endpoints: URLs of the embedded servers, with or without credentials.
        nats_user: The NATS user whose credentials the NATS URL carries (a process role);
            the ``operator`` user when the stack was started without that role.
    """
    credentials = load_credentials(Path(data_dir).resolve())
    if credentials is None:
        return endpoints
    update: dict[str, str] = {}
    if endpoints.nats_url is not None:
        user = nats_user if nats_user in credentials.nats_users else OPERATOR
        update["nats_url"] = credentials.nats_url(endpoints.nats_url, user)
    if endpoints.database_url is not None:
        update["database_url"] = credentials.database_url(endpoints.database_url)
    return replace(endpoints, **update)


def reload_nats(data_dir: Path) -> bool:
    """Rewrite the embedded NATS's config from the credentials and make it read it (SIGHUP).

    Returns:
        Whether a running server was told; ``False`` when none runs (its next start reads it).
    """
    state = read_state(data_dir)
    record = state.servers.get("nats") if state else None
    if state is None or record is None:
        return False
    NatsServer(state.data_dir, monitor="monitor" in record.ports).write_config(record.ports)
    proc = find_process(record.pid, record.create_time)
    if proc is None:
        return False
    proc.send_signal(signal.SIGHUP)
    logger.info("embedded nats (pid %d) reloads its users", proc.pid)
    return True
