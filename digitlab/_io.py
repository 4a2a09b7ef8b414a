"""Small file helpers every writer and reader shares: atomic writes, bounded reads, capped decompression.

Nothing here knows about digits; the modules that write models, checkpoints, plots, ONNX files and
downloads all come through these, so a crash mid-write never leaves a half file under the real name.
"""

from __future__ import annotations

import os
import tempfile
import time
import zlib
from pathlib import Path
from typing import BinaryIO

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
    if target.is_symlink() or (target.exists() and not target.is_file()):
        kind = "a folder" if target.is_dir() else "a link" if target.is_symlink() else "not a regular file"
        raise FileExistsError(f"{target}: is {kind}; expected a file name to write (nothing was written)")
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


class LimitExceeded(ValueError):
    """A file or stream holds (or would inflate to) more bytes than the caller allows."""


CHUNK = 1 << 16  # 64 KB: small enough that overshooting a cap costs nothing


def read_bounded(src: str | os.PathLike | BinaryIO, max_bytes: int) -> bytes:
    """All bytes of a file (path or open binary stream), refusing anything over max_bytes.

    A path's size is checked with stat() before reading; a stream (an HTTP response, a zip member)
    is read max_bytes + 1 at most. Raises LimitExceeded (over the cap) or OSError (cannot read)."""
    if isinstance(src, (str, os.PathLike)):
        size = os.stat(src).st_size
        if size > max_bytes:
            raise LimitExceeded(f"{size:,} bytes, over the {max_bytes:,}-byte limit")
        with open(src, "rb") as f:
            return read_bounded(f, max_bytes)
    parts, total = [], 0
    while chunk := src.read(min(CHUNK, max_bytes + 1 - total)):
        parts.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise LimitExceeded(f"more than the {max_bytes:,}-byte limit")
    return b"".join(parts)


def gunzip_capped(src: BinaryIO, max_bytes: int) -> bytes:
    """Decompress a gzip stream (one or more members) chunk by chunk, stopping as soon as the output
    would pass max_bytes: a 2 MB gzip bomb costs max_bytes of memory, not the 4 GB it declares.

    Raises LimitExceeded (inflates past the cap), EOFError (stream ends mid-member) or zlib.error
    (not gzip, or corrupt). Trailing zero padding after the last member is ignored, as gzip(1) does."""
    out = bytearray()
    d = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer (CRC-32 and length are checked)
    pending = b""
    while True:
        data = pending or src.read(CHUNK)
        pending = b""
        if not data:
            break
        if d.eof:  # a further member (or padding) after a complete one
            if not data.strip(b"\x00"):
                continue
            d = zlib.decompressobj(wbits=31)
        out += d.decompress(data, max_bytes + 1 - len(out))
        while d.unconsumed_tail and len(out) <= max_bytes:
            out += d.decompress(d.unconsumed_tail, max_bytes + 1 - len(out))
        if len(out) > max_bytes:
            raise LimitExceeded(f"inflates to more than the {max_bytes:,}-byte limit")
        if d.eof:
            pending = d.unused_data
    if not d.eof:
        raise EOFError("compressed data ended before the end-of-stream marker (truncated)")
    return bytes(out)
