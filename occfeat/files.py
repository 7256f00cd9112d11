"""Writing user-visible files safely: atomically (a temporary file renamed over the old one, so a kill
never leaves half a file), and with every OSError (read-only folder, full disk, no permission) turned
into one line that names the path and what to do."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from occfeat.errors import OccfeatError


def write_error(path: Path, e: OSError, then: str = "") -> OccfeatError:
    """The one-line error for an OSError while writing ``path``; ``then``: how to continue afterwards."""
    if e.errno == errno.ENOSPC:
        fix = f"free space on the disk of {path.parent}"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {path.parent} writable or choose another output folder"
    else:
        fix = f"check {path.parent}"
    return OccfeatError(f"cannot write {path}: {e.strerror or e}; {fix}{', then ' + then if then else ''}")


@contextlib.contextmanager
def writing(path: Path | None = None, then: str = ""):
    """Turn an OSError raised inside the block into :func:`write_error` for ``path`` (None: the file
    the error names)."""
    try:
        yield
    except OSError as e:
        raise write_error(Path(path if path is not None else e.filename or "."), e, then) from None


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def write_text_atomic(path: Path, text: str, then: str = "") -> bool:
    """Write ``text`` to a temporary file and rename it over ``path``; nothing is written when ``path``
    already holds ``text``. Returns whether the file was written."""
    path = Path(path)
    with writing(path, then):
        if path.is_file() and path.read_text() == text:
            return False
        tmp = tmp_path(path)
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return True
