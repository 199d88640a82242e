"""Service settings: one pydantic-settings class behind a cached `get_settings()`.

Every value comes from an environment variable of the same name in upper case (or a `.env`
file in the working directory); `.env.example` documents them all. The API process and the
worker process read the same class, so they always agree on Redis, queue and storage.
Torch-free: the API process imports it too.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_DIR = PROJECT_ROOT / "models" / "checkpoints"


class Settings(BaseSettings):
    """All tunables of the API and the worker."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- infrastructure -------------------------------------------------------------------
    redis_url: str = "redis://localhost:6379/0"
    queue_name: str = "inference"
    results_dir: Path = PROJECT_ROOT / "var" / "results"
    results_url: str | None = Field(
        None,
        description="s3://BUCKET/PREFIX keeps results and uploads in that (existing) S3 bucket instead of "
        "RESULTS_DIR; empty: the RESULTS_DIR folder",
    )
    results_redirect: bool = Field(
        False, description="downloads answer 307 to a presigned URL on the store instead of streaming (S3 only)"
    )
    results_presign_expiry_s: int = Field(
        3600, ge=1, le=7 * 24 * 3600, description="how long a presigned download URL stays valid"
    )
    # the standard variables of the AWS tools, read here so that a .env file sets them too
    aws_endpoint_url: str | None = Field(None, description="the S3 endpoint (empty: AWS)")
    aws_access_key_id: str | None = Field(None, description="S3 access key (empty: the client's own lookup)")
    aws_secret_access_key: SecretStr | None = Field(None, description="S3 secret key (empty: the client's own lookup)")
    aws_default_region: str | None = Field(None, description="S3 region (empty: us-east-1)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_workers: int = Field(
        1, ge=1, le=64, description="uvicorn processes of the API (`make run`, the image); 1 on a 2-core host"
    )

    # --- job lifecycle --------------------------------------------------------------------
    job_timeout_s: int = Field(600, ge=1, description="hard limit for one job's run time")
    job_retries: int = Field(1, ge=0, le=5, description="re-runs of a job whose worker died")
    result_ttl_s: int = Field(24 * 3600, ge=1, description="how long a job's record and results stay after it ends")
    results_sweep_s: float = Field(
        600, gt=0, description="how often each worker deletes the stored files of jobs older than RESULT_TTL_S"
    )
    tombstone_ttl_s: int = Field(30 * 24 * 3600, ge=60, description="how long an expired id answers 410")
    max_queue_depth: int = Field(1000, ge=1, description="queued jobs beyond which submits get 503")
    wait_max_s: float = Field(60, ge=0, le=3600, description="the longest `Prefer: wait=N` a submission may hold")
    worker_heartbeat_s: int = Field(5, ge=1, description="how often a worker renews its liveness")
    worker_dead_after_s: int = Field(
        30, ge=3, description="a worker without heartbeat for this long is lost: its jobs are retried"
    )
    worker_maintenance_s: int = Field(15, ge=1, description="how often workers look for lost workers")
    worker_shutdown_s: float = Field(
        30, ge=0, description="on SIGTERM, how long a worker lets its jobs finish before handing the rest back"
    )
    store_write_timeout_s: float = Field(
        30, gt=0, description="how long a worker retries writing a result to storage before failing the job"
    )

    # --- batching (one worker, many jobs) -------------------------------------------------------
    batching: Literal["on", "off"] = Field(
        "on", description="on: a worker runs several jobs at once and batches their network calls; off: one at a time"
    )
    max_inflight_jobs: int = Field(16, ge=1, description="jobs one worker runs at once when BATCHING=on")
    max_batch_rows: int = Field(256, ge=1, description="the most rows of one network forward, all jobs together")

    # --- security -------------------------------------------------------------------------
    api_key: str | None = Field(
        None,
        description="if set, every request except health checks needs X-API-Key (or Authorization: Bearer <key>)",
    )
    tenants_file: Path | None = Field(
        None,
        description="a TOML file of tenants (keys, weight, max_queued, rate), read at start by the API and the "
        "workers (core/tenants.py); set, it replaces API_KEY: every protected route needs a tenant's key",
    )

    # --- webhooks and the OpenAI-compatible API ---------------------------------------------
    webhook_secret: SecretStr | None = Field(
        None, description="whsec_<base64>: signs every webhook delivery (Standard Webhooks); unset: webhooks refused"
    )
    webhook_allow: str = Field(
        "public",
        description="comma-separated webhook targets allowed: host names, IP addresses or CIDRs, and `public` "
        "(any public address); loopback, private, link-local, multicast, reserved and metadata addresses "
        "need an entry of their own (metadata addresses are never allowed)",
    )
    webhook_retry_for_s: int = Field(
        3600, ge=0, le=7 * 24 * 3600, description="how long a `completed` delivery is retried before it fails"
    )
    webhook_retry_initial_s: float = Field(
        10,
        gt=0,
        le=15,
        description="the first retry of a delivery comes 1 to 2 times this later; each next one doubles",
    )
    webhook_timeout_s: float = Field(10, gt=0, le=60, description="the longest one delivery attempt may take")
    openai_timeout_s: float = Field(
        300, gt=0, le=3600, description="how long a /v1 images call waits for its jobs before answering 504"
    )

    # --- limits ---------------------------------------------------------------------------
    max_n: int = Field(100, ge=1)
    max_steps: int = Field(500, ge=1)
    max_guidance: float = Field(30.0, gt=0)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=64 * 64)
    max_prompt_chars: int = Field(500, ge=1)

    # --- models ---------------------------------------------------------------------------
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...")
    mnist_time_checkpoint: Path = CHECKPOINT_DIR / "mnist_time_fm.safetensors"
    mnist_class_checkpoint: Path = CHECKPOINT_DIR / "mnist_class_fm.safetensors"
    mnist_precision: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="MNIST compute: 'auto' = bfloat16 where the CPU or GPU has it natively, else float32"
    )
    mnist_compile: bool = Field(False, description="torch.compile the MNIST networks at worker start")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads of a worker (empty: OMP_NUM_THREADS if set; else on a CPU worker all "
        "cores but one, so that the API, Redis and the clients on the same host keep one; else torch's default)",
    )
    if_enabled: Literal["auto", "true", "false"] = Field(
        "auto", description="load DeepFloyd IF in the worker: 'auto' = when a CUDA device is present"
    )
    if_stage1_model: str = "DeepFloyd/IF-I-XL-v1.0"
    if_stage2_model: str | None = Field("DeepFloyd/IF-II-L-v1.0", description="empty disables upscaling")
    if_variant: str = Field("auto", description="'auto' = fp16 on CUDA, none on CPU")
    if_text_encoder_device: str | None = Field(None, description="where T5 runs; default the worker device")
    if_embedding_cache_dir: Path | None = None
    # the fast path of the IF UNets (models/diffusion/fast.py)
    if_compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        "off",
        description="torch.compile of the IF UNets: 'off' (eager), 'default', 'reduce-overhead' (+ one CUDA graph "
        "per batch bucket; CUDA only), 'max-autotune' (autotuned kernels + CUDA graphs; CUDA only)",
    )
    if_channels_last: bool = Field(False, description="run the IF UNets in channels-last (NHWC) layout")
    if_attention: Literal["auto", "flash", "efficient", "cudnn", "math"] = Field(
        "auto", description="scaled-dot-product attention kernel of the IF UNets ('efficient', 'cudnn': CUDA only)"
    )
    if_batch_buckets: Annotated[tuple[int, ...], NoDecode] = Field(
        (2, 4, 8, 16, 32), description="UNet batch sizes compiled and captured; a call is padded to the next one"
    )
    if_warmup_timeout_s: float = Field(
        420, gt=0, description="bound on compiling and capturing at start; past it the IF UNets run eagerly"
    )
    if_text_encoder_8bit: bool = Field(False, description="load T5 in 8-bit on the GPU (needs bitsandbytes)")

    @field_validator("if_batch_buckets", mode="before")
    @classmethod
    def _bucket_list(cls, value: object) -> object:
        """Accept "2,4,8" (or spaces, or a JSON list) from the environment."""
        if isinstance(value, str):
            text = value.strip().removeprefix("[").removesuffix("]")
            return tuple(part for part in text.replace(",", " ").split() if part)
        return value

    @field_validator("if_batch_buckets")
    @classmethod
    def _buckets_increase(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("give at least one batch bucket, e.g. 2,4,8,16,32")
        if value[0] < 1 or value[-1] > 1024 or any(a >= b for a, b in itertools.pairwise(value)):
            raise ValueError(f"batch buckets must be strictly increasing integers in 1..1024, got {value}")
        return value

    @model_validator(mode="after")
    def _t5_placement(self) -> Settings:
        if self.if_text_encoder_8bit and self.if_text_encoder_device in ("cpu", "offload"):
            raise ValueError(
                f"IF_TEXT_ENCODER_8BIT=true keeps T5 on the GPU in 8-bit, but IF_TEXT_ENCODER_DEVICE="
                f"{self.if_text_encoder_device} moves it to the CPU: choose one placement"
            )
        return self

    # --- events and previews ---------------------------------------------------------------
    preview_every: int = Field(
        5, ge=1, description="steps between two previews (and trajectory frames) of a job run with previews=true"
    )
    events_keepalive_s: float = Field(
        15,
        gt=0,
        le=300,
        description="keep-alive comment interval of /jobs/{id}/events; listened jobs are reconciled this often",
    )
    events_max_listeners: int = Field(1000, ge=1, description="open event streams per API process; beyond: 503")

    # --- observability (README "Operating the service") ------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per record; json: one JSON object per line, with job_id"
    )
    worker_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="a worker serves Prometheus metrics on this port (empty: off)"
    )
    pending_step_s_default: float = Field(
        0.05,
        gt=0,
        description="seconds per weighted step assumed for an operation no live worker has measured yet "
        "(the pending-work gauge, so that a queue with no worker still shows work)",
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None, description="OpenTelemetry traces to this OTLP/HTTP collector (http://host:4318); empty: tracing off"
    )

    @field_validator(
        "api_key",
        "tenants_file",
        "if_stage2_model",
        "if_text_encoder_device",
        "if_embedding_cache_dir",
        "torch_threads",
        "results_url",
        "aws_endpoint_url",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_default_region",
        "worker_metrics_port",
        "otel_exporter_otlp_endpoint",
        "webhook_secret",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``NAME=`` (as in a copy of .env.example) means unset, not an empty string or the path ``.``."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("results_url")
    @classmethod
    def _results_url(cls, value: str | None) -> str | None:
        if value is not None:
            from core.store import parse_results_url

            parse_results_url(value)  # ValueError: not s3://BUCKET/PREFIX
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from core.webhooks import check_secret

            check_secret(value.get_secret_value())  # ValueError: not whsec_<base64>
        return value

    @field_validator("webhook_allow")
    @classmethod
    def _webhook_allow(cls, value: str) -> str:
        from core.webhooks import AllowList

        AllowList.parse(value)  # ValueError: an entry that is no host, address or CIDR
        return value

    @field_validator("if_enabled", "batching", mode="before")
    @classmethod
    def _switch_words(cls, value: object, info: ValidationInfo) -> object:
        """Accept the usual spellings of a boolean (1/0, yes/no, on/off, true/false) for these switches."""
        yes, no = ("on", "off") if info.field_name == "batching" else ("true", "false")
        if isinstance(value, bool):
            return yes if value else no
        if isinstance(value, str):
            word = value.strip().lower()
            if word in ("1", "yes", "on", "true"):
                return yes
            if word in ("0", "no", "off", "false"):
                return no
            return word
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
