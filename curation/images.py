"""Decoding images robustly, and small cached thumbnails.

Every decode goes through :func:`load_rgb`, which turns the image modes people meet in
real datasets (CMYK, 16-bit greyscale, palette with transparency, EXIF-rotated photos) into
8-bit RGB the way a viewer would show them, and turns every failure into an
:class:`ImageLoadError` whose message is the per-file reason a user sees.

Memory: a decode that only needs a small picture (``max_side``: embeddings, thumbnails)
shrinks the image in its stored mode, strip by strip, before any conversion, so its peak is
about the size of the stored pixels (a 9000 x 9900 16-bit PNG: ~0.2 GB instead of 3.6 GB).
Files that are not regular files (named pipes, devices) are never opened: opening a pipe
would block until something writes to it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from curation.paths import cache_dir
from curation.errors import CurationError

# PIL's own decompression-bomb limit, made an explicit, documented setting of ours.
MAX_PIXELS = 178_956_970
THUMBNAIL_SIZE = 128
# Pixels per strip when shrinking (or stretching 16-bit data): bounds the working memory
# beside the decoded image to a few tens of MB.
STRIP_PIXELS = 4_000_000
_ORIENTATION = 0x0112  # the EXIF tag
# Stored modes Image.reduce averages correctly; palette modes ("P", "PA", "1") would average
# palette indices into unrelated colours, so they are shrunk by picking whole pixels.
_REDUCIBLE_MODES = {"L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


class ImageLoadError(CurationError):
    """An image could not be decoded; ``str(error)`` is a one-line reason."""


def _stretch_to_8bit(image: Image.Image) -> Image.Image:
    """Wide greyscale (16-bit, 32-bit, float) to 8 bits, its used range stretched to 0..255.

    Works on strips of rows in float64, so a large image needs a few strips' worth of extra
    memory rather than several float64 copies of the whole image.
    """
    array = np.asarray(image)
    floating = array.dtype.kind == "f"
    if floating:
        finite = np.isfinite(array)
        if not finite.any():
            return Image.new("L", image.size, 0)
        low = float(np.min(array, where=finite, initial=np.inf))
        high = float(np.max(array, where=finite, initial=-np.inf))
    else:
        low, high = float(array.min()), float(array.max())
    out = np.zeros(array.shape, dtype=np.uint8)
    if high > low:
        scale = 255.0 / (high - low)
        rows = max(1, STRIP_PIXELS // max(1, array.shape[1]))
        for top in range(0, array.shape[0], rows):
            scaled = (array[top:top + rows].astype(np.float64) - low) * scale
            # NaN (no data, as in float TIFFs) shows as black rather than an undefined cast.
            scaled = np.nan_to_num(np.clip(scaled, 0.0, 255.0), nan=0.0)
            out[top:top + rows] = scaled.round().astype(np.uint8)
    return Image.fromarray(out)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Wide greyscale: stretch the used range to 8 bits instead of clipping at 255.
        return _stretch_to_8bit(image).convert("RGB")
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        # A tRNS chunk (a transparent palette index, grey level or colour) is alpha in disguise.
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba)  # an RGBA mask means its alpha band
        return background
    # Already RGB: no copy (the caller owns ``image``; a copy of a large image costs its size).
    return image if image.mode == "RGB" else image.convert("RGB")


def _reduced(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` shrunk by the largest whole factor that keeps both sides at least ``max_side``.

    Shrinks in the stored mode, a strip of rows at a time, so no full-size converted copy is
    ever made; returns ``image`` itself when there is nothing to gain. The EXIF orientation
    travels with the result, to be applied afterwards.
    """
    width, height = image.size
    factor = min(width, height) // max_side
    if factor < 2:
        return image
    size = (-(-width // factor), -(-height // factor))
    exif = image.getexif()  # read before shrinking: TIFF keeps it in its tags, not in ``info``
    if image.mode not in _REDUCIBLE_MODES or "transparency" in image.info:
        # Palette indices and a tRNS key colour must not be averaged: pick whole pixels.
        reduced = image.resize(size, Image.Resampling.NEAREST)
    else:
        # Image.reduce cannot average 16-bit modes; their 32-bit twin "I" holds the same values.
        mode = "I" if image.mode.startswith("I;16") else image.mode
        reduced = Image.new(mode, size)
        rows = max(1, STRIP_PIXELS // (width * factor)) * factor
        for top in range(0, height, rows):
            strip = image.crop((0, top, width, min(height, top + rows)))
            if strip.mode != mode:
                strip = strip.convert(mode)
            reduced.paste(strip.reduce(factor), (0, top // factor))
    if exif.get(_ORIENTATION, 1) != 1:
        reduced.info["exif"] = exif.tobytes()
    return reduced


def file_kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words: "a regular file", "a named pipe", ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def not_a_regular_file(mode: int) -> str | None:
    """Why a file of this ``st_mode`` cannot be read as an image, or None for a regular file.

    Only regular files are ever opened: opening a named pipe blocks until a writer comes.
    """
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    return f"not a regular file ({file_kind(mode)})"


def _check_regular_file(path: Path) -> int:
    """The size of ``path`` in bytes; raises ImageLoadError for anything but a regular file."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise ImageLoadError("file not found") from None
    except OSError as error:
        raise ImageLoadError(f"cannot read file: {error.strerror or error}") from None
    reason = not_a_regular_file(status.st_mode)
    if reason:
        raise ImageLoadError(reason)
    return status.st_size


def load_rgb(path: str | os.PathLike, *, max_side: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode ``path`` into an upright 8-bit RGB image.

    Args:
        path: image file.
        max_side: when given, the image is decoded or shrunk (by a whole factor, averaging
            pixels) to a size no smaller than this on either side: JPEGs at a reduced DCT
            scale, other formats after decoding in their stored mode, before any conversion.
            For pictures that are resized anyway (the model input, thumbnails); it bounds the
            memory of a decode to about the size of the stored pixels.
        max_pixels: refuse images with more pixels than this, from the header alone, before
            decoding. ``MAX_PIXELS`` always applies; this can only lower the limit.

    Raises:
        ImageLoadError: missing, not a regular file, empty, not an image, truncated, or over
            the pixel limit.
    """
    path = Path(path)
    limit = MAX_PIXELS if max_pixels is None else min(max_pixels, MAX_PIXELS)
    if _check_regular_file(path) == 0:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                pixels = opened.width * opened.height
                if pixels > limit:
                    raise ImageLoadError(
                        f"image too large: {opened.width}x{opened.height} = {pixels:,} pixels (limit {limit:,})"
                    )
                if max_side and opened.format == "JPEG":
                    opened.draft("RGB", (max_side, max_side))
                opened.load()
                image = _reduced(opened, max_side) if max_side else opened
                # Inside the ``with``: a TIFF reads its EXIF block from the open file.
                return _to_rgb(ImageOps.exif_transpose(image))
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("not an image (format not recognised)") from None
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"image too large: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        message = str(error)
        lowered = message.lower()  # PIL says both "image file is truncated" and "Truncated File Read"
        if "truncated" in lowered or "broken data stream" in lowered:
            raise ImageLoadError(f"truncated or corrupt image data ({message})") from None
        raise ImageLoadError(f"cannot decode image: {message}") from None
    except Exception as error:  # plugins raise odd types (struct.error, IndexError) on bad files
        raise ImageLoadError(f"cannot decode image: {type(error).__name__}: {error}") from None


# EXIF orientations that turn the stored image by 90 degrees (transpose, rotate, transverse).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


def image_info(path: str | os.PathLike) -> tuple[int, int] | None:
    """Upright (width, height) from the header alone, as :func:`load_rgb` would return it.

    Returns None if the file is unreadable (or not a regular file: a named pipe is never opened).
    """
    try:
        _check_regular_file(Path(path))
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112) in _SWAPPING_ORIENTATIONS:
                width, height = height, width
            return width, height
    except Exception:  # any header a decoder rejects means "unreadable" here
        return None


def thumbnail_path(path: str | os.PathLike, size: int = THUMBNAIL_SIZE) -> Path | None:
    """A cached JPEG thumbnail of ``path`` (at most ``size`` px a side), made on first use.

    The cache key holds the file's path, modification time and size, so an edited image
    gets a new thumbnail. Returns None for an image that cannot be decoded.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return None
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{size}".encode()).hexdigest()
    target = cache_dir() / "thumbnails" / key[:2] / f"{key}.jpg"
    if target.exists():
        return target
    try:
        image = load_rgb(path, max_side=size * 2)
    except ImageLoadError:
        return None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    if image.width < size // 2 and image.height < size // 2:
        # Tiny images (MNIST-sized) are upscaled so a gallery shows them at a readable size.
        scale = (size // 2) / max(image.width, image.height)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.NEAREST)
    from curation.files import atomic_file

    with atomic_file(target, make_parents=True, clean_stale=False) as partial:
        image.save(partial, format="JPEG", quality=85)
    return target
