"""Training objectives: each a small callable returning an :class:`ObjectiveOutput`."""
