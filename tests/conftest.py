"""The suite's fixtures and hooks, defined in :mod:`tests.harness` with the rest of the shared harness."""

from tests.harness import (  # noqa: F401  (pytest finds fixtures and hooks by name here)
    gist,
    harness,
    migrations_as_marked,
    pg_server,
    pg_url,
    pytest_collection_modifyitems,
    pytest_xdist_auto_num_workers,
    receiver,
    restore_logging,
    segment,
    state_url,
    warehouse,
)
