"""Prompt embeddings: the T5 encoder of IF and a per-process (optionally on-disk) embedding cache.

Shapes: a list of B prompts -> (B, L, D) embeddings, L = 77 tokens (IF's training length; padding to the
maximum length, T5 sees the attention mask, the UNet does not), D = the T5 width (4096 for T5 v1.1 XXL).
Prompts are lower-cased and stripped first, like diffusers' ``IFPipeline`` with ``clean_caption=False``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EmbeddingCache", "T5PromptEncoder", "normalize_prompt"]

logger = logging.getLogger(__name__)


def normalize_prompt(prompt: str) -> str:
    """IF's text preprocessing without caption cleaning: lower-case and strip."""
    return prompt.lower().strip()


class T5PromptEncoder:
    """Tokenizer + ``T5EncoderModel`` as a callable ``prompts -> (B, L, D)`` (on the CPU).

    Args:
        tokenizer: a T5 tokenizer.
        text_encoder: ``T5EncoderModel`` (any device and dtype; 8-bit models are left where they are).
        max_length: tokens per prompt (77 for IF).
        offload_to: if set, the encoder is kept on the CPU and moved to this device for each call only.
    """

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: nn.Module,
        *,
        max_length: int = 77,
        offload_to: torch.device | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_length = max_length
        self.offload_to = offload_to

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> Tensor:
        texts = [normalize_prompt(p) for p in prompts]
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        full = self.tokenizer(texts, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > self.max_length:
            logger.warning("prompt truncated to %d tokens", self.max_length)
        if self.offload_to is not None:
            self.text_encoder.to(self.offload_to)
        try:
            device = self.device
            out = self.text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]
        finally:
            if self.offload_to is not None:
                self.text_encoder.to("cpu")
        return out.cpu()


def _key(namespace: str, prompt: str) -> str:
    return hashlib.sha256(f"{namespace}\0{prompt}".encode()).hexdigest()


class EmbeddingCache:
    """Embeds each distinct prompt once per process; optionally persists embeddings as safetensors files.

    Args:
        encode: ``prompts -> (B, L, D)`` (e.g. ``T5PromptEncoder``), called only for prompts not cached.
        namespace: distinguishes models in the disk cache (the model name or directory).
        cache_dir: directory for ``<sha256(namespace, prompt)>.safetensors`` files, or None for memory only.

    ``misses`` counts prompts actually sent to ``encode``.
    """

    def __init__(
        self,
        encode: Callable[[Sequence[str]], Tensor],
        *,
        namespace: str = "",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.encode = encode
        self.namespace = namespace
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.memory: dict[str, Tensor] = {}
        self.misses = 0

    def _load(self, prompt: str) -> Tensor | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{_key(self.namespace, prompt)}.safetensors"
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("prompt") != prompt or meta.get("namespace") != self.namespace:
                    return None
                return f.get_tensor("embeds")
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file only costs a re-encode
            logger.warning("ignoring unreadable embedding cache file %s: %s", path, exc)
            return None

    def _store(self, prompt: str, embeds: Tensor) -> None:
        if self.cache_dir is None:
            return
        from safetensors.torch import save_file

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.cache_dir / f"{_key(self.namespace, prompt)}.safetensors"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({"embeds": embeds.contiguous()}, str(tmp), metadata={"prompt": prompt, "namespace": self.namespace})
        os.replace(tmp, path)

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        """(B, L, D) CPU embeddings for ``prompts`` (in the encoder's dtype)."""
        keys = [normalize_prompt(p) for p in prompts]
        todo = [k for k in dict.fromkeys(keys) if k not in self.memory]
        for k in list(todo):
            loaded = self._load(k)
            if loaded is not None:
                self.memory[k] = loaded
                todo.remove(k)
        if todo:
            encoded = self.encode(todo)
            self.misses += len(todo)
            for k, e in zip(todo, encoded, strict=True):
                self.memory[k] = e.detach().cpu().clone()
                self._store(k, self.memory[k])
        return torch.stack([self.memory[k] for k in keys])
