"""The installed version of ANNA (``0.0.0`` when running from a source tree that is not installed)."""

from importlib import metadata

try:
    VERSION = metadata.version("anna")
except metadata.PackageNotFoundError:
    VERSION = "0.0.0"
