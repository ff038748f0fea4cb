"""Write the bundled demo dataset (data/fashion-mnist-demo) from ../shared/datasets.

Takes the first PER_CLASS images of each class of the Fashion-MNIST test set and writes
them as PNG files in one folder per class. Run once; the output is committed.

    python scripts/make_demo_data.py [--per-class 100]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from curation.idx import FASHION_MNIST_CLASSES, read_idx

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "datasets" / "fashion-mnist"
TARGET = ROOT / "data" / "fashion-mnist-demo"


# Near duplicates planted into the demo, so a new user's first analysis shows what the
# duplicate finder does: (class, position of the source image in its folder, edit).
NEAR_DUPLICATES = (
    ("t-shirt_top", 3, "mirror"), ("trouser", 7, "shift"), ("pullover", 11, "recrop"), ("dress", 15, "jpeg"),
    ("coat", 19, "brighter"), ("sandal", 23, "mirror"), ("shirt", 27, "blur"), ("sneaker", 31, "recrop"),
    ("bag", 35, "shift"), ("ankle_boot", 39, "jpeg"), ("bag", 43, "mirror+brighter"), ("dress", 47, "recrop+jpeg"),
)


def near_duplicate(image: Image.Image, edits: str) -> Image.Image:
    """A near-duplicate copy of a 28x28 image: mirrored, shifted, re-cropped, re-encoded, brightened or blurred."""
    import io

    from PIL import ImageChops, ImageEnhance, ImageFilter, ImageOps

    for edit in edits.split("+"):
        if edit == "mirror":
            image = ImageOps.mirror(image)
        elif edit == "shift":
            image = ImageChops.offset(image, 2, 1)
        elif edit == "recrop":
            image = image.resize(image.size, Image.Resampling.BICUBIC, box=(1.5, 1.5, image.width - 1.5, image.height - 1.5))
        elif edit == "jpeg":
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=55)
            image = Image.open(io.BytesIO(buffer.getvalue())).convert(image.mode)
        elif edit == "brighter":
            image = ImageEnhance.Brightness(image).enhance(1.25)
        elif edit == "blur":
            image = image.filter(ImageFilter.GaussianBlur(0.6))
        else:
            raise ValueError(f"unknown edit {edit!r}")
    return image


def plant_near_duplicates(target: Path = TARGET) -> list[Path]:
    """Write the :data:`NEAR_DUPLICATES` copies as ``near-duplicate-of-<source name>`` beside their sources."""
    written = []
    for class_name, position, edits in NEAR_DUPLICATES:
        sources = sorted((target / class_name).glob("fmnist_test_*.png"))
        source = sources[position]
        copy = target / class_name / f"near-duplicate-of-{source.name}"
        near_duplicate(Image.open(source), edits).save(copy, optimize=True)
        written.append(copy)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-class", type=int, default=100)
    args = parser.parse_args()
    images = read_idx(SOURCE / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(SOURCE / "t10k-labels-idx1-ubyte.gz")
    if TARGET.exists():
        shutil.rmtree(TARGET)
    for class_index, class_name in enumerate(FASHION_MNIST_CLASSES):
        folder = TARGET / class_name
        folder.mkdir(parents=True)
        for test_index in np.flatnonzero(labels == class_index)[: args.per_class]:
            Image.fromarray(images[test_index]).save(folder / f"fmnist_test_{test_index:05d}.png", optimize=True)
    plant_near_duplicates(TARGET)
    shutil.copy(SOURCE / "COPYRIGHT", TARGET / "COPYRIGHT")
    (TARGET / "README.md").write_text(
        "# Fashion-MNIST demo slice\n\n"
        f"The first {args.per_class} images of each class of the Fashion-MNIST test set\n"
        "(Zalando Research, MIT license: see COPYRIGHT), written as PNG files in one folder\n"
        "per class by `scripts/make_demo_data.py`. The file name keeps the test-set index.\n\n"
        f"Plus {len(NEAR_DUPLICATES)} planted near duplicates, `near-duplicate-of-<source>.png` beside their\n"
        "source (mirrored, shifted by 2 px, re-cropped, JPEG re-encoded, brightened or blurred),\n"
        "so that the demo's first analysis shows duplicate groups.\n"
    )


if __name__ == "__main__":
    main()
