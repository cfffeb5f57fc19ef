"""
User-facing errors.

Every failure a user can cause (bad config key, missing file, corrupt checkpoint, offline download, ...)
is raised as a `NanoGPT2Error` whose message says what went wrong *and what to do*. The scripts
(`train.py`, `sample.py`, `bench.py`, ...) wrap their `main` in `run_cli`, which prints that message as
one line and exits with status 2 instead of showing a traceback.

Exit statuses of the scripts: 0 done (for train.py also: stopped at max_training_hours, resumable), 2 a
NanoGPT2Error, 75 (`EXIT_INTERRUPTED`, BSD's EX_TEMPFAIL) train.py stopped by SIGTERM/SIGINT after saving
checkpoint_interrupted.pt (resumable: a job scheduler can requeue it), 130 aborted by a second Ctrl-C.
"""

import sys
from pathlib import Path


EXIT_INTERRUPTED = 75  # stopped by a signal after saving a checkpoint: "try again later" (sysexits.h EX_TEMPFAIL)


class DataWarning(UserWarning):
    """Something about the input data the user should know (invalid UTF-8 replaced, a copy that differs)."""


class NanoGPT2Error(Exception):
    """An error caused by the user's input or environment; the message tells them what to do."""


def read_text(path, what: str = "file") -> str:
    """The UTF-8 text of a file the user named (a config file, a prompt, a benchmark text); a missing,
    unreadable or non-UTF-8 file is a NanoGPT2Error naming the file and the problem."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NanoGPT2Error(f"cannot read the {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise NanoGPT2Error(f"the {what} {path} is not UTF-8 text ({e.reason} at byte {e.start}, line {line}: "
                            f"0x{data[e.start]:02x}); save it as UTF-8") from None


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
