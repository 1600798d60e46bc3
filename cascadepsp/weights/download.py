"""Opt-in downloader for the official CascadePSP checkpoint (never called implicitly)."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..io.atomic import open_atomic

OFFICIAL_URL = "https://github.com/hkchengrex/CascadePSP/releases/download/v1.0/model"
OFFICIAL_MD5 = "7478d4a9c42ab52beb6d7e9683402fe0"


class ChecksumError(RuntimeError):
    """The downloaded file's MD5 does not match the expected one."""


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: str | os.PathLike, md5: str | None = None, *, progress: bool = True,
                  timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` with a progress bar; verify ``md5``; rename into place only when valid.

    A file that fails the checksum is deleted and :class:`ChecksumError` is raised, so a corrupt or
    truncated download never sits at ``dest``.
    """
    dest = Path(dest)
    h = hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as resp, open_atomic(dest) as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        size = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            while block := resp.read(1 << 20):
                out.write(block)
                h.update(block)
                size += len(block)
                bar.update(len(block))
        if total is not None and size != total:  # raising inside open_atomic keeps dest untouched
            raise ChecksumError(f"{url}: truncated download ({size} of {total} bytes)")
        if md5 is not None and h.hexdigest() != md5.lower():
            raise ChecksumError(f"{url}: MD5 {h.hexdigest()} does not match expected {md5}")
    return dest


def default_official_path() -> Path:
    """Where the official checkpoint is looked for: ``$CASCADEPSP_HOME/official/model`` (default ``~/.cache/cascadepsp``)."""
    home = Path(os.environ.get("CASCADEPSP_HOME", Path.home() / ".cache" / "cascadepsp"))
    return home / "official" / "model"


def download_official(dest: str | os.PathLike | None = None, *, url: str = OFFICIAL_URL,
                      md5: str = OFFICIAL_MD5, progress: bool = True, force: bool = False) -> Path:
    """Fetch the official checkpoint (259 MB) unless a valid copy is already at ``dest``."""
    dest = Path(dest) if dest is not None else default_official_path()
    if dest.is_file() and not force and md5sum(dest) == md5:
        return dest
    return download_file(url, dest, md5, progress=progress)
