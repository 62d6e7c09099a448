"""Error classes a user can meet, in a module without heavy imports (the CLI names them in one line)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, named with the reason and what to do."""
