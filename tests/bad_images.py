"""Generators for the image files real datasets contain, good and bad, into a folder.

Every writer is deterministic (seeded) and small. ``write_all`` makes one of each and
returns what a robust decoder must do with it, so one table drives both the per-file tests
and the mixed-folder embedding test.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# The EXIF tag for orientation, and the value "rotate 90 degrees clockwise to view".
EXIF_ORIENTATION = 0x0112
ORIENTATION_ROTATE_90_CW = 6


def _pattern(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An (H, W, 3) uint8 image with structure (gradients plus noise), not flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
    noise = rng.integers(0, 40, size=(height, width, 3))
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def write_rgb_jpeg(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    Image.fromarray(_pattern(width, height, seed)).save(path, format="JPEG", quality=90)
    return path


def write_rgb_png(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    Image.fromarray(_pattern(width, height, seed)).save(path, format="PNG")
    return path


def write_truncated(path: Path, fmt: str = "JPEG", keep: float = 0.5) -> Path:
    """A valid header followed by only the first ``keep`` fraction of the file."""
    buffer = io.BytesIO()
    Image.fromarray(_pattern(128, 96, seed=3)).save(buffer, format=fmt)
    data = buffer.getvalue()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def write_text_as_image(path: Path) -> Path:
    path.write_text("this is a README, not a picture\n" * 20)
    return path


def write_cmyk_jpeg(path: Path, width: int = 40, height: int = 30) -> Path:
    """Pure red in CMYK (C=0, M=255, Y=255, K=0), the way print workflows save photos."""
    cmyk = np.zeros((height, width, 4), dtype=np.uint8)
    cmyk[..., 1] = 255
    cmyk[..., 2] = 255
    Image.frombytes("CMYK", (width, height), cmyk.tobytes()).save(path, format="JPEG", quality=95)
    return path


def write_16bit_grey_png(path: Path, width: int = 50, height: int = 20, low: int = 1000, high: int = 3000) -> Path:
    """A horizontal ramp from ``low`` to ``high`` in 16-bit greyscale (medical / scientific data)."""
    ramp = np.linspace(low, high, width).round().astype(np.uint16)
    array = np.tile(ramp, (height, 1))
    image = Image.fromarray(array)  # uint16 -> mode "I;16"
    assert image.mode == "I;16", image.mode
    image.save(path, format="PNG")
    return path


def write_palette_png_with_transparency(path: Path, width: int = 20, height: int = 10) -> Path:
    """Palette PNG: left half fully transparent (index 0), right half opaque blue (index 1)."""
    image = Image.new("P", (width, height), 0)
    palette = [0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6)
    image.putpalette(palette)
    for x in range(width // 2, width):
        for y in range(height):
            image.putpixel((x, y), 1)
    image.save(path, format="PNG", transparency=0)
    return path


def write_exif_rotated_jpeg(path: Path, width: int = 60, height: int = 20) -> Path:
    """Stored landscape (``width`` x ``height``) with EXIF orientation 6: shown portrait."""
    image = Image.fromarray(_pattern(width, height, seed=5))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ORIENTATION_ROTATE_90_CW
    image.save(path, format="JPEG", exif=exif.tobytes(), quality=90)
    return path


def write_large_png(path: Path, width: int = 300, height: int = 200) -> Path:
    """Big enough to exceed a ``MAX_PIXELS`` that a test lowers (60,000 pixels)."""
    Image.new("RGB", (width, height), (10, 200, 30)).save(path, format="PNG")
    return path


@dataclass(frozen=True)
class Case:
    """One file and what decoding it must do."""

    name: str
    path: Path
    ok: bool  # True: decodes to RGB; False: skipped with a reason
    reason_contains: str = ""  # for bad files: a phrase the reason must contain


# A fixed MAX_PIXELS for the mixed folder: every good file is below it, the large one above.
TEST_MAX_PIXELS = 20_000


def write_all(folder: Path) -> list[Case]:
    """One file of each kind in ``folder`` (created if needed). Use with ``TEST_MAX_PIXELS``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        Case("rgb-jpeg", write_rgb_jpeg(folder / "good.jpg"), True),
        Case("rgb-png", write_rgb_png(folder / "good.png", seed=1), True),
        Case("cmyk-jpeg", write_cmyk_jpeg(folder / "cmyk.jpg"), True),
        Case("grey16-png", write_16bit_grey_png(folder / "grey16.png"), True),
        Case("palette-png", write_palette_png_with_transparency(folder / "palette.png"), True),
        Case("exif-jpeg", write_exif_rotated_jpeg(folder / "rotated.jpg"), True),
        Case("truncated-jpeg", write_truncated(folder / "truncated.jpg", "JPEG"), False, "truncated"),
        Case("truncated-png", write_truncated(folder / "truncated.png", "PNG"), False, "truncated"),
        Case("zero-bytes", write_zero_bytes(folder / "empty.jpg"), False, "empty file"),
        Case("text-as-jpeg", write_text_as_image(folder / "readme.jpg"), False, "not an image"),
        Case("too-large", write_large_png(folder / "huge.png"), False, "too large"),
    ]
