"""digitlab._io: atomic writes, bounded reads and capped gzip inflation."""

from __future__ import annotations

import gzip
import io
import os
import zlib

import pytest

from digitlab._io import LimitExceeded, atomic_write_bytes, gunzip_capped, read_bounded


def deflate_bomb(inflated: int) -> bytes:
    """A gzip stream that inflates to about `inflated` zero bytes, made in milliseconds: one compressed
    megabyte of zeros repeated after full flushes (each segment decodes alone). The trailer's CRC is
    bogus: a capped reader stops long before it."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = c.compress(b"\0" * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    body = segment * (inflated >> 20) + c.flush()
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + b"\0" * 8


def test_read_bounded_path_and_stream(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    assert read_bounded(p, 100) == b"x" * 100
    with pytest.raises(LimitExceeded, match="100 bytes, over the 99-byte limit"):
        read_bounded(p, 99)
    assert read_bounded(io.BytesIO(b"abc"), 3) == b"abc"
    with pytest.raises(LimitExceeded, match="more than the 2-byte limit"):
        read_bounded(io.BytesIO(b"abc"), 2)


def test_read_bounded_checks_size_before_reading(tmp_path):
    p = tmp_path / "sparse"
    with open(p, "wb") as f:
        f.truncate(50 * 1024**3)  # 50 GB declared, nothing on disk: refused by stat, never read
    with pytest.raises(LimitExceeded, match="53,687,091,200 bytes"):
        read_bounded(p, 1 << 20)


def test_gunzip_capped_roundtrip_members_and_padding():
    data = os.urandom(200_000)
    assert gunzip_capped(io.BytesIO(gzip.compress(data)), len(data)) == data
    two = gzip.compress(data[:1000]) + gzip.compress(data[1000:2000])
    assert gunzip_capped(io.BytesIO(two), 2000) == data[:2000]  # concatenated members, as gzip(1) reads them
    assert gunzip_capped(io.BytesIO(gzip.compress(b"abc") + b"\0" * 700), 3) == b"abc"  # tape-style padding


def test_gunzip_capped_errors():
    packed = gzip.compress(os.urandom(5000))
    with pytest.raises(LimitExceeded, match="inflates to more than the 4,999-byte limit"):
        gunzip_capped(io.BytesIO(packed), 4999)
    with pytest.raises(EOFError, match="truncated"):
        gunzip_capped(io.BytesIO(packed[:-100]), 10_000)
    with pytest.raises(EOFError):
        gunzip_capped(io.BytesIO(b""), 10)
    corrupt = bytearray(packed)
    corrupt[-6] ^= 0xFF  # the CRC-32 in the trailer
    with pytest.raises(zlib.error):
        gunzip_capped(io.BytesIO(bytes(corrupt)), 10_000)
    with pytest.raises(zlib.error):
        gunzip_capped(io.BytesIO(b"not gzip at all"), 10_000)


def test_gunzip_capped_stops_a_bomb_at_the_cap():
    """4 GB declared in 4 MB: inflation stops just past the 1 MB cap (fast, and the output is bounded)."""
    bomb = deflate_bomb(4 << 30)
    assert len(bomb) < 8 << 20
    with pytest.raises(LimitExceeded):
        gunzip_capped(io.BytesIO(bomb), 1 << 20)


def test_atomic_write_honours_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_bytes(tmp_path / "sub" / "f.bin", b"data")
    finally:
        os.umask(old)
    assert p.read_bytes() == b"data" and p.stat().st_mode & 0o777 == 0o644
    assert [q.name for q in p.parent.iterdir()] == ["f.bin"]
