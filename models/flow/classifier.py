"""A small MNIST classifier for evaluating generated digits (accuracy and Frechet distance features).

Architecture: Conv(1->32, 3x3) BN ReLU MaxPool -> Conv(32->64, 3x3) BN ReLU MaxPool -> Dropout ->
Linear(64*7*7 -> 128) ReLU (the penultimate "features", 128-d) -> Linear(128 -> 10). Trained with Adam
(lr decayed 10x over the run) on real digits with random +-2 px shifts (drawn from a seeded generator).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import CheckpointError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierConfig:
    """Widths of :class:`MNISTClassifier` (image_size must be divisible by 4)."""

    channels: tuple[int, int] = (32, 64)
    features: int = 128
    num_classes: int = 10
    image_size: int = 28


class MNISTClassifier(nn.Module):
    """``forward(x (B, 1, S, S) in [0, 1]) -> logits (B, K)``; ``features(x) -> (B, F)``."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        s = config.image_size // 4
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(c2 * s * s, config.features),
            nn.ReLU(),
        )
        self.head = nn.Linear(config.features, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class ClassifierTrainConfig:
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    max_shift: int = 2
    seed: int = 0


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of (B, C, H, W) by up to ``max_shift`` px (zero fill); returns a new tensor."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).tolist()
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, cfg: ClassifierTrainConfig | None = None
) -> MNISTClassifier:
    """Train on (N, 1, 28, 28) in [0, 1] / (N,) labels (CPU). Returns the model in eval mode."""
    cfg = cfg or ClassifierTrainConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = MNISTClassifier(ClassifierConfig(image_size=images.shape[-1]))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1 / max(1, cfg.epochs - 1)))
    g = torch.Generator().manual_seed(cfg.seed)
    n = images.shape[0]
    for epoch in range(cfg.epochs):
        t0, total = time.perf_counter(), 0.0
        model.train()
        perm = torch.randperm(n, generator=g)
        for b in range(0, n, cfg.batch_size):
            idx = perm[b : b + cfg.batch_size]
            x = random_shift(images[idx], cfg.max_shift, g)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        sched.step()
        logger.info("classifier epoch %d: loss %.4f (%.1fs)", epoch + 1, total / n, time.perf_counter() - t0)
    return model.eval()


@torch.no_grad()
def predict(model: MNISTClassifier, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, S, S) -> (predicted labels (N,), penultimate features (N, F) float64)."""
    model.eval()
    preds, feats = [], []
    for b in range(0, images.shape[0], batch_size):
        f = model.features(images[b : b + batch_size])
        feats.append(f.double())
        preds.append(model.head(f).argmax(1))
    return torch.cat(preds), torch.cat(feats)


def save_classifier(model: MNISTClassifier, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """``path`` (.safetensors, floats in fp16) + JSON config beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    doc = {"format": "mnist-classifier", "config": asdict(model.config), "metadata": metadata or {}}
    path.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")


def load_classifier(path: str | os.PathLike) -> MNISTClassifier:
    """Load a classifier written by :func:`save_classifier` (eval mode, float32, CPU)."""
    path = Path(path)
    try:
        doc = json.loads(path.with_suffix(".json").read_text())
        cfg = doc["config"]
        model = MNISTClassifier(ClassifierConfig(**{**cfg, "channels": tuple(cfg["channels"])}))
        model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()})
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot load classifier {path}: {e}") from e
    return model.eval()
