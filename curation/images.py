"""Decoding images robustly, and small cached thumbnails.

Every decode goes through :func:`load_rgb`, which turns the image modes people meet in
real datasets (CMYK, 16-bit greyscale, palette with transparency, EXIF-rotated photos) into
8-bit RGB the way a viewer would show them, and turns every failure into an
:class:`ImageLoadError` whose message is the per-file reason a user sees.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from curation.paths import cache_dir
from curation.errors import CurationError

# PIL's own decompression-bomb limit, made an explicit, documented setting of ours.
MAX_PIXELS = 178_956_970
THUMBNAIL_SIZE = 128


class ImageLoadError(CurationError):
    """An image could not be decoded; ``str(error)`` is a one-line reason."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Wide greyscale: stretch the used range to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(array)
        if not finite.any():
            return Image.new("RGB", image.size, (0, 0, 0))
        low, high = float(array[finite].min()), float(array[finite].max())
        scaled = np.zeros_like(array) if high <= low else (array - low) * (255.0 / (high - low))
        # NaN (no data, as in float TIFFs) shows as black rather than an undefined cast.
        scaled = np.nan_to_num(np.clip(scaled, 0.0, 255.0), nan=0.0)
        return Image.fromarray(scaled.round().astype(np.uint8)).convert("RGB")
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        # A tRNS chunk (a transparent palette index, grey level or colour) is alpha in disguise.
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike, *, max_side: int | None = None) -> Image.Image:
    """Decode ``path`` into an upright 8-bit RGB image.

    Args:
        path: image file.
        max_side: when given, JPEGs are decoded at a reduced scale no smaller than this
            (a cheap win for huge photos that are resized for the model anyway).

    Raises:
        ImageLoadError: missing, empty, not an image, truncated, or over ``MAX_PIXELS``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageLoadError("file not found") from None
    except OSError as error:
        raise ImageLoadError(f"cannot read file: {error.strerror or error}") from None
    if size == 0:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                pixels = image.width * image.height
                if pixels > MAX_PIXELS:
                    raise ImageLoadError(
                        f"image too large: {image.width}x{image.height} = {pixels:,} pixels (limit {MAX_PIXELS:,})"
                    )
                if max_side and image.format == "JPEG":
                    image.draft("RGB", (max_side, max_side))
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
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

    Returns None if the file is unreadable.
    """
    try:
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
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    image.save(partial, format="JPEG", quality=85)
    partial.replace(target)
    return target
