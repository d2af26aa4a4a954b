"""Read-only questions about what the runs did: sizes over time (``history``) and the HTML report (``report``
assembles its data as plain typed values, ``charts`` and ``html`` render them). Nothing here writes the state
database; every statement lives in ``store/``."""
