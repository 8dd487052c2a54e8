"""The composition root: the one place that wires every part together.

``wiring`` builds a :class:`~spine.platform.app.wiring.Platform` from the settings;
``knowledge`` wires the event, graph and trigger side; ``api`` is the HTTP application;
``cli`` the ``spine`` command (by audience: running, administration, HTTP client);
``launcher`` runs ``spine up``; ``doctor`` checks a deployment. Nothing imports this package.
"""
