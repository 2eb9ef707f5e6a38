"""The segmentation model, rebuilt from a ModelConfig; ImageNet encoder weights only from the local cache."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.inference.config import ModelConfig
from training.inference.images import write_atomic

log = logging.getLogger(__name__)

# Where ImageNet weights for the encoder may already lie: segmentation-models-pytorch's Hugging Face repository,
# or torchvision's checkpoint (same layer names; smp drops the classifier).
HF_WEIGHTS = {"mobilenet_v2": ("smp-hub/mobilenet_v2.imagenet", "e67aa804e17f7b404b629127eabbd224c4e0690b")}
TORCHVISION_WEIGHTS = {"mobilenet_v2": ("mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth")}


def build_model(config: ModelConfig) -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet(
        config.encoder,
        encoder_weights=None,
        decoder_channels=config.decoder_channels,
        in_channels=config.in_channels,
        classes=config.out_channels,
    )


def cached_encoder_weights(encoder: str) -> Path | None:
    """Path of ImageNet weights for `encoder` already on this machine, or None. Never downloads."""
    if encoder in HF_WEIGHTS:
        try:
            from huggingface_hub import try_to_load_from_cache

            repo, revision = HF_WEIGHTS[encoder]
            found = try_to_load_from_cache(repo, "model.safetensors", revision=revision)
            if isinstance(found, str):
                return Path(found)
        except ImportError:
            pass
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for name in TORCHVISION_WEIGHTS.get(encoder, ()):
        if (checkpoints / name).exists():
            return checkpoints / name
    return None


def load_pretrained_encoder(model: nn.Module, encoder: str) -> bool:
    """Load cached ImageNet weights into the encoder; say in one line when there are none (random init)."""
    path = cached_encoder_weights(encoder)
    if path is None:
        log.warning(
            "no ImageNet weights for %s in the local cache (Hugging Face or torch hub); nothing is downloaded: "
            "the encoder starts from random initialisation",
            encoder,
        )
        return False
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.encoder.load_state_dict(adapt_input_channels(state, model.encoder.state_dict()))
    log.info("encoder initialised from ImageNet weights in %s", path)
    return True


def adapt_input_channels(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ImageNet weights for an encoder whose first convolution takes another number of channels (our input is not
    RGB): that convolution's kernels repeat cyclically over the new channels, scaled by old / new channels, so a
    constant input still gives the same response (as segmentation-models-pytorch does for its own weights)."""
    adapted = dict(state)
    for key, weight in state.items():
        wanted = target.get(key)
        if (
            wanted is not None
            and weight.ndim == 4
            and wanted.shape != weight.shape
            and wanted.shape[0] == weight.shape[0]
        ):
            old, new = weight.shape[1], wanted.shape[1]
            adapted[key] = weight[:, [k % old for k in range(new)]] * (old / new)
    return adapted


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of the weights: tells which float model an int8 artifact was made from."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_checkpoint(path: Path, config: ModelConfig, state_dict: dict[str, torch.Tensor], **extra: Any) -> None:
    """Write {model_config, state_dict, ...} atomically. Contents are tensors and plain Python values only, so
    `torch.load(..., weights_only=True)` reads them."""
    buffer = io.BytesIO()
    torch.save({"model_config": config.to_dict(), "state_dict": state_dict, **extra}, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[ModelConfig, nn.Module, dict[str, Any]]:
    """Rebuild the model from the checkpoint's ModelConfig and load its weights (weights_only: no code runs)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    payload = torch.load(path, map_location=device, weights_only=True)
    if "model_config" not in payload or "state_dict" not in payload:
        raise ValueError(f"{path} is not a checkpoint of this project (no model_config / state_dict)")
    config = ModelConfig.from_dict(payload["model_config"])
    model = build_model(config)
    model.load_state_dict(payload["state_dict"])
    return config, model.to(device).eval(), payload
