"""The web console at ``/ui``: graph explorer, tasks, routing and spend, events.

:func:`spine.platform.app.console.site.install` mounts it on the API app
(``GENAI_API__CONSOLE``, on by default). Pages are Jinja2 templates with a little plain
JavaScript that calls the same JSON API as any client, with the key a person signs in with.
The graph and chart libraries are pinned npm releases fetched by the install step
(``python -m spine.platform.app.console.assets``), never from a CDN at run time.

This package imports nothing itself, so that the install step's asset script runs on the
standard library alone, before (and without) the platform's dependencies.
"""
