"""`digitlab predict FOLDER` on the folders people really have: odd file names, links, pipes (issue 13, 6).
Each case is reported (exit 1) while the readable images are still predicted; nothing crashes the output."""

from __future__ import annotations

import os
import struct
import sys

import pytest
from PIL import Image, ImageDraw

from digitlab.errors import ImageError
from digitlab.images import expand_sources
from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names, links and FIFOs")


def seven(path, exif: bytes | None = None) -> None:
    im = Image.new("L", (120, 120), 255)
    ImageDraw.Draw(im).line([(25, 25), (95, 25), (50, 100)], fill=0, width=10)
    im.save(path, "JPEG", **({"exif": exif} if exif else {}))


def corrupt_exif() -> bytes:
    """An EXIF block whose first directory claims 5 entries and holds one: Pillow warns "Corrupt EXIF data"."""
    tiff = b"MM\x00*" + struct.pack(">IH", 8, 5) + struct.pack(">HHII", 0x0112, 3, 1, 1 << 16)
    return b"Exif\x00\x00" + tiff


def utf8_env() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": ""}


def test_undecodable_and_newline_names_print_one_line_each(tmp_path, trained_model_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    seven(folder / "plain.jpg")
    seven(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"))  # Latin-1 bytes: not valid UTF-8
    seven(folder / "two\nlines.jpg")
    proc = run_cli("predict", trained_model_path, folder, env=utf8_env())
    assert proc.returncode == 0, proc.stderr
    results = [line for line in proc.stdout.splitlines() if not line.startswith("   ")]
    assert len(results) == 3, proc.stdout
    assert any(line.startswith(f"{folder}/caf\\udce9.jpg: ") for line in results), results
    assert any(line.startswith(f"{folder}/two\\nlines.jpg: ") for line in results), results


def test_links_fifos_and_folders_named_like_images_are_errors(tmp_path, trained_model_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    seven(folder / "good.jpg")
    (folder / "dangling.png").symlink_to("nowhere.png")
    (folder / "loop.png").symlink_to("loop.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "folder.png").mkdir()
    (folder / "notes.txt").write_text("not an image, not named like one: ignored")
    proc = run_cli("predict", trained_model_path, folder)
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"{folder}/good.jpg: 7")
    errors = proc.stderr.splitlines()
    assert errors == [f"digitlab: error: {folder}/dangling.png: dangling symbolic link (to nowhere.png)",
                      f"digitlab: error: {folder}/folder.png: is a folder, not an image file",
                      f"digitlab: error: {folder}/loop.png: symbolic link loop",
                      f"digitlab: error: {folder}/pipe.png: is a FIFO (named pipe), not an image file"], errors


def test_a_fifo_given_by_name_is_an_error_not_a_hang(tmp_path, trained_model_path):
    os.mkfifo(tmp_path / "pipe.png")
    seven(tmp_path / "good.jpg")
    proc = run_cli("predict", trained_model_path, tmp_path / "pipe.png", tmp_path / "good.jpg")
    assert proc.returncode == 1 and "pipe.png: is a FIFO" in proc.stderr and "good.jpg: 7" in proc.stdout


def test_corrupt_exif_warning_stays_off_stderr(tmp_path, trained_model_path):
    seven(tmp_path / "exif.jpg", exif=corrupt_exif())
    with pytest.warns(UserWarning, match="Corrupt EXIF"), Image.open(tmp_path / "exif.jpg") as im:
        im.getexif()  # the file does make Pillow warn
    proc = run_cli("predict", trained_model_path, tmp_path / "exif.jpg")
    assert proc.returncode == 0 and proc.stderr == "" and ": 7" in proc.stdout


def test_expand_sources_raises_without_an_error_list(tmp_path):
    (tmp_path / "dangling.png").symlink_to("nowhere.png")
    with pytest.raises(ImageError, match="dangling.png: dangling symbolic link"):
        expand_sources([str(tmp_path)])
    errors: list[str] = []
    assert expand_sources([str(tmp_path)], errors) == [] and len(errors) == 1
