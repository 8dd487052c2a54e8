"""The kernel (settings, errors, database, tasks, keys, model calls) and the shell (API, CLI)."""
