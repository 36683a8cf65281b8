"""Entry points: the HTTP app, the embedded server, the pipeline driver (and the ``anna`` CLI)."""
