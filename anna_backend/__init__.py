"""ANNA's backend: the REST API, the run queue, and the adapters to git, SQLite and the local runner.

Layers (see docs/architecture.md): ``domain`` (plain entities and the run state machine),
``service_layer`` (use cases over abstract ports), ``adapters`` (one implementation per port)
and ``entrypoints`` (HTTP app, server, pipeline driver).
"""

from anna_backend.version import VERSION as __version__

__all__ = ["__version__"]
