"""Write outputs so that a reader never sees half a file: temporary file + rename, and clean-up of the
temporary files that writers which died left behind (named with their process id)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_TMP_RE = re.compile(r"^(?P<final>.+)\.tmp-(?P<pid>\d+)(?P<ext>\.[A-Za-z0-9]+)?$")


def temp_path(final: str | os.PathLike) -> Path:
    """The temporary name used while writing ``final``: ``<final name>.tmp-<pid><ext>`` in the same folder."""
    final = Path(final)
    return final.with_name(f"{final.name}.tmp-{os.getpid()}{final.suffix}")


@contextmanager
def open_atomic(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only when the ``with`` block ends without an error.

    The data goes to :func:`temp_path` beside ``path``, is flushed to disk and renamed into place. A run
    killed at any moment leaves either the old file, the complete new file, or a stray temporary file that
    :func:`remove_stale_temps` clears; never a half-written ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`open_atomic`); the one writer of every output file."""
    with open_atomic(path) as f:
        f.write(data)
    return Path(path)


def is_temp_file(path: str | os.PathLike) -> bool:
    return _TMP_RE.match(Path(path).name) is not None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left in ``folder`` (recursively) by writers that are no longer running.

    POSIX only; elsewhere leftovers are kept (they are never read as inputs or taken for outputs).
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for dirpath, _, files in os.walk(folder):
        for name in files:
            m = _TMP_RE.match(name)
            if m and not _pid_alive(int(m.group("pid"))):
                p = Path(dirpath) / name
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
