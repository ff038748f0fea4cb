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
    shutil.copy(SOURCE / "COPYRIGHT", TARGET / "COPYRIGHT")
    (TARGET / "README.md").write_text(
        "# Fashion-MNIST demo slice\n\n"
        f"The first {args.per_class} images of each class of the Fashion-MNIST test set\n"
        "(Zalando Research, MIT license: see COPYRIGHT), written as PNG files in one folder\n"
        "per class by `scripts/make_demo_data.py`. The file name keeps the test-set index.\n"
    )


if __name__ == "__main__":
    main()
