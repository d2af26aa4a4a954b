"""audience-sync: sync audiences and computed traits to user-property destinations, sending only changes."""

from .errors import AudienceSyncError

__version__ = "0.1.0"
__all__ = ["AudienceSyncError", "__version__"]
