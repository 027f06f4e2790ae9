"""The backend process: `python -m backend serve` talks frames on stdin/stdout.

May import every other backend sub-package; nothing imports it but `backend.__main__`.

- `service`: the reader, fit-worker and writer threads behind the protocol.
- `exit_codes`: the process' exit codes (standard library only: used before the
  dependency check).
"""
