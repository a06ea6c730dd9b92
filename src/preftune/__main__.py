"""``python -m preftune``: the same as the ``preftune`` command.

:func:`run_command` runs one in a process of the caller's (a fork that has imported preftune
already): the fault-injection tests start their runs that way, without paying torch's import
each time.
"""

from __future__ import annotations

import os
import sys

from .cli import main


def run_command(argv: list[str], env: dict[str, str], log: str) -> None:
    """Run ``preftune ARGV`` in this (forked) process with ``env`` added, its output to ``log``; the
    process's exit status is the command's (or -SIGKILL when a fault point fires)."""
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
