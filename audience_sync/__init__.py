"""audience-sync: sync audiences and computed traits to user-property destinations, sending only changes.

The library in three names: :func:`load_config` reads and validates a config file, :func:`run_sync` performs one
run and returns its :class:`RunResult`, and every error raised on purpose derives from :class:`AudienceSyncError`.
"""

from .config import load_config
from .errors import AudienceSyncError
from .run.sync import RunResult, run_sync

__version__ = "0.1.0"
__all__ = ["AudienceSyncError", "RunResult", "__version__", "load_config", "run_sync"]
