"""The shells' command line: click commands that parse, call one library function, render, and exit.

This package is the only place click and rich are imported.
"""

from .main import main

__all__ = ["main"]
