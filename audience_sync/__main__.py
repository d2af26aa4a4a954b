"""``python -m audience_sync``: the same as the ``audience-sync`` command."""

from .cli import main

main()
