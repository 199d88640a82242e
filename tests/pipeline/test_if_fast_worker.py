"""The worker's IF fast path on the CPU (tiny pipelines): a CUDA-only mode is refused in one log line and IF is
served eagerly; a warm-up past IF_WARMUP_TIMEOUT_S falls back to eager in one log line; /readyz's model info says
which."""

from __future__ import annotations

import logging

import pytest
import torch

from models.diffusion.fast import FastOptions, FastUNet


def _fast_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "models.diffusion.fast" and r.levelno >= logging.WARNING]


def worker_settings(tiny_if: dict[str, str], **values: object):
    from core.settings import Settings

    env = {k.lower(): v for k, v in tiny_if.items()}
    return Settings(_env_file=None, **env, **values)  # type: ignore[call-arg]


def test_worker_refuses_a_cuda_only_mode_on_the_cpu_and_serves_eagerly(
    tiny_if: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from workers.registry import ModelRegistry, load_if

    registry = ModelRegistry(device=torch.device("cpu"))
    with caplog.at_level(logging.INFO):
        load_if(registry, worker_settings(tiny_if, if_compile="reduce-overhead"))
    assert {"if_stage1", "if_stage2"} <= set(registry.models) and not registry.errors
    assert not isinstance(registry.get("if_stage1").unet, FastUNet)
    info = registry.describe()["models"]["if_stage1"]["fast_path"]
    assert info["active"] is False and info["compile"] == "reduce-overhead"
    assert info["reason"].startswith("refused: compile mode 'reduce-overhead' captures CUDA graphs")
    [line] = [r for r in caplog.records if "refused" in r.getMessage()]
    assert line.levelno == logging.ERROR and "IF_COMPILE=reduce-overhead" in line.getMessage()
    assert "serving DeepFloyd IF eagerly" in line.getMessage()


def test_worker_falls_back_to_eager_past_the_warm_up_bound(
    tiny_if: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import registry as model_registry

    plain = model_registry.fast_options
    monkeypatch.setattr(
        model_registry, "fast_options", lambda s: FastOptions(**{**plain(s).__dict__, "backend": "eager"})
    )
    registry = model_registry.ModelRegistry(device=torch.device("cpu"))
    with caplog.at_level(logging.INFO):
        model_registry.load_if(registry, worker_settings(tiny_if, if_compile="default", if_warmup_timeout_s=1e-6))
    info = registry.describe()["models"]["if_stage2"]["fast_path"]
    assert info["active"] is False and "past its bound" in info["reason"]
    assert not isinstance(registry.get("if_stage1").unet, FastUNet)
    assert len(_fast_records(caplog)) == 1
    torch._dynamo.reset()


def test_worker_publishes_an_eager_fast_path_when_it_is_off(tiny_if: dict[str, str]) -> None:
    from workers.registry import ModelRegistry, load_if

    registry = ModelRegistry(device=torch.device("cpu"))
    load_if(registry, worker_settings(tiny_if))
    info = registry.describe()["models"]["if_stage1"]["fast_path"]
    assert info == {
        "compile": "off",
        "channels_last": False,
        "attention": "auto",
        "buckets": [2, 4, 8, 16, 32],
        "active": False,
        "warmup_s": 0.0,
        "warmup_per_unet_s": [],
        "reason": None,
    }
    assert not isinstance(registry.get("if_stage2").unet, FastUNet)
