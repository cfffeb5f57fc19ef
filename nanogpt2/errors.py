"""
User-facing errors.

Every failure a user can cause (bad config key, missing file, corrupt checkpoint, offline download, ...)
is raised as a `NanoGPT2Error` whose message says what went wrong *and what to do*. The scripts
(`train.py`, `sample.py`, `bench.py`, ...) wrap their `main` in `run_cli`, which prints that message as
one line and exits with status 2 instead of showing a traceback.
"""

import sys


class DataWarning(UserWarning):
    """Something about the input data the user should know (invalid UTF-8 replaced, a copy that differs)."""


class NanoGPT2Error(Exception):
    """An error caused by the user's input or environment; the message tells them what to do."""


def run_cli(main, *args, **kwargs):
    """Call `main(*args, **kwargs)`; turn a NanoGPT2Error into one line on stderr and exit status 2."""
    try:
        return main(*args, **kwargs)
    except NanoGPT2Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
