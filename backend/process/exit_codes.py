"""The backend process' exit codes (docs/protocol.md, "Start-up and exit codes").

Standard library only: ``python -m backend`` exits with `EXIT_STARTUP_ERROR` before it
knows that numpy or torch can be imported.
"""

EXIT_OK = 0  # shutdown requested, or the input closed
EXIT_PROTOCOL_ERROR = 2  # a broken frame from the client
EXIT_STARTUP_ERROR = 3  # missing or broken dependencies: nothing was fitted
