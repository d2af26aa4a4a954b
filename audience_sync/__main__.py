"""``python -m audience_sync``: the same as the ``audience-sync`` command."""

from .cli.main import main

main()
