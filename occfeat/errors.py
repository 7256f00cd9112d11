"""The one exception type users see.

Library code raises :class:`OccfeatError` with a one-line message that says what is wrong and what to
do; the CLI prints it as ``error: <message>`` and exits with status 2. Anything else is a bug.
"""


class OccfeatError(Exception):
    """A user-facing, one-line error: what is wrong and what to do about it."""


def write_error(e: OSError, path, what_to_do: str = "") -> OccfeatError:
    """One line for an OSError while writing ``path``: what happened and what to do (by errno)."""
    import errno

    from pathlib import Path

    where = Path(path).parent if str(path) else Path(".")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = f"free space on the disk that holds {where}" + (f" ({what_to_do})" if what_to_do else "") + " and rerun"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = f"make {where} writable or choose another output folder"
    else:
        advice = what_to_do or "check the disk and rerun"
    return OccfeatError(f"cannot write {path} ({e.strerror or type(e).__name__}); {advice}")
