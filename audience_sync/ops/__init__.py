"""The shells that start runs besides the CLI: the attempt and what follows it, the scheduler, alerts, metrics."""
