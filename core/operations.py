"""One typed parameter model per operation, shared by the API and the worker, and the table of operations.

The API validates a request against ``Model.bounded(settings)`` (a FastAPI query or form model, so the
OpenAPI schema states every limit, the settings-dependent ones included) and enqueues
``params.model_dump(mode="json")``; the job validates that dict again with the same class and writes it
into its manifest. A limit that depends on a setting is declared on its field with a ``SettingLimit``
marker, which ``bounded`` turns into a native ``le`` (numbers) or ``max_length`` (text) constraint.

Adding an operation: one model here, one entry in ``OPERATIONS``, one job function
``workers.jobs.<name>`` that calls one ``models`` function.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping
from copy import copy
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, Self, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator, model_validator

from core.settings import Settings

__all__ = [
    "MAX_SEED",
    "MNIST_DEFAULT_GUIDANCE",
    "MNIST_DEFAULT_SAMPLER",
    "MNIST_DEFAULT_STEPS",
    "NUM_TRAIN_TIMESTEPS",
    "OPERATIONS",
    "STRIDED_STEPS",
    "VIEW_NAMES",
    "WEBHOOK_EVENTS",
    "IfAnagram",
    "IfDenoise",
    "IfHybrid",
    "IfInpaint",
    "IfSample",
    "IfSdedit",
    "JobOptions",
    "MnistSample",
    "Operation",
    "OperationParams",
    "Sampler",
    "SettingLimit",
    "Upload",
    "mnist_default_steps",
    "operation_for_job",
]

MAX_SEED = 2**63 - 1
#: Names of ``models.diffusion.views.VIEWS`` (kept here so that the API need not import torch; a test
#: checks that both lists agree).
VIEW_NAMES = ("flip_horizontal", "flip_vertical", "identity", "jigsaw", "negate", "rot180", "rot270", "rot90")
ViewName = Literal["flip_horizontal", "flip_vertical", "identity", "jigsaw", "negate", "rot180", "rot270", "rot90"]
STRIDED_STEPS = 34  # stage-I timesteps 990, 960, ..., 0
NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class SettingLimit:
    """An upper bound taken from a setting: ``le`` for a number, ``max_length`` for a string."""

    setting: str


def _bound(annotation: Any, limits: Mapping[str, Any]) -> Any:
    """``annotation`` with every nested ``SettingLimit`` replaced by its native constraint."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *meta = get_args(annotation)
        base = _bound(base, limits)
        return Annotated.__class_getitem__((base, *(_constraint(m, base, limits) for m in meta)))
    if origin is list:
        return list[_bound(get_args(annotation)[0], limits)]  # type: ignore[misc]
    if origin in (Union, types.UnionType):
        return Union[tuple(_bound(arg, limits) for arg in get_args(annotation))]  # noqa: UP007
    return annotation


def _constraint(meta: Any, base: Any, limits: Mapping[str, Any]) -> Any:
    if not isinstance(meta, SettingLimit):
        return meta
    value = limits[meta.setting]
    return annotated_types.MaxLen(value) if base is str else annotated_types.Le(value)


def _setting_names(annotation: Any, metadata: Iterable[Any] = ()) -> set[str]:
    """The settings that ``SettingLimit`` markers in ``annotation`` (and the field's ``metadata``) refer to."""
    names = {m.setting for m in metadata if isinstance(m, SettingLimit)}
    if get_origin(annotation) is Annotated:
        base, *meta = get_args(annotation)
        return names | _setting_names(base, meta)
    for arg in get_args(annotation):
        names |= _setting_names(arg)
    return names


#: What a webhook can be told about a job (``JobOptions.webhook_events``).
WEBHOOK_EVENTS = ("start", "progress", "completed")
WebhookEvent = Literal["start", "progress", "completed"]
WEBHOOK_URL_MAX = 2000


class JobOptions(BaseModel):
    """How the service handles a job, as opposed to what the job computes: accepted by every operation in the
    same place as its parameters, and never part of the job's recorded ``params`` (``exclude=True``): the worker
    neither sees nor validates them, and the same parameters with other options give the same PNG. The API reads
    them from the validated model (``options``) and keeps what it needs in the job record."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    priority: Literal["low", "normal", "high"] = Field(
        "normal",
        exclude=True,
        description="orders this tenant's own jobs: every waiting high job is admitted before its normal ones, "
        "and those before its low ones (other tenants are not affected: fair share is between tenants)",
        examples=["normal"],
    )
    cache: bool = Field(
        True,
        exclude=True,
        description="with a `seed`: answer at once from an earlier job with the same request, model weights and "
        "code (`cached: true`, the same bytes); `false` always runs the job (and does not add it to the cache)",
        examples=[True],
    )

    webhook: str | None = Field(
        None,
        exclude=True,
        min_length=8,
        max_length=WEBHOOK_URL_MAX,
        pattern=r"^[hH][tT][tT][pP][sS]?://[^\s]+$",
        description="an http(s) URL that gets a signed POST (Standard Webhooks) with the job body when the job "
        "ends, and for the other `webhook_events`; the target must be allowed by WEBHOOK_ALLOW "
        "(loopback, private, link-local and metadata addresses are refused by default)",
        examples=["https://example.com/hooks/diffusion"],
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None,
        exclude=True,
        max_length=len(WEBHOOK_EVENTS),
        description="which events the webhook gets (repeat the field): `start`, `progress` (at most every 0.5 s, "
        "never retried) and `completed` (retried); default `completed`",
        examples=[["completed"]],
    )

    @field_validator("webhook_events")
    @classmethod
    def _events_need_a_webhook(cls, events: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if events and "webhook" in info.data and info.data["webhook"] is None:  # (absent: it failed, and says so)
            raise ValueError("needs a webhook (the webhook field)")
        return events

    @property
    def wanted_events(self) -> tuple[str, ...]:
        """The webhook's events, deduplicated, in the order of ``WEBHOOK_EVENTS`` (default ``completed``)."""
        chosen = set(self.webhook_events or ("completed",))
        return tuple(event for event in WEBHOOK_EVENTS if event in chosen)


class OperationParams(JobOptions):
    """Parameters every operation shares; subclasses add their own. The job options (``JobOptions``) come with
    them and are left out of ``model_dump``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="same seed, same PNG; omitted = a random one", examples=[42]
    )
    # Opt-in extras, left out of the job's recorded parameters while off (exclude_if), so that a request
    # without them reads as before.
    previews: bool = Field(
        False,
        exclude_if=lambda on: not on,
        description="write a small PNG of the current clean-image estimate every PREVIEW_EVERY steps, "
        "announced on GET /jobs/{id}/events",
        examples=[False],
    )
    trajectory: bool = Field(
        False,
        exclude_if=lambda on: not on,
        description="add trajectory.gif and trajectory.png (a strip) of those estimates to the results",
        examples=[False],
    )

    @classmethod
    def bounded(cls, settings: Settings) -> type[Self]:
        """This model with the limits of ``settings`` (one class per model and set of limit values)."""
        names = _limit_names(cls)
        return _bounded(cls, tuple((name, getattr(settings, name)) for name in names))  # type: ignore[return-value]

    @classmethod
    def setting_limits(cls) -> dict[str, str]:
        """Each field bounded by a setting, and that setting's name (``{"n": "max_n"}``), for error messages.

        Read from the ``SettingLimit`` markers of this class and its bases: a ``bounded`` class, whose own
        fields carry the native constraints instead, answers the same as the class it was made from."""
        out: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            if isinstance(klass, type) and issubclass(klass, OperationParams):
                for name, info in klass.model_fields.items():
                    for setting in _setting_names(info.annotation, info.metadata):
                        out[info.alias or name] = setting
        return out


@cache
def _limit_names(cls: type[OperationParams]) -> tuple[str, ...]:
    """The settings the ``SettingLimit`` markers of ``cls`` refer to, sorted (computed once per model)."""
    names: set[str] = set()
    for info in cls.model_fields.values():
        names |= _setting_names(info.annotation, info.metadata)
    return tuple(sorted(names))


@cache
def _bounded(cls: type[OperationParams], limits: tuple[tuple[str, Any], ...]) -> type[OperationParams]:
    if not limits:
        return cls
    values = dict(limits)
    fields: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        annotation = _bound(info.annotation, values)
        metadata = [_constraint(m, info.annotation, values) for m in info.metadata]
        if annotation == info.annotation and metadata == info.metadata:
            continue
        field = copy(info)
        field.metadata = metadata
        fields[name] = (annotation, field)
    return create_model(cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=cls.__doc__, **fields)


# ---- field types shared by several operations ------------------------------------------------------------

Prompt = Annotated[
    str,
    SettingLimit("max_prompt_chars"),
    Field(
        min_length=1,
        pattern=r"\S",
        description="text prompt (not blank)",
        examples=["an oil painting of a snowy mountain village"],
    ),
]
Guidance = Annotated[
    float,
    SettingLimit("max_guidance"),
    Field(ge=0, allow_inf_nan=False, description="classifier-free guidance scale", examples=[7.0]),
]


# ---- MNIST flow matching ---------------------------------------------------------------------------------


class Sampler(str, Enum):
    """ODE solver for the flow-matching models (Euler: 1 network evaluation a step; Heun, midpoint: 2)."""

    euler = "euler"
    heun = "heun"
    midpoint = "midpoint"


#: The default request, chosen on the evaluator (models/checkpoints/README.md, issue 13): the fewest network
#: evaluations at which the class model keeps >= 99.5 % class accuracy and a Frechet distance below the old
#: default's (Euler 50, w = 5: FD 128). Midpoint with 1 step (2 evaluations) at w = 1.5 scores 100.0 % and
#: FD 20 (seed 0, N = 1,000) and 99.95 % and FD 19 (seed 1, N = 2,000). The unguided time model needs 3 steps
#: (FD 16; 1 step gives FD 106). ``models.flow.sample`` uses the same rule (a test checks both agree).
MNIST_DEFAULT_SAMPLER = "midpoint"
MNIST_DEFAULT_GUIDANCE = 1.5
MNIST_DEFAULT_STEPS = {"class": 1, "time": 3}
#: One midpoint step over-shoots under strong guidance (w = 2: 94.7 %, w = 5: 20 %); above this scale the
#: class model defaults to 4 midpoint steps (w = 5: 100 %, FD 40).
MNIST_ONE_STEP_MAX_GUIDANCE = 1.75
MNIST_STRONG_GUIDANCE_STEPS = 4
#: Euler and Heun are far worse than midpoint at a few steps (Heun 3 steps: FD 340 on the time model), so a
#: request that names one of them without steps gets the steps it had before issue 13.
MNIST_LEGACY_STEPS = 50


def mnist_default_steps(digit: int | None, sampler: str, guidance: float) -> int:
    """The steps of a request that names none: the fewest that keep the quality bars for its model, solver
    and guidance (measured; see the constants above)."""
    if sampler != MNIST_DEFAULT_SAMPLER:
        return MNIST_LEGACY_STEPS
    if digit is None:
        return MNIST_DEFAULT_STEPS["time"]
    if guidance > MNIST_ONE_STEP_MAX_GUIDANCE:
        return MNIST_STRONG_GUIDANCE_STEPS
    return MNIST_DEFAULT_STEPS["class"]


class MnistSample(OperationParams):
    """``n`` digits from the flow-matching models as one PNG grid."""

    digit: int | None = Field(None, ge=0, le=9, description="0..9; omit for an unguided sample", examples=[7])
    n: Annotated[int, SettingLimit("max_n")] = Field(
        10, ge=1, description="how many digits (at most MAX_N)", examples=[10]
    )
    steps: Annotated[int, SettingLimit("max_steps")] | None = Field(
        None,
        ge=1,
        description=f"ODE solver steps. Omitted, with the midpoint solver: {MNIST_DEFAULT_STEPS['class']} with a digit "
        f"(the class model; {MNIST_STRONG_GUIDANCE_STEPS} when guidance is above {MNIST_ONE_STEP_MAX_GUIDANCE}), "
        f"{MNIST_DEFAULT_STEPS['time']} without (the time model); with euler or heun, {MNIST_LEGACY_STEPS}. "
        "The job records the value it used.",
        examples=[MNIST_DEFAULT_STEPS["class"]],
    )
    guidance: Annotated[float, SettingLimit("max_guidance")] = Field(
        MNIST_DEFAULT_GUIDANCE,
        ge=0,
        allow_inf_nan=False,
        description="classifier-free guidance scale w (class model)",
        examples=[MNIST_DEFAULT_GUIDANCE],
    )
    sampler: Sampler = Field(Sampler(MNIST_DEFAULT_SAMPLER), description="ODE solver", examples=[MNIST_DEFAULT_SAMPLER])

    @model_validator(mode="after")
    def _default_steps(self) -> Self:
        if self.steps is None:  # frozen: fill the default in place, once, at validation
            self.__dict__["steps"] = mnist_default_steps(self.digit, self.sampler.value, self.guidance)
        return self

    @property
    def solver_steps(self) -> int:
        """``steps`` as validated (the default of the model the request uses when it named none)."""
        assert self.steps is not None
        return self.steps


# ---- DeepFloyd IF ----------------------------------------------------------------------------------------


class IfParams(OperationParams):
    """What every DeepFloyd IF operation shares."""

    guidance: Guidance = 7.0
    upscale: bool = Field(False, description="also upscale to 256x256 with stage II", examples=[False])


class IfSample(IfParams):
    """Text to image from pure noise."""

    prompt: Prompt


class IfSdedit(IfParams):
    """SDEdit: noise the upload to the strided timestep ``i_start``, then denoise it with the prompt."""

    prompt: Prompt = "a high quality photo"
    i_start: int = Field(
        10,
        ge=0,
        le=STRIDED_STEPS - 1,
        examples=[10],
        description="index into 990, 960, ..., 0: small = more noise, more change",
    )


class IfInpaint(IfParams):
    """Inpainting: new content where the mask is white, the upload kept elsewhere."""

    prompt: Prompt = "a high quality photo"


class IfAnagram(IfParams):
    """Visual anagram: one image; view i of it shows prompt i."""

    prompts: list[Annotated[str, SettingLimit("max_prompt_chars"), Field(min_length=1, pattern=r"\S")]] = Field(
        min_length=2,
        description="two or more prompts (repeat the field)",
        examples=[["an oil painting of people around a campfire", "an oil painting of an old man"]],
    )
    views: list[ViewName] | None = Field(
        None,
        validate_default=True,
        examples=[["identity", "flip_vertical"]],
        description=f"one view per prompt (repeat the field); default identity + flip_vertical for two prompts. "
        f"One of: {', '.join(VIEW_NAMES)}",
    )

    @field_validator("views")
    @classmethod
    def _one_view_per_prompt(cls, views: list[str] | None, info: ValidationInfo) -> list[str]:
        prompts = info.data.get("prompts")
        if prompts is None:  # the prompts failed validation; that error is reported
            return views or []
        if views is None:
            if len(prompts) != 2:
                raise ValueError("required with more than two prompts (one view per prompt)")
            return ["identity", "flip_vertical"]
        if len(views) != len(prompts):
            raise ValueError(f"{len(views)} views for {len(prompts)} prompts; give one per prompt")
        return views


class IfHybrid(IfParams):
    """Hybrid image: ``prompt_low`` seen from afar, ``prompt_high`` up close."""

    prompt_low: Prompt
    prompt_high: Prompt
    kernel_size: int = Field(
        33,
        ge=1,
        le=63,
        description="odd Gaussian kernel size",
        examples=[33],
        json_schema_extra={"enum": list(range(1, 64, 2))},
    )
    sigma: float = Field(2.0, gt=0, le=20, allow_inf_nan=False, description="Gaussian sigma", examples=[2.0])

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, size: int) -> int:
        if size % 2 == 0:
            raise ValueError("must be an odd number")
        return size


class IfDenoise(OperationParams):
    """The forward process to ``t``, then one of three denoisers."""

    t: int = Field(500, ge=0, le=NUM_TRAIN_TIMESTEPS - 1, description="forward-process timestep", examples=[500])
    method: Literal["blur", "one_step", "iterative"] = Field(
        "one_step",
        description="blur (Gaussian), one_step (one noise estimate) or iterative (the strided loop)",
        examples=["one_step"],
    )
    prompt: Prompt = "a high quality photo"
    guidance: Guidance = 7.0


# ---- the table -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """An image file a form operation takes; ``same_size_as`` names another upload it must match."""

    name: str
    description: str
    same_size_as: str | None = None


@dataclass(frozen=True)
class Operation:
    """One operation of the service: its HTTP route, its parameters, its uploads and its job function.

    Attributes:
        name: the job kind (``mnist_sample``, ``if_sdedit``, ...); the job function is ``workers.jobs.<name>``.
        path: the ``POST`` route.
        transport: ``query`` (parameters in the query string) or ``form`` (``multipart/form-data``).
        params: the parameter model.
        uploads: image files of a form operation.
        summary, description: for the OpenAPI document.
        value_range: the range of its images as tensors (previews and trajectories are encoded from it):
            (-1, 1) for DeepFloyd, (0, 1) for MNIST.
        version: the code version of its output, part of the result cache's key: bump it in the same commit as any
            change of its job function or of the models code it calls that changes the bytes it writes.
    """

    name: str
    path: str
    transport: Literal["query", "form"]
    params: type[OperationParams]
    summary: str
    description: str = ""
    uploads: tuple[Upload, ...] = ()
    tag: str = "deepfloyd"
    value_range: tuple[float, float] = (-1.0, 1.0)
    version: int = 1

    JOB_MODULE: ClassVar[str] = "workers.jobs"

    @property
    def job(self) -> str:
        """Dotted name of the job function (the API enqueues by name and never imports it)."""
        return f"{self.JOB_MODULE}.{self.name}"


_IMAGE = Upload("image", "PNG, JPEG or WebP; center-cropped and resized to the model size (64x64)")
_MASK = Upload(
    "mask",
    "same size as the image; white (luminance >= 128, and alpha >= 128 if any) = generate, the rest is kept",
    same_size_as="image",
)

OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation(
            "mnist_sample",
            "/mnist/sample",
            "query",
            MnistSample,
            "Generate MNIST digits with the flow-matching models",
            "With `digit`, the class-conditioned model draws `n` samples of that digit with classifier-free "
            "guidance; without it, the time-conditioned model draws `n` unguided digits. The result is one "
            "PNG grid: white digits on black, 28x28 tiles without padding, row-major, min(n, 10) columns.",
            tag="mnist",
            value_range=(0.0, 1.0),
        ),
        Operation("if_sample", "/sample", "form", IfSample, "Text to image (stage I, optional stage II)"),
        Operation(
            "if_sdedit",
            "/sdedit",
            "form",
            IfSdedit,
            "SDEdit image-to-image from noise level i_start",
            uploads=(_IMAGE,),
        ),
        Operation(
            "if_inpaint",
            "/inpaint",
            "form",
            IfInpaint,
            "Inpaint where the mask is white (RePaint-style)",
            uploads=(_IMAGE, _MASK),
        ),
        Operation("if_anagram", "/anagram", "form", IfAnagram, "Visual anagram: one image, one prompt per view"),
        Operation("if_hybrid", "/hybrid", "form", IfHybrid, "Hybrid image: prompt_low from afar, prompt_high up close"),
        Operation(
            "if_denoise",
            "/denoise",
            "form",
            IfDenoise,
            "Noise an image to t, then denoise it (blur, one step or iterative)",
            uploads=(_IMAGE,),
        ),
    )
}

#: A pseudo-operation a worker advertises when it can run the stage-II upscale (``upscale=true``).
IF_UPSCALE = "if_upscale"


def models_used(kind: str, params: Mapping[str, Any]) -> tuple[str, ...]:
    """The resident models (``workers.registry`` names) a job of ``kind`` with these recorded parameters runs: the
    weights whose digests key the result cache."""
    if kind == "mnist_sample":
        return ("mnist_time",) if params.get("digit") is None else ("mnist_class",)
    if kind in OPERATIONS:
        return ("if_stage1", "if_stage2") if params.get("upscale") else ("if_stage1",)
    return ()


def operation_for_job(func_name: str) -> Operation | None:
    """The operation whose job function is ``func_name`` (a dotted name), if any."""
    module, _, name = func_name.rpartition(".")
    op = OPERATIONS.get(name)
    return op if op is not None and module == Operation.JOB_MODULE else None


# ---- how much work a job is (the pending-work gauge) -----------------------------------------------------

#: stage-II steps of ``upscale=true`` (``models.diffusion.ops.upscale``'s default; a test checks both agree)
UPSCALE_STEPS = 50
#: network evaluations per solver step of each MNIST sampler (``models.flow.sampling.EVALS_PER_STEP``; a test
#: checks both agree)
SAMPLER_EVALS = {"euler": 1, "heun": 2, "midpoint": 2}
STRIDE = 30  # stage-I timesteps 990, 960, ..., 0 (STRIDED_STEPS of them)


def _stage1_steps(kind: str, params: Mapping[str, Any]) -> int:
    """Progress steps of a DeepFloyd job's stage I (what its ``progress.total`` counts in stage I)."""
    if kind == "if_sdedit":
        return STRIDED_STEPS - int(params.get("i_start", 10))
    if kind == "if_denoise":
        if params.get("method", "one_step") != "iterative":
            return 1  # one noise estimate, or the blur (no network)
        t = int(params.get("t", 500))
        return 1 + sum(1 for s in range(STRIDE * (STRIDED_STEPS - 1), -1, -STRIDE) if s < t)
    return STRIDED_STEPS


def estimated_steps(kind: str, params: Mapping[str, Any]) -> int:
    """Progress steps of a whole job from its recorded (validated) parameters: MNIST ``steps``; DeepFloyd the
    strided stage-I steps (from ``i_start`` or ``t``), plus ``UPSCALE_STEPS`` with ``upscale``. 0 for a kind this
    service does not know."""
    if kind == "mnist_sample":
        steps = params.get("steps")
        if steps is None:
            steps = mnist_default_steps(
                params.get("digit"),
                str(params.get("sampler", MNIST_DEFAULT_SAMPLER)),
                float(params.get("guidance", MNIST_DEFAULT_GUIDANCE)),
            )
        return int(steps)
    if kind not in OPERATIONS:
        return 0
    return _stage1_steps(kind, params) + (UPSCALE_STEPS if params.get("upscale") else 0)


def remaining_steps(kind: str, params: Mapping[str, Any], progress: Mapping[str, Any] | None) -> int:
    """Steps a job still has to run: all of them while queued (``progress`` None), else the rest of its current
    stage (``progress`` ``{"step", "total", "stage"?}``) plus the stage-II steps still ahead of a stage-I one."""
    total = estimated_steps(kind, params)
    if not progress:
        return total
    try:
        step, stage_total = int(progress.get("step", 0)), int(progress.get("total", 0))
    except (TypeError, ValueError):
        return total
    left = max(stage_total - step, 0)
    if progress.get("stage") == "I" and params.get("upscale"):
        left += UPSCALE_STEPS
    return min(left, total)


def step_weight(kind: str, params: Mapping[str, Any]) -> float:
    """The relative cost of one of a job's steps within its operation: for MNIST the images times the network
    evaluations per solver step (a step of 100 digits with midpoint costs about 200 times one digit with Euler,
    the forward being row-bound); 1 for DeepFloyd (one image, its guidance branches fixed per operation)."""
    if kind == "mnist_sample":
        return float(params.get("n", 10)) * SAMPLER_EVALS.get(str(params.get("sampler", MNIST_DEFAULT_SAMPLER)), 1)
    return 1.0


def cost_key(kind: str, params: Mapping[str, Any]) -> str:
    """The key under which workers measure seconds per weighted step: the operation, ``+upscale`` when the job
    adds the stage-II steps (those cost several times a stage-I step, so such jobs are timed apart)."""
    return f"{kind}+upscale" if params.get("upscale") else kind
