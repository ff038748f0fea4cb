"""curation.images: every odd file decodes the way a viewer shows it, or fails with a reason."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import bad_images
from curation import images
from curation.images import ImageLoadError, image_info, load_rgb, thumbnail_path


def _assert_rgb8(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    array = np.asarray(image)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    return array


# ---- images that must decode, and decode correctly ---------------------------------------


def test_plain_rgb_jpeg_and_png_decode_to_their_size(tmp_path):
    for path in (bad_images.write_rgb_jpeg(tmp_path / "a.jpg"), bad_images.write_rgb_png(tmp_path / "a.png")):
        image = load_rgb(path)
        _assert_rgb8(image)
        assert image.size == (64, 48)


def test_png_decodes_pixel_exact(tmp_path):
    path = bad_images.write_rgb_png(tmp_path / "a.png", seed=7)
    assert np.array_equal(np.asarray(load_rgb(path)), bad_images._pattern(64, 48, seed=7))


def test_greyscale_mode_l_becomes_three_equal_channels(tmp_path):
    grey = np.arange(0, 250, 10, dtype=np.uint8).reshape(5, 5)
    Image.fromarray(grey).save(tmp_path / "l.png")
    array = _assert_rgb8(load_rgb(tmp_path / "l.png"))
    for channel in range(3):
        assert np.array_equal(array[..., channel], grey)


def test_cmyk_jpeg_decodes_to_the_rgb_colour_it_shows(tmp_path):
    path = bad_images.write_cmyk_jpeg(tmp_path / "cmyk.jpg")
    assert Image.open(path).mode == "CMYK"  # the fixture really is CMYK
    array = _assert_rgb8(load_rgb(path)).astype(int)
    red, green, blue = array[..., 0].mean(), array[..., 1].mean(), array[..., 2].mean()
    assert red > 235 and green < 25 and blue < 25, (red, green, blue)


def test_16bit_greyscale_png_is_stretched_to_the_full_8bit_range(tmp_path):
    path = bad_images.write_16bit_grey_png(tmp_path / "g16.png", width=51, low=1000, high=3000)
    assert Image.open(path).mode.startswith("I")  # stored as wide greyscale
    array = _assert_rgb8(load_rgb(path)).astype(int)
    assert array.shape == (20, 51, 3)
    # Grey: three equal channels.
    assert np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2])
    row = array[0, :, 0]
    # Stretched, not clipped: clipping 1000..3000 at 255 would make every pixel white.
    assert row.min() == 0 and row.max() == 255
    assert np.all(np.diff(row) >= 0), "the ramp must stay monotonic"
    assert abs(int(row[25]) - 128) <= 2, "the middle of the ramp maps to mid-grey"


def test_constant_16bit_image_does_not_divide_by_zero(tmp_path):
    Image.fromarray(np.full((4, 6), 4000, dtype=np.uint16)).save(tmp_path / "flat16.png")
    array = _assert_rgb8(load_rgb(tmp_path / "flat16.png"))
    assert array.shape == (4, 6, 3)
    assert len(np.unique(array)) == 1


def test_float_image_with_nan_is_finite_and_stretched(tmp_path):
    data = np.array([[np.nan, 0.5], [1.0, 2.5]], dtype=np.float32)
    Image.fromarray(data).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    grey = _assert_rgb8(load_rgb(tmp_path / "float.tif"))[..., 0].astype(int)
    assert grey[0, 0] == 0, "no-data (NaN) shows as black"
    assert grey[0, 1] == 0 and grey[1, 1] == 255  # 0.5 is the lowest finite value, 2.5 the highest
    assert grey[1, 0] == round(255 * 0.25)


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12)))
def test_16bit_decoding_preserves_order_and_uses_the_full_range(values):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.png"
        Image.fromarray(values).save(path)
        grey = _assert_rgb8(load_rgb(path))[..., 0].astype(int)
    assert grey.shape == values.shape
    if values.min() == values.max():
        assert len(np.unique(grey)) == 1
        return
    assert grey.min() == 0 and grey.max() == 255
    flat_in, flat_out = values.ravel().astype(int), grey.ravel()
    order = np.argsort(flat_in, kind="stable")
    assert np.all(np.diff(flat_out[order]) >= 0), "a brighter 16-bit pixel never decodes darker"


def test_palette_png_with_transparency_is_composited_on_white(tmp_path):
    path = bad_images.write_palette_png_with_transparency(tmp_path / "p.png", width=20, height=10)
    opened = Image.open(path)
    assert opened.mode == "P" and "transparency" in opened.info
    array = _assert_rgb8(load_rgb(path))
    assert np.all(array[:, :10] == (255, 255, 255)), "the transparent half shows the white background"
    assert np.all(array[:, 10:] == (0, 0, 255)), "the opaque half keeps its colour"


def test_rgba_png_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[0, 0, 3] = 0  # transparent
    rgba[0, 1, 3] = 255  # opaque
    rgba[1, :, 3] = 128  # half
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    array = _assert_rgb8(load_rgb(tmp_path / "rgba.png")).astype(int)
    assert tuple(array[0, 0]) == (255, 255, 255)
    assert tuple(array[0, 1]) == (255, 0, 0)
    assert 255 == array[1, 0, 0] and 120 <= array[1, 0, 1] <= 135  # half red over white is pink


@pytest.mark.parametrize("mode, transparent, other", [("L", 0, 200), ("RGB", (0, 0, 0), (0, 200, 0))])
def test_trns_chunk_on_grey_and_rgb_pngs_is_composited_on_white(tmp_path, mode, transparent, other):
    image = Image.new(mode, (2, 1), transparent)
    image.putpixel((1, 0), other)
    image.save(tmp_path / "t.png", transparency=transparent)
    array = _assert_rgb8(load_rgb(tmp_path / "t.png"))
    assert tuple(array[0, 0]) == (255, 255, 255), "the transparent colour is background, not black"
    expected = (other,) * 3 if mode == "L" else other
    assert tuple(array[0, 1]) == expected


@pytest.mark.parametrize("max_side", [None, 16])
def test_exif_rotated_jpeg_is_returned_upright(tmp_path, max_side):
    path = bad_images.write_exif_rotated_jpeg(tmp_path / "r.jpg", width=60, height=20)
    stored = Image.open(path)
    assert stored.size == (60, 20) and stored.getexif()[bad_images.EXIF_ORIENTATION] == 6
    image = load_rgb(path, max_side=max_side)
    assert image.size == (20, 60), "orientation 6 turns a landscape file into a portrait picture"
    # Orientation 6 means "rotate 90 degrees clockwise to view".
    expected = np.asarray(stored.convert("RGB").transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(np.asarray(image), expected)


def test_max_side_decodes_a_big_jpeg_smaller_but_never_below_max_side(tmp_path):
    path = bad_images.write_rgb_jpeg(tmp_path / "big.jpg", width=1024, height=768)
    image = load_rgb(path, max_side=128)
    assert image.width < 1024 and image.height < 768
    assert min(image.size) >= 128
    assert load_rgb(path).size == (1024, 768)


# ---- images that must be skipped with a reason -------------------------------------------


@pytest.mark.parametrize(
    "make, phrase",
    [
        (lambda folder: bad_images.write_truncated(folder / "t.jpg", "JPEG", keep=0.5), "truncated or corrupt"),
        (lambda folder: bad_images.write_truncated(folder / "t.png", "PNG", keep=0.5), "truncated or corrupt"),
        # Cut inside the headers: PIL says "Truncated File Read", capitalised.
        (lambda folder: bad_images.write_truncated(folder / "t.jpg", "JPEG", keep=0.02), "truncated or corrupt"),
        (lambda folder: bad_images.write_zero_bytes(folder / "empty.jpg"), "empty file"),
        (lambda folder: bad_images.write_text_as_image(folder / "readme.jpg"), "not an image"),
        (lambda folder: folder / "does-not-exist.png", "file not found"),
    ],
    ids=["truncated-jpeg", "truncated-png", "jpeg-cut-in-header", "zero-bytes", "text-as-jpeg", "missing"],
)
def test_bad_file_raises_image_load_error_with_a_one_line_reason(tmp_path, make, phrase):
    path = make(tmp_path)
    with pytest.raises(ImageLoadError) as caught:
        load_rgb(path)
    reason = str(caught.value)
    assert phrase in reason
    assert "\n" not in reason


def test_png_with_corrupt_data_is_reported_as_corrupt(tmp_path):
    path = bad_images.write_rgb_png(tmp_path / "c.png", width=64, height=64)
    data = bytearray(path.read_bytes())
    data[200:220] = b"x" * 20
    path.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match="corrupt"):
        load_rgb(path)


def test_a_directory_is_not_an_image(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageLoadError):
        load_rgb(tmp_path / "folder.jpg")


def test_image_over_max_pixels_is_skipped_as_too_large(tmp_path, monkeypatch):
    path = bad_images.write_large_png(tmp_path / "huge.png", width=300, height=200)
    monkeypatch.setattr(images, "MAX_PIXELS", 59_999)
    with pytest.raises(ImageLoadError, match="too large") as caught:
        load_rgb(path)
    assert "300x200" in str(caught.value) and "59,999" in str(caught.value)


def test_image_at_exactly_max_pixels_is_decoded(tmp_path, monkeypatch):
    path = bad_images.write_large_png(tmp_path / "edge.png", width=300, height=200)
    monkeypatch.setattr(images, "MAX_PIXELS", 60_000)
    assert load_rgb(path).size == (300, 200)


def test_unexpected_decoder_exception_becomes_image_load_error(tmp_path, monkeypatch):
    path = bad_images.write_rgb_png(tmp_path / "a.png")

    def broken_transpose(image):
        raise IndexError("tuple index out of range")  # what a broken EXIF block can raise

    monkeypatch.setattr(images.ImageOps, "exif_transpose", broken_transpose)
    with pytest.raises(ImageLoadError, match="IndexError"):
        load_rgb(path)


# ---- image_info ---------------------------------------------------------------------------


def test_image_info_reads_the_size_from_the_header(tmp_path):
    assert image_info(bad_images.write_rgb_png(tmp_path / "a.png", width=31, height=17)) == (31, 17)


def test_image_info_agrees_with_load_rgb_on_exif_rotated_files(tmp_path):
    path = bad_images.write_exif_rotated_jpeg(tmp_path / "r.jpg", width=60, height=20)
    assert image_info(path) == load_rgb(path).size == (20, 60)


@pytest.mark.parametrize("make", [bad_images.write_zero_bytes, bad_images.write_text_as_image, lambda path: path])
def test_image_info_is_none_for_unreadable_files(tmp_path, make):
    assert image_info(make(tmp_path / "x.jpg")) is None


# ---- thumbnails ---------------------------------------------------------------------------


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CURATION_CACHE_DIR", str(cache))
    return cache


def test_thumbnail_is_a_small_jpeg_inside_the_cache(tmp_path, own_cache):
    source = bad_images.write_rgb_png(tmp_path / "big.png", width=400, height=200)
    thumb = thumbnail_path(source, size=64)
    assert thumb is not None and thumb.is_file()
    assert own_cache in thumb.parents
    with Image.open(thumb) as image:
        assert image.format == "JPEG"
        assert image.size == (64, 32), "fits in size x size and keeps the aspect ratio"


def test_tiny_images_are_upscaled_to_half_the_thumbnail_size(tmp_path, own_cache):
    source = tmp_path / "mnist.png"
    Image.new("L", (28, 28), 128).save(source)
    with Image.open(thumbnail_path(source, size=128)) as image:
        assert image.size == (64, 64)


def test_thumbnail_is_reused_and_rebuilt_when_the_file_changes(tmp_path, own_cache, monkeypatch):
    source = bad_images.write_rgb_png(tmp_path / "a.png", width=80, height=80)
    first = thumbnail_path(source, size=32)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached thumbnail must not decode the image again")

    with monkeypatch.context() as patch:
        patch.setattr(images, "load_rgb", no_decoding)
        assert thumbnail_path(source, size=32) == first

    bad_images.write_rgb_png(source, width=90, height=60, seed=3)
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = thumbnail_path(source, size=32)
    assert second != first and second.is_file()
    with Image.open(second) as image:
        assert image.size == (32, 21)


def test_thumbnail_is_none_for_bad_and_missing_files(tmp_path, own_cache):
    assert thumbnail_path(bad_images.write_truncated(tmp_path / "t.jpg")) is None
    assert thumbnail_path(tmp_path / "missing.png") is None
    assert not list(own_cache.rglob("*.partial"))
