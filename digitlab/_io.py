"""Small file helpers every writer and reader shares: atomic writes, bounded reads, capped decompression.

Nothing here knows about digits; the modules that write models, checkpoints, plots, ONNX files and
downloads all come through these, so a crash mid-write never leaves a half file under the real name.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

STALE_PART_SECONDS = 3600  # a .part file older than this was left by a process killed mid-write


def _umask() -> int:
    """The process umask (reading it means setting it; restored at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _clear_stale_parts(folder: Path, name: str) -> None:
    """Remove hidden .NAME.*.part files that a process killed during a save (kill -9) left behind."""
    cutoff = time.time() - STALE_PART_SECONDS
    for old in folder.glob(f".{name}.*.part"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def atomic_write_bytes(target: str | os.PathLike, payload: bytes) -> Path:
    """Write payload to target all-or-nothing: a temporary file beside it, fsync, then rename.

    The file gets the usual permissions (0666 less the umask, 0644 normally), not mkstemp's 0600.
    Raises OSError (folder not writable, disk full); target is then left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_parts(target.parent, target.name)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
