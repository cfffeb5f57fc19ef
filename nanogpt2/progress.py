"""
The progress line on stderr, shared by the downloader (nanogpt2/download.py) and the dataset cache builder
(nanogpt2/data.py): `<desc>: <done> / <total> MB (<pct>%) <rate> MB/s[, <note>]`, redrawn in place with \\r on
a terminal (at most every 0.2 s), written as separate lines every 10 s into a log file, nothing when quiet.

    progress = ProgressLine("model 'gpt2'", quiet=False)
    progress.update(done_bytes, total_bytes)                # drawn when an interval has passed
    progress.update(done_bytes, total_bytes, final=True)   # always drawn; ends the line
    progress.close()                                        # ends an unfinished \\r line (before an error message)
"""

import sys
import time

__all__ = ["ProgressLine", "fmt_mb"]


def fmt_mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class ProgressLine:
    """One stderr line `desc: done / total MB (pct) speed MB/s[, note]`, redrawn with \\r at most every few tenths
    of a second (on a terminal) or every 10 s as separate lines (in a log file)."""

    def __init__(self, desc: str, quiet: bool = False):
        self.desc, self.quiet = desc, quiet
        self.tty = sys.stderr.isatty()
        self.interval = 0.2 if self.tty else 10.0
        self.begin(0)
        self.drawn = False

    def begin(self, start_bytes: int):
        """Measure the speed from now and from `start_bytes` (a resumed download); the first line comes after
        one interval, when the speed means something."""
        self.t0, self.start_bytes = time.monotonic(), start_bytes
        self.last = self.t0

    def update(self, done: int, total: int | None, final: bool = False, note: str = ""):
        """`done` of `total` bytes (None or 0: unknown); `note` is appended after a comma (e.g. a token count)."""
        if self.quiet:
            return
        now = time.monotonic()
        if not final and (now - self.last < self.interval or done == total):  # the final call draws 100 %
            return
        self.last = now
        rate = (done - self.start_bytes) / max(now - self.t0, 1e-6) / 1e6
        of = f" / {fmt_mb(total)} ({100 * done / total:.0f}%)" if total else ""
        line = f"{self.desc}: {fmt_mb(done)}{of} {rate:.1f} MB/s" + (f", {note}" if note else "")
        if self.tty:
            sys.stderr.write("\r" + line.ljust(79) + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self.drawn = self.tty and not final  # an unfinished \r line is on screen

    def close(self):
        if self.drawn and self.tty and not self.quiet:  # end an unfinished \r line before an error message
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False
