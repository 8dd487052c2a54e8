"""Events: NATS subjects, JetStream streams and the shared connection.

Nothing is imported here: ``spine up`` imports :mod:`spine.events.permissions` alone, and the
bus and the outcome publisher would pull in NATS, the metering room and NumPy with it.
"""
