"""The installed version of jobd."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("jobd")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
