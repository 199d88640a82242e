"""The IF fast path's pure parts: bucket plans, option validation, the CUDA-only refusals, and the settings that
select it (bad values are a start-up error)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import Settings
from models.diffusion.fast import (
    COMPILE_MODES,
    DEFAULT_BUCKETS,
    FastOptions,
    FastPathRefused,
    bucket_for,
    plan_chunks,
)


@pytest.mark.parametrize(
    ("n", "bucket"), [(1, 2), (2, 2), (3, 4), (4, 4), (5, 8), (9, 16), (16, 16), (17, 32), (32, 32)]
)
def test_a_call_goes_to_the_smallest_bucket_that_holds_it(n: int, bucket: int) -> None:
    assert bucket_for(n, DEFAULT_BUCKETS) == bucket


def test_calls_beyond_the_largest_bucket_are_split_and_cover_every_row_once() -> None:
    assert plan_chunks(37, DEFAULT_BUCKETS) == [(0, 32, 32), (32, 37, 8)]
    assert plan_chunks(64, DEFAULT_BUCKETS) == [(0, 32, 32), (32, 64, 32)]
    assert plan_chunks(3, (4,)) == [(0, 3, 4)]
    for n in range(1, 80):
        chunks = plan_chunks(n, (2, 4, 8))
        rows = [r for start, stop, _ in chunks for r in range(start, stop)]
        assert rows == list(range(n))
        assert all(stop - start <= b and b in (2, 4, 8) for start, stop, b in chunks)
    with pytest.raises(ValueError):
        plan_chunks(0, DEFAULT_BUCKETS)
    with pytest.raises(ValueError, match="largest bucket"):
        bucket_for(33, DEFAULT_BUCKETS)


def test_options_validate_their_values() -> None:
    assert FastOptions().buckets == (2, 4, 8, 16, 32) and not FastOptions().enabled
    assert FastOptions(channels_last=True).enabled and FastOptions(attention="math").enabled
    assert FastOptions(compile="default").compiled and not FastOptions(compile="default").graphs
    assert FastOptions(compile="reduce-overhead").graphs and FastOptions(compile="max-autotune").graphs
    for bad in ((), (4, 2), (0, 2), (2, 2)):
        with pytest.raises(ValueError, match="strictly increasing"):
            FastOptions(buckets=bad)
    with pytest.raises(ValueError, match="compile mode 'fast'"):
        FastOptions(compile="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attention backend 'sage'"):
        FastOptions(attention="sage")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_only_modes_are_refused_without_cuda_with_a_clear_message(mode: str) -> None:
    with pytest.raises(FastPathRefused, match=f"compile mode '{mode}' captures CUDA graphs and needs a CUDA device"):
        FastOptions(compile=mode).check("cpu")  # type: ignore[arg-type]
    FastOptions(compile=mode).check("cuda")  # type: ignore[arg-type]  # checking needs no GPU


@pytest.mark.parametrize("attention", ["efficient", "cudnn"])
def test_cuda_only_attention_kernels_are_refused_without_cuda(attention: str) -> None:
    with pytest.raises(FastPathRefused, match=f"attention backend '{attention}' exists on CUDA only"):
        FastOptions(attention=attention).check("cpu")  # type: ignore[arg-type]


def test_modes_that_run_without_cuda_pass_the_check() -> None:
    for options in (FastOptions(), FastOptions(compile="default", channels_last=True, attention="flash")):
        options.check("cpu")


# --- settings ------------------------------------------------------------------------------------------------


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_fast_path_settings_default_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch)
    assert (s.if_compile, s.if_channels_last, s.if_attention) == ("off", False, "auto")
    assert s.if_batch_buckets == DEFAULT_BUCKETS and s.if_warmup_timeout_s == 420 and not s.if_text_encoder_8bit


def test_fast_path_settings_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(
        monkeypatch,
        IF_COMPILE="reduce-overhead",
        IF_CHANNELS_LAST="true",
        IF_ATTENTION="flash",
        IF_BATCH_BUCKETS="2, 4,8",
        IF_WARMUP_TIMEOUT_S="90",
        IF_TEXT_ENCODER_8BIT="1",
    )
    assert (s.if_compile, s.if_channels_last, s.if_attention) == ("reduce-overhead", True, "flash")
    assert s.if_batch_buckets == (2, 4, 8) and s.if_warmup_timeout_s == 90 and s.if_text_encoder_8bit
    assert settings(monkeypatch, IF_BATCH_BUCKETS="[1, 3]").if_batch_buckets == (1, 3)
    assert set(COMPILE_MODES) == {"off", "default", "reduce-overhead", "max-autotune"}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("IF_COMPILE", "fast", "Input should be 'off', 'default', 'reduce-overhead' or 'max-autotune'"),
        ("IF_ATTENTION", "sage", "Input should be 'auto', 'flash', 'efficient', 'cudnn' or 'math'"),
        ("IF_BATCH_BUCKETS", "8,4", "strictly increasing"),
        ("IF_BATCH_BUCKETS", "0,2", "strictly increasing"),
        ("IF_BATCH_BUCKETS", "", "at least one batch bucket"),
        ("IF_BATCH_BUCKETS", "two", "valid integer"),
        ("IF_WARMUP_TIMEOUT_S", "0", "greater than 0"),
        ("IF_CHANNELS_LAST", "maybe", "valid boolean"),
    ],
)
def test_bad_fast_path_values_are_a_start_up_error(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        settings(monkeypatch, **{key: value})
    assert key.lower() in str(info.value)


def test_eight_bit_t5_and_a_cpu_placement_contradict(monkeypatch: pytest.MonkeyPatch) -> None:
    for device in ("cpu", "offload"):
        with pytest.raises(ValidationError, match="choose one placement"):
            settings(monkeypatch, IF_TEXT_ENCODER_8BIT="true", IF_TEXT_ENCODER_DEVICE=device)


def test_the_worker_maps_the_settings_to_fast_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.registry import fast_options

    s = settings(monkeypatch, IF_COMPILE="default", IF_CHANNELS_LAST="yes", IF_ATTENTION="math", IF_BATCH_BUCKETS="4")
    assert fast_options(s) == FastOptions(compile="default", channels_last=True, attention="math", buckets=(4,))
