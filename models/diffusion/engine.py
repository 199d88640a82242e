"""Loading DeepFloyd IF (stage I and the optional stage-II upscaler) into resident engines.

Both stages load through diffusers/transformers ``from_pretrained`` from a hub id (``DeepFloyd/IF-I-XL-v1.0``,
``DeepFloyd/IF-II-L-v1.0``) or a local directory in the diffusers layout (``unet/``, ``scheduler/``,
``tokenizer/``, ``text_encoder/``; stage II also ``image_noising_scheduler/``), e.g. one written by
``models.diffusion.tiny.build_tiny_if``. Nothing here reads settings or environment variables: the caller
passes the model name, device and dtype.

Precision (``resolve_precision``): ``dtype=None`` means float16 on CUDA and float32 elsewhere; ``variant="auto"``
means the ``fp16`` weight files when the dtype is float16, the default (full precision) files otherwise. A local
directory without fp16 files falls back to its default files (with a log line).

The UNet stays resident on ``device``. The T5 encoder is only used to embed prompts (each prompt once per
process through ``EmbeddingCache``) and may live elsewhere: ``text_encoder_device=None`` (with the UNet),
``"cpu"`` (float16 becomes bfloat16 there), ``"offload"`` (kept on the CPU, moved to ``device`` per encode),
or 8-bit with ``text_encoder_8bit=True`` (needs the ``bitsandbytes`` package and CUDA).

Missing, gated or unreachable weights raise ``ModelUnavailableError`` with instructions.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .adapter import IFAdapter, IFSuperResAdapter
from .schedule import DDPMSchedule, StridedTimesteps, strided_timesteps
from .text import EmbeddingCache, T5PromptEncoder

__all__ = [
    "DEFAULT_STAGE1_MODEL",
    "DEFAULT_STAGE2_MODEL",
    "IFEngine",
    "ModelUnavailableError",
    "Stage2Engine",
    "load_prompt_encoder",
    "load_stage1",
    "load_stage2",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

DEFAULT_STAGE1_MODEL = "DeepFloyd/IF-I-XL-v1.0"
DEFAULT_STAGE2_MODEL = "DeepFloyd/IF-II-L-v1.0"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelUnavailableError(RuntimeError):
    """The IF weights could not be loaded (missing, gated, unreachable or incomplete); the message says why
    and how to get them."""


@dataclass
class IFEngine:
    """A resident stage-I model: UNet, scheduler, prompt encoder and embedding cache.

    Attributes:
        unet: IF UNet (6 output channels: eps and learned-range variance), resident on ``device``.
        scheduler: the diffusers ``DDPMScheduler`` of the model (only its config and ``alphas_cumprod`` are used).
        text: ``prompts -> (B, L, D)`` embeddings (``T5PromptEncoder`` or any callable, e.g. in benchmarks).
        device: where sampling runs.
        dtype: the UNet's dtype.
        image_size: the UNet's ``sample_size`` (64 for IF-I-XL).
        cache: per-process prompt cache around ``text`` (created if None).
        name: model id or directory (the disk cache namespace).
    """

    unet: Any  # a diffusers UNet2DConditionModel
    scheduler: Any
    text: Callable[[Sequence[str]], Tensor]
    device: torch.device
    dtype: torch.dtype
    image_size: int
    cache: EmbeddingCache | None = None
    name: str = ""
    schedule: DDPMSchedule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.schedule = DDPMSchedule.from_scheduler(self.scheduler)
        if self.cache is None:
            self.cache = EmbeddingCache(self.text, namespace=self.name)

    @classmethod
    def from_components(
        cls,
        unet: Any,
        scheduler: Any,
        text: Callable[[Sequence[str]], Tensor],
        *,
        embedding_cache_dir: str | os.PathLike[str] | None = None,
        name: str = "",
        **extra: Any,
    ) -> IFEngine:
        """An engine around an already placed UNet; device, dtype and image size come from the UNet."""
        param = next(unet.parameters())
        cache = EmbeddingCache(text, namespace=name, cache_dir=embedding_cache_dir)
        return cls(
            unet=unet,
            scheduler=scheduler,
            text=text,
            device=param.device,
            dtype=param.dtype,
            image_size=int(unet.config.sample_size),
            cache=cache,
            name=name,
            **extra,
        )

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """(B, L, D) embeddings of ``prompts`` on ``device`` in ``dtype``; each prompt is embedded once."""
        assert self.cache is not None
        return self.cache(list(prompts)).to(self.device, self.dtype)

    def timesteps(self, stride: int = 30, *, start: int | None = None) -> StridedTimesteps:
        """Strided timesteps over this model's schedule (990, 960, ..., 0 for stride 30)."""
        return strided_timesteps(self.schedule, stride, start=start)

    @property
    def adapter(self) -> IFAdapter:
        """The denoiser over ``unet``; one object per UNet, so that requests can share a forward."""
        cached = self.__dict__.get("_adapter")
        if cached is None or cached.unet is not self.unet:
            cached = self.__dict__["_adapter"] = IFAdapter(self.unet)
        return cached


@dataclass
class Stage2Engine(IFEngine):
    """A resident stage-II (super-resolution) model; ``image_size`` is its output size (256 for IF-II-L).

    Extra attributes:
        image_noising_scheduler: ``DDPMScheduler`` used to noise the upscaled stage-I image.
        noise_schedule: ``DDPMSchedule`` of that scheduler.
    """

    image_noising_scheduler: Any = None
    noise_schedule: DDPMSchedule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_noising_scheduler is None:
            raise ValueError("Stage2Engine needs an image_noising_scheduler")
        self.noise_schedule = DDPMSchedule.from_scheduler(self.image_noising_scheduler)

    @property
    def adapter(self) -> IFSuperResAdapter:  # type: ignore[override]
        """The stage-II denoiser over ``unet`` (the upscaled image and its noise level are per-row inputs)."""
        cached = self.__dict__.get("_adapter")
        if cached is None or cached.unet is not self.unet:
            cached = self.__dict__["_adapter"] = IFSuperResAdapter(self.unet)
        return cached


def resolve_precision(
    device: str | torch.device, dtype: torch.dtype | None = None, variant: str | None = "auto"
) -> tuple[torch.dtype, str | None]:
    """(dtype, variant): float16 + "fp16" files on CUDA by default, float32 + default files elsewhere."""
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if variant == "auto":
        variant = "fp16" if dtype == torch.float16 else None
    return dtype, variant


def _help(model: str, stage: str, setting: str, reason: str) -> str:
    repo = (
        model
        if _HUB_ID.match(model)
        else (DEFAULT_STAGE2_MODEL if setting == "IF_STAGE2_MODEL" else DEFAULT_STAGE1_MODEL)
    )
    return (
        f"Cannot load the DeepFloyd IF {stage} model {model!r}: {reason}\n"
        f"The DeepFloyd IF weights are gated. To use them: accept the license on "
        f"https://huggingface.co/{repo} while logged in to "
        f"the Hugging Face hub, then log in on this machine (`huggingface-cli login` or an HF_TOKEN "
        f"environment variable); or download the model once and point the {setting} setting at the local "
        f"directory (diffusers layout: unet/, scheduler/, tokenizer/, text_encoder/)."
    )


@dataclass(frozen=True)
class _Source:
    model: str
    stage: str
    setting: str
    local_files_only: bool

    def load(self, loader: Callable[..., Any], subfolder: str, **kwargs: Any) -> Any:
        """``loader(model, subfolder=..., **kwargs)`` with hub and file errors turned into ModelUnavailableError."""
        from huggingface_hub.errors import EntryNotFoundError, HFValidationError

        try:
            return loader(self.model, subfolder=subfolder, local_files_only=self.local_files_only, **kwargs)
        except (OSError, EntryNotFoundError, HFValidationError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelUnavailableError(
                _help(self.model, self.stage, self.setting, f"{subfolder}: {type(exc).__name__}: {first}")
            ) from exc


def _source(model: str | os.PathLike[str], stage: str, setting: str, local_files_only: bool) -> _Source:
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        return _Source(str(path), stage, setting, True)
    if not _HUB_ID.match(text):
        raise ModelUnavailableError(_help(text, stage, setting, "no such local directory, and not a hub model id"))
    if local_files_only:
        return _Source(text, stage, setting, True)
    unreachable = hub_unreachable()
    if unreachable is None:
        return _Source(text, stage, setting, False)
    # Offline: use the local cache if it has the model, else fail now rather than after the hub client's retries.
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(text, "unet/config.json"), str):
        logger.info("the Hugging Face hub is unreachable (%s); loading %s from the local cache", unreachable, text)
        return _Source(text, stage, setting, True)
    raise ModelUnavailableError(
        _help(
            text,
            stage,
            setting,
            (
                f"the Hugging Face hub ({constants.ENDPOINT}) is unreachable from this machine ({unreachable}) and the "
                f"model is not in the local cache ({constants.HF_HUB_CACHE})"
            ),
        )
    )


def hub_unreachable(timeout_s: float = 5.0) -> str | None:
    """None when the Hugging Face hub answers (any HTTP status), else why not; one request, no retries.

    ``HF_HUB_OFFLINE=1`` counts as unreachable. The hub client's own retries (about half a minute per file
    when there is no network) are what this check saves the worker's start from.
    """
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - any failure to get an answer means: not reachable
        return f"{type(exc).__name__}: {exc}"
    return None


def _unet_kwargs(dtype: torch.dtype, variant: str | None) -> dict[str, Any]:
    import importlib.util

    # Without accelerate, diffusers falls back to a full random init (and says so); say it explicitly instead.
    return {
        "torch_dtype": dtype,
        "variant": variant,
        "low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None,
    }


def _local_variant(src: _Source, variant: str | None) -> str | None:
    """Use the default weight files of a local directory that has no files of ``variant``."""
    return _local_variant_of(src, "unet", variant)


def _local_variant_of(src: _Source, subfolder: str, variant: str | None) -> str | None:
    if variant is None or not Path(src.model).is_dir():
        return variant
    if any((Path(src.model) / subfolder).glob(f"*.{variant}.*")):
        return variant
    logger.info("%s has no %s weight files; loading its default weights", src.model, variant)
    return None


class _LoadedUNet(NamedTuple):
    src: _Source
    dtype: torch.dtype
    variant: str | None
    unet: Any
    scheduler: Any


def _load_unet(
    model: str | os.PathLike[str],
    stage: str,
    setting: str,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    variant: str | None,
    local_files_only: bool,
) -> _LoadedUNet:
    """What both stages load alike: precision and source resolved, the UNet resident on ``device`` in eval mode
    without gradients, and the ``scheduler`` subfolder."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    dtype, variant = resolve_precision(device, dtype, variant)
    src = _source(model, stage, setting, local_files_only)
    variant = _local_variant(src, variant)
    unet = src.load(UNet2DConditionModel.from_pretrained, "unet", **_unet_kwargs(dtype, variant))
    unet = unet.to(device).eval().requires_grad_(False)
    return _LoadedUNet(src, dtype, variant, unet, src.load(DDPMScheduler.from_pretrained, "scheduler"))


def _load_text(
    src: _Source,
    *,
    device: torch.device,
    dtype: torch.dtype,
    variant: str | None,
    text_encoder_device: str | torch.device | None,
    text_encoder_8bit: bool,
    embedding_cache_dir: str | os.PathLike[str] | None,
) -> tuple[T5PromptEncoder, EmbeddingCache]:
    """The tokenizer and T5 of ``src`` as a prompt encoder, and its embedding cache (namespaced by model and
    encoder dtype, so embeddings of another model or precision are never reused)."""
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = src.load(AutoTokenizer.from_pretrained, "tokenizer")
    offload_to: torch.device | None = None
    if text_encoder_device == "offload":
        te_device, offload_to = torch.device("cpu"), device
    else:
        te_device = torch.device(text_encoder_device) if text_encoder_device is not None else device
    te_dtype = dtype
    if te_device.type == "cpu" and offload_to is None and dtype == torch.float16:
        te_dtype = torch.bfloat16  # CPU matmuls in float16 are slow; bfloat16 keeps the memory saving
    import transformers

    version = tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    # transformers >= 4.56 calls the argument `dtype`; older releases only know `torch_dtype`
    kwargs: dict[str, Any] = {"dtype" if version >= (4, 56) else "torch_dtype": te_dtype, "variant": variant}
    if text_encoder_8bit:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None or device.type != "cuda":
            raise ValueError("text_encoder_8bit needs CUDA and the bitsandbytes package")
        from transformers import BitsAndBytesConfig

        kwargs.update(quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": device.index or 0})
    encoder = src.load(T5EncoderModel.from_pretrained, "text_encoder", **kwargs).eval()
    if not text_encoder_8bit:
        encoder.to(te_device)
    text = T5PromptEncoder(tokenizer, encoder, offload_to=offload_to)
    return text, EmbeddingCache(text, namespace=f"{src.model}|{text.text_encoder.dtype}", cache_dir=embedding_cache_dir)


def load_prompt_encoder(
    model: str | os.PathLike[str] = DEFAULT_STAGE1_MODEL,
    *,
    device: str | torch.device,
    dtype: torch.dtype | None = None,
    variant: str | None = "auto",
    text_encoder_device: str | torch.device | None = None,
    text_encoder_8bit: bool = False,
    embedding_cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> tuple[T5PromptEncoder, EmbeddingCache]:
    """The T5 prompt encoder of a stage-I model (``tokenizer/`` and ``text_encoder/``) placed as ``load_stage1``
    places it, and its embedding cache, without the UNet (benchmarks of the T5 placements).

    The placements: on ``device`` in ``dtype`` (``text_encoder_device=None``); 8-bit on ``device``
    (``text_encoder_8bit=True``: CUDA and bitsandbytes); on the CPU (``"cpu"``, bfloat16 for a float16 dtype);
    kept on the CPU and moved to ``device`` per encode (``"offload"``).
    """
    device = torch.device(device)
    dtype, variant = resolve_precision(device, dtype, variant)
    src = _source(model, "stage-I", "IF_STAGE1_MODEL", local_files_only)
    return _load_text(
        src,
        device=device,
        dtype=dtype,
        variant=_local_variant_of(src, "text_encoder", variant),
        text_encoder_device=text_encoder_device,
        text_encoder_8bit=text_encoder_8bit,
        embedding_cache_dir=embedding_cache_dir,
    )


def load_stage1(
    model: str | os.PathLike[str] = DEFAULT_STAGE1_MODEL,
    *,
    device: str | torch.device,
    dtype: torch.dtype | None = None,
    variant: str | None = "auto",
    text_encoder_device: str | torch.device | None = None,
    embedding_cache_dir: str | os.PathLike[str] | None = None,
    text_encoder_8bit: bool = False,
    local_files_only: bool = False,
) -> IFEngine:
    """Load IF stage I (UNet, scheduler, tokenizer, T5) with ``from_pretrained``.

    Args:
        model: hub id or local diffusers directory (the ``IF_STAGE1_MODEL`` setting).
        device: where the UNet lives and sampling runs.
        dtype, variant: see ``resolve_precision``.
        text_encoder_device: None (= device), a device, or "offload" (see the module docstring).
        embedding_cache_dir: directory to persist prompt embeddings across restarts (None: memory only).
        text_encoder_8bit: load T5 in 8-bit (CUDA + bitsandbytes).
        local_files_only: never contact the hub (always true for local directories).

    Raises:
        ModelUnavailableError: weights missing, gated or unreachable.
    """
    device = torch.device(device)
    src, dtype, variant, unet, scheduler = _load_unet(
        model,
        "stage-I",
        "IF_STAGE1_MODEL",
        device=device,
        dtype=dtype,
        variant=variant,
        local_files_only=local_files_only,
    )
    text, cache = _load_text(
        src,
        device=device,
        dtype=dtype,
        variant=variant,
        text_encoder_device=text_encoder_device,
        text_encoder_8bit=text_encoder_8bit,
        embedding_cache_dir=embedding_cache_dir,
    )
    logger.info("loaded IF stage I from %s on %s (%s, variant %s)", src.model, device, dtype, variant)
    return IFEngine(
        unet=unet,
        scheduler=scheduler,
        text=text,
        device=device,
        dtype=dtype,
        image_size=int(unet.config.sample_size),
        cache=cache,
        name=src.model,
    )


def load_stage2(
    model: str | os.PathLike[str] = DEFAULT_STAGE2_MODEL,
    *,
    device: str | torch.device,
    dtype: torch.dtype | None = None,
    variant: str | None = "auto",
    stage1: IFEngine | None = None,
    text_encoder_device: str | torch.device | None = None,
    embedding_cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> Stage2Engine:
    """Load IF stage II (super-resolution UNet, scheduler, image-noising scheduler) with ``from_pretrained``.

    Prompts are embedded with ``stage1``'s encoder and cache when given (IF's stages share T5; recommended,
    since otherwise a second T5 copy is loaded), otherwise with the tokenizer and text encoder in ``model``.

    Raises:
        ModelUnavailableError: weights missing, gated or unreachable.
    """
    from diffusers import DDPMScheduler

    device = torch.device(device)
    src, dtype, variant, unet, scheduler = _load_unet(
        model,
        "stage-II",
        "IF_STAGE2_MODEL",
        device=device,
        dtype=dtype,
        variant=variant,
        local_files_only=local_files_only,
    )
    noising = src.load(DDPMScheduler.from_pretrained, "image_noising_scheduler")
    if stage1 is not None:
        text, cache = stage1.text, stage1.cache
    else:
        text, cache = _load_text(
            src,
            device=device,
            dtype=dtype,
            variant=variant,
            text_encoder_device=text_encoder_device,
            text_encoder_8bit=False,
            embedding_cache_dir=embedding_cache_dir,
        )
    logger.info("loaded IF stage II from %s on %s (%s, variant %s)", src.model, device, dtype, variant)
    return Stage2Engine(
        unet=unet,
        scheduler=scheduler,
        text=text,
        device=device,
        dtype=dtype,
        image_size=int(unet.config.sample_size),
        cache=cache,
        name=src.model,
        image_noising_scheduler=noising,
    )
