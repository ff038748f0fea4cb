"""Shared fixtures. Every test session gets its own FiftyOne database and caches.

The environment is set at import time, before anything imports fiftyone, so the tests
never touch the user's datasets (``~/.fiftyone``) or a server named by
``FIFTYONE_DATABASE_URI``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="curation-tests-"))
os.environ.pop("FIFTYONE_DATABASE_URI", None)
os.environ["FIFTYONE_DATABASE_DIR"] = str(_SESSION_DIR / "mongo")
os.environ["CURATION_CACHE_DIR"] = str(_SESSION_DIR / "cache")
os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on the hub in tests
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

ROOT = Path(__file__).resolve().parents[1]
DEMO_SOURCE = ROOT / "data" / "fashion-mnist-demo"
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"


def pytest_sessionfinish(session, exitstatus):
    stop_private_mongod(_MONGOD)
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def small_class_tree(tmp_path_factory) -> Path:
    """A copy of the demo data with 6 images of each of its 10 classes (60 images)."""
    target = tmp_path_factory.mktemp("small-tree")
    for class_dir in sorted(p for p in DEMO_SOURCE.iterdir() if p.is_dir()):
        (target / class_dir.name).mkdir()
        for image in sorted(class_dir.glob("*.png"))[:6]:
            shutil.copy(image, target / class_dir.name / image.name)
    return target


@pytest.fixture(scope="session")
def embedded_dataset(small_class_tree):
    """A 60-sample labelled FiftyOne dataset embedded with the offline model (real weights)."""
    from curation.embeddings import compute_embeddings
    from curation.importers import import_dataset
    from curation.datasets import load_dataset

    import_dataset(small_class_tree, "test-embedded", format="classes", overwrite=True)
    dataset = load_dataset("test-embedded")
    compute_embeddings(dataset, model="efficientnet-lite0-imagenet", num_workers=0)
    return dataset


@pytest.fixture
def fresh_name(request) -> str:
    """A dataset name unique to the test, deleted afterwards."""
    import re

    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:60]
    yield name
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)


# FiftyOne finds its database service by command line ("--51-service db --multi"), not by
# FIFTYONE_DATABASE_DIR: while any other FiftyOne process of this user runs (the app, another
# test session), this session attaches to that process's mongod and would read and overwrite
# its datasets. A database name of this session's own keeps the datasets apart in any mongod.
os.environ["FIFTYONE_DATABASE_NAME"] = _SESSION_DIR.name  # "curation-tests-XXXXXXXX"


@pytest.fixture(scope="session", autouse=True)
def _drop_session_database():
    """Drop this session's database at the end, in case it lives in another process's mongod.

    FiftyOne's exit hook queries the database after ``pytest_sessionfinish`` has stopped the
    private mongod; bounded, it gives up in a second instead of waiting 30 s.
    """
    from curation.database import bound_fiftyone_exit_hook

    bound_fiftyone_exit_hook()
    yield
    import sys

    database = sys.modules.get("fiftyone.core.odm.database")
    if database is not None and database._client is not None:
        database.drop_database()


@pytest.fixture(scope="session")
def offline_embedder():
    """EfficientNet-Lite0 with its real ImageNet weights on the CPU (they ship in a package)."""
    from curation.models import load_embedder

    return load_embedder("efficientnet-lite0-imagenet", device="cpu")


TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random-weight 32-d open_clip model saved as a local checkpoint, registered as
    ``tiny-clip-test``. Returns ``(checkpoint_path, reference_model)``; the reference is the
    torch module whose weights were saved, in eval mode."""
    import json

    import open_clip
    import torch

    from curation.models import MODEL_REGISTRY, ModelSpec, register_model

    folder = tmp_path_factory.mktemp("tiny-clip")
    (folder / "configs").mkdir()
    (folder / "configs" / "curation-tiny-clip.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder / "configs")
    torch.manual_seed(0)
    model = open_clip.create_model("curation-tiny-clip")
    checkpoint = folder / "tiny-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    register_model(ModelSpec(name="tiny-clip-test", family="open_clip", architecture="curation-tiny-clip", pretrained=None,
                             description="random 32-d CLIP for tests"))
    yield checkpoint, model.eval()
    MODEL_REGISTRY.pop("tiny-clip-test", None)

# A mongod of this session's own, reached by URI. Without it FiftyOne would start its shared
# database service ("--51-service db") on FIFTYONE_DATABASE_DIR, and every other FiftyOne
# process of the user started meanwhile (the app, a CLI run) would attach to that service
# and write its datasets into this temporary directory, lost when the session ends.
from curation.database import start_private_mongod, stop_private_mongod  # noqa: E402  (imports no fiftyone)

_MONGOD = start_private_mongod(_SESSION_DIR)
_SESSION_DATABASE_URI = os.environ["FIFTYONE_DATABASE_URI"]


@pytest.fixture(scope="session")
def session_database_uri() -> str:
    """The URI of this session's own mongod (for tests that hide FIFTYONE_DATABASE_URI)."""
    return _SESSION_DATABASE_URI

import sys  # noqa: E402

# Had anything imported fiftyone above, its config would predate these variables and the
# tests would read and drop the user's default database: refuse to run instead.
assert "fiftyone" not in sys.modules, "conftest: fiftyone was imported before its database settings were made"
