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

import errno
import os
import shutil
import sys
from pathlib import Path


EXIT_INTERRUPTED = 75  # stopped by a signal after saving a checkpoint: "try again later" (sysexits.h EX_TEMPFAIL)


class DataWarning(UserWarning):
    """Something about the input data the user should know (invalid UTF-8 replaced, a copy that differs)."""


class NanoGPT2Error(Exception):
    """An error caused by the user's input or environment; the message tells them what to do. Under torchrun,
    `rank` is set on an error that happened on that process alone (rank > 0), so that it is printed with it."""

    rank = None


class ElsewhereError(NanoGPT2Error):
    """Another process of the run failed (nanogpt2.distributed's `together`); that process prints what and why."""


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


# A full disk, a full quota, or a file-size limit (RLIMIT_FSIZE / ulimit -f, with SIGXFSZ ignored): no room.
NO_ROOM = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _os_error(e):
    """The OSError in an exception's chain (torch.save wraps a failed write in a RuntimeError), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def write_error(e, what: str, folder, fix: str, any_os_error: bool = False):
    """A NanoGPT2Error for a failed write of `what` into `folder` that says why and how much room is left,
    when `e` comes from the disk (no room; with any_os_error, any OSError); else None (a bug: re-raise it)."""
    os_err = None if isinstance(e, NanoGPT2Error) else _os_error(e)  # already says what to do
    if os_err is None or (os_err.errno not in NO_ROOM and not any_os_error):
        return None
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free in {folder}"
    except OSError:
        free = f"free space of {folder} unknown"
    why = os_err.strerror or errno.errorcode.get(os_err.errno, str(os_err.errno))
    if os_err.errno == errno.EFBIG:
        why += " (the file-size limit, ulimit -f, was reached)"
    return NanoGPT2Error(f"cannot write {what}: {why}; {free}; {fix}")


def _rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    try:
        return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:
        return 0


def run_cli(main, *args, **kwargs):
    """Call `main(*args, **kwargs)`; turn a NanoGPT2Error into one line on stderr and exit status 2. Under torchrun
    one voice: rank 0 prints the errors every process meets alike; an error of one other process alone is printed
    by that process, with its rank; a process stopped by another's failure (ElsewhereError) prints nothing."""
    try:
        return main(*args, **kwargs)
    except NanoGPT2Error as e:
        rank = _rank()
        if not isinstance(e, ElsewhereError) and (rank == 0 or e.rank is not None):
            print(f"error: [rank {rank}] {e}" if rank else f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
