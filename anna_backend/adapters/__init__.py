"""Embedded implementations of the ports: SQLite via SQLAlchemy, a local git repo, local processes, files."""
