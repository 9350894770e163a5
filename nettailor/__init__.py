"""The ``nettailor`` console command: one entry point over blockstore, trainer and server."""

__all__: list[str] = []
