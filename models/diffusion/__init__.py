"""DeepFloyd IF engine: pure tensor math around diffusers' IF UNets.

Modules (imports point down): ``schedule`` (DDPM math) <- ``loop`` (the one denoising loop) <- ``views``,
``filters``, ``guidance`` (noise-prediction strategies) <- ``adapter``, ``text``, ``engine`` (loading) <-
``ops`` (the operations); ``fast`` puts the UNets behind ``torch.compile`` and CUDA graphs over batch buckets
(``FastUNet``, ``accelerate``); ``tiny`` builds random-weight test pipelines (import it from ``models.diffusion.tiny``: it is also a command line); ``random_weights`` builds the real
architectures with random weights from their public configs; ``cli`` is the command line.
Importing this package does not import diffusers or transformers (they load with the models).
"""

from .engine import (
    DEFAULT_STAGE1_MODEL,
    DEFAULT_STAGE2_MODEL,
    IFEngine,
    ModelUnavailableError,
    Stage2Engine,
    load_prompt_encoder,
    load_stage1,
    load_stage2,
    resolve_precision,
)
from .fast import FastOptions, FastPathRefused, FastReport, FastUNet, accelerate
from .filters import GaussianBlur, gaussian_blur, high_pass
from .guidance import Anagram, ClassifierFree, Hybrid, cfg_combine
from .loop import NoisePrediction, iterative_denoise
from .ops import (
    DenoiseMethod,
    DenoiseResult,
    anagram,
    center_crop_resize,
    denoise,
    forward,
    hybrid,
    inpaint,
    sample,
    sdedit,
    upscale,
)
from .schedule import DDPMSchedule, StridedTimesteps, strided_timesteps
from .views import VIEWS, View, get_view

__all__ = [
    "DEFAULT_STAGE1_MODEL",
    "DEFAULT_STAGE2_MODEL",
    "VIEWS",
    "Anagram",
    "ClassifierFree",
    "DDPMSchedule",
    "DenoiseMethod",
    "DenoiseResult",
    "FastOptions",
    "FastPathRefused",
    "FastReport",
    "FastUNet",
    "GaussianBlur",
    "Hybrid",
    "IFEngine",
    "ModelUnavailableError",
    "NoisePrediction",
    "Stage2Engine",
    "StridedTimesteps",
    "View",
    "accelerate",
    "anagram",
    "center_crop_resize",
    "cfg_combine",
    "denoise",
    "forward",
    "gaussian_blur",
    "get_view",
    "high_pass",
    "hybrid",
    "inpaint",
    "iterative_denoise",
    "load_prompt_encoder",
    "load_stage1",
    "load_stage2",
    "resolve_precision",
    "sample",
    "sdedit",
    "strided_timesteps",
    "upscale",
]
