"""Starting the outside services of full mode on loopback, without Docker: used by ``make run-full``
and by the integration tests' fixtures. Production runs them as the bank's own servers."""
