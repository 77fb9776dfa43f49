"""Business rules. Services take their collaborators in ``__init__`` and never touch
sockets, SQL text or Redis: those belong to ``net``, ``storage`` and ``relay``."""
