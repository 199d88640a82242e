"""The step driver (models.driver) with analytic networks: one loop for one request or many.

Rows of an analytic network are computed elementwise, so a request batched with others must give exactly
its result alone; the tiny-pipeline tests (tests/pipeline/test_batching.py) bound the real networks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from models.diffusion.filters import GaussianBlur
from models.diffusion.guidance import Anagram, ClassifierFree, Hybrid
from models.diffusion.loop import DenoiseRequest, NoisePrediction
from models.diffusion.schedule import DDPMSchedule, StridedTimesteps, cosine_alphas_cumprod, strided_timesteps
from models.diffusion.views import get_view
from models.driver import DeadlineExceeded, StepDriver, drive, drive_all
from models.flow.sampling import RULES, FlowRequest, time_grid

SCHEDULE = DDPMSchedule(
    cosine_alphas_cumprod(1000),
    thresholding=True,
    dynamic_thresholding_ratio=0.95,
    sample_max_value=1.5,
    clip_sample=True,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Denoiser:
    """eps = a(embeds) x + b(embeds) sin(x (1 + t / 1000)) per row, v = tanh(mean embeds) cos(x): every row
    depends on its own timestep. Records the timesteps and row counts of each call."""

    def __init__(self, fail_above: int | None = None, oom_above: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_above, self.oom_above = fail_above, oom_above

    def __call__(self, x: Tensor, t: Tensor, embeds: Tensor) -> NoisePrediction:
        if self.oom_above is not None and x.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError(f"CUDA out of memory: {x.shape[0]} rows")
        if torch.isnan(x).any():
            raise ValueError("a NaN row")
        self.calls.append(t.tolist())
        a = embeds[:, 0, 0].view(-1, 1, 1, 1)
        b = embeds[:, 0, 1].view(-1, 1, 1, 1)
        eps = a * x + b * torch.sin(x * (1 + t.view(-1, 1, 1, 1) / 1000))
        v = torch.tanh(embeds.mean(dim=(1, 2))).view(-1, 1, 1, 1) * torch.cos(x)
        return NoisePrediction(eps, v)


def emb(seed: int) -> Tensor:
    return torch.randn(1, 4, 5, generator=gen(seed))


def image(seed: int, shape: tuple[int, ...] = (1, 3, 8, 8)) -> Tensor:
    return torch.rand(shape, generator=gen(seed)) * 1.8 - 0.9


def if_requests(net: Denoiser) -> list[DenoiseRequest]:
    """Different operations and settings on one network: CFG from noise, SDEdit at two start indices, an
    inpainting hook, 2- and 4-view anagrams, a hybrid, a one-step denoise."""
    ts = strided_timesteps(SCHEDULE, 100)
    x0, mask = image(9), (torch.arange(8).view(1, 1, 1, 8) < 4).float()

    hook_noise = gen(50)

    def project(x: Tensor, t_prev: int) -> Tensor:
        noise = torch.randn(x0.shape, generator=hook_noise)
        noised = x0 if t_prev < 0 else SCHEDULE.add_noise(x0, t_prev, noise)
        return mask * x + (1 - mask) * noised

    views2 = [get_view("identity"), get_view("flip_vertical")]
    views4 = [get_view(v) for v in ("identity", "rot90", "rot180", "negate")]
    return [
        DenoiseRequest(image(1), ts, ClassifierFree(net, emb(1), emb(0), 7.0), 0, generator=gen(11)),
        DenoiseRequest(image(2), ts, ClassifierFree(net, emb(2), emb(0), 3.0), 3, generator=gen(12)),
        DenoiseRequest(image(3), ts, ClassifierFree(net, emb(3), emb(0), 5.0), 7, generator=gen(13)),
        DenoiseRequest(image(4), ts, ClassifierFree(net, emb(4), emb(0), 7.0), 0, project, generator=gen(14)),
        DenoiseRequest(image(5), ts, Anagram(net, views2, [emb(5), emb(6)], emb(0), 7.0), 0, generator=gen(15)),
        DenoiseRequest(
            image(6), ts, Anagram(net, views4, [emb(i) for i in range(7, 11)], emb(0), 4.0), 2, generator=gen(16)
        ),
        DenoiseRequest(
            image(7), ts, Hybrid(net, GaussianBlur(5, 1.0), [emb(11), emb(12)], emb(0), 6.0), 0, generator=gen(17)
        ),
        DenoiseRequest(
            image(8),
            StridedTimesteps(SCHEDULE, (500,)),
            ClassifierFree(net, emb(13), emb(0), 7.0),
            0,
            generator=gen(18),
        ),
    ]


def reference_denoise(request: DenoiseRequest) -> Tensor:
    """The denoising loop as it was written before the step driver: the oracle for exact equality."""
    x, ts = request.x, request.timesteps
    for i in range(request.i, len(ts)):
        t, t_prev = ts[i], ts.prev(i)
        eps, v = request.guide(x, t)
        noise = torch.randn(x.shape, generator=request.generator) if t_prev >= 0 else None
        x, _ = ts.schedule.step(x, eps, t, t_prev, v=v, noise=noise)
        if request.project is not None:
            x = request.project(x, t_prev)
    return x


def test_a_request_driven_alone_equals_the_loop_before_the_driver() -> None:
    for make in range(len(if_requests(Denoiser()))):
        ours, ref = if_requests(Denoiser())[make], if_requests(Denoiser())[make]
        drive(ours)
        assert torch.equal(ours.x, reference_denoise(ref)), make


def test_every_request_of_a_mixed_batch_equals_its_result_alone() -> None:
    alone = []
    for request in if_requests(Denoiser()):
        drive(request)
        alone.append(request.x)
    net = Denoiser()
    together = if_requests(net)
    assert drive_all(together) == {}
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b.x)
    # one forward per step for all of them: as many forwards as the longest request has steps
    assert len(net.calls) == max(len(r.timesteps) - r.i_start for r in together) == 10


def test_per_row_timesteps_reach_the_network() -> None:
    net = Denoiser()
    requests = if_requests(net)[:3]  # CFG from index 0, 3 and 7 of 900, 800, ..., 0
    drive_all(requests)
    first = net.calls[0]
    assert first == [900, 900, 600, 600, 200, 200]  # one forward, each request's rows at its own timestep
    assert net.calls[2] == [700, 700, 400, 400, 0, 0] and net.calls[3] == [600, 600, 300, 300]  # the third is done


def test_canceling_or_failing_one_request_leaves_the_others_unchanged() -> None:
    alone = []
    for request in if_requests(Denoiser()):
        drive(request)
        alone.append(request.x)

    class Canceled(Exception):
        pass

    def cancel_at_2(step: int, total: int, *_: Tensor) -> None:
        if step == 2:
            raise Canceled

    requests = if_requests(Denoiser())
    requests[1].callback = cancel_at_2
    requests[4].x = torch.full_like(requests[4].x, math.nan)  # its rows make the network fail
    errors = drive_all(requests)
    assert set(errors) == {1, 4} and isinstance(errors[1], Canceled) and isinstance(errors[4], ValueError)
    for i, request in enumerate(requests):
        if i not in errors:
            assert torch.equal(request.x, alone[i]), i


def test_a_request_past_its_deadline_is_ended_before_its_next_step_alone() -> None:
    """A job's time limit: the driver ends the late request between two steps; the others go on unchanged."""
    alone = []
    for request in if_requests(Denoiser()):
        drive(request)
        alone.append(request.x)
    requests = if_requests(Denoiser())
    steps: list[int] = []
    requests[2].callback = lambda step, total, *_: steps.append(step)
    ended: dict[int, BaseException | None] = {}
    driver = StepDriver(on_finish=lambda r, e: ended.__setitem__(requests.index(r), e))
    for i, request in enumerate(requests):
        driver.submit(request, deadline=0.0 if i == 2 else None)  # already past: ended before its first step
    driver.run()
    assert isinstance(ended[2], DeadlineExceeded) and steps == []
    for i, request in enumerate(requests):
        if i != 2:
            assert ended[i] is None and torch.equal(request.x, alone[i]), i
    late = if_requests(Denoiser())[0]
    with pytest.raises(DeadlineExceeded):
        drive(late, deadline=0.0)


def test_max_rows_caps_a_forward_and_the_longest_waiting_go_first() -> None:
    net = Denoiser()
    driver = StepDriver(max_rows=4)
    requests = if_requests(net)[:3]  # 2 rows each
    for request in requests:
        driver.submit(request)
    driver.step()
    assert net.calls == [[900, 900, 600, 600]]  # two fit, the third waits ...
    driver.step()
    assert net.calls[1] == [200, 200, 800, 800]  # ... and goes first next time
    driver.run()
    assert all(len(c) <= 4 for c in net.calls)
    alone = if_requests(Denoiser())[:3]
    for a, b in zip(alone, requests, strict=True):
        drive(a)
        assert torch.equal(a.x, b.x)


def test_a_request_larger_than_max_rows_runs_in_chunks() -> None:
    net = Denoiser()
    request = if_requests(net)[5]  # a 4-view anagram: 8 rows
    drive(request, max_rows=3)
    assert all(len(c) <= 3 for c in net.calls) and sum(len(c) for c in net.calls) == 8 * 8
    ref = if_requests(Denoiser())[5]
    drive(ref)
    assert torch.equal(ref.x, request.x)


def test_an_out_of_memory_forward_is_split_in_halves_before_anyone_fails() -> None:
    net = Denoiser(oom_above=5)
    requests = if_requests(net)
    assert drive_all(requests) == {}
    assert max(len(c) for c in net.calls) <= 5
    alone = if_requests(Denoiser())
    for a, b in zip(alone, requests, strict=True):
        drive(a)
        assert torch.equal(a.x, b.x)
    with pytest.raises(torch.OutOfMemoryError):  # not even one row fits: that request fails
        drive(if_requests(Denoiser(oom_above=0))[0])


def flow_requests(net: Velocity) -> list[FlowRequest]:
    """Flow requests on one network: different rules, step counts, classes and guidance."""
    return [
        FlowRequest(torch.randn(2, 1, 4, 4, generator=gen(1)), time_grid(5), RULES["euler"], net.guide(3.0, 1)),
        FlowRequest(torch.randn(1, 1, 4, 4, generator=gen(2)), time_grid(3), RULES["heun"], net.guide(1.0, 7)),
        FlowRequest(torch.randn(3, 1, 4, 4, generator=gen(3)), time_grid(4), RULES["midpoint"], net.guide(5.0, 2)),
        FlowRequest(torch.randn(1, 1, 4, 4, generator=gen(4)), time_grid(8), RULES["euler"], net.guide(0.0, 9)),
    ]


class Velocity:
    """An analytic class-conditioned velocity network (rows independent) and CFG guides over it."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        self.calls.append(x.shape[0])
        k = (c * torch.arange(1, 11)).sum(1).view(-1, 1, 1, 1)
        return torch.cos(x * (1 + t.view(-1, 1, 1, 1))) + 0.1 * k

    def guide(self, scale: float, digit: int) -> object:
        net = self

        class Guide:
            network = net

            def inputs(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
                c = torch.nn.functional.one_hot(torch.full((x.shape[0],), digit), 10).float()
                return {"x": torch.cat([x, x]), "t": torch.cat([t, t]), "c": torch.cat([c, torch.zeros_like(c)])}

            def combine(self, v: Tensor) -> Tensor:
                v_c, v_u = v.chunk(2)
                return v_u + scale * (v_c - v_u)

        return Guide()


def reference_flow(request: FlowRequest) -> Tensor:
    """The solver loop before the driver, for the three rules."""
    x, ts, name = request.x, request.ts, type(request.rule).__name__
    velocity = lambda x, t: request.guide.combine(request.network(**request.guide.inputs(x, t)))  # noqa: E731
    for i in range(ts.shape[0] - 1):
        dt = (ts[i + 1] - ts[i]).to(x.dtype)
        t0, t1 = ts[i].expand(x.shape[0]), ts[i + 1].expand(x.shape[0])
        v0 = velocity(x, t0)
        if name == "_Euler":
            x = x + dt * v0
        elif name == "_Heun":
            x = x + dt * 0.5 * (v0 + velocity(x + dt * v0, t1))
        else:
            x = x + dt * velocity(x + 0.5 * dt * v0, (0.5 * (ts[i] + ts[i + 1])).expand(x.shape[0]))
    return x


def test_flow_requests_alone_and_mixed_equal_the_reference_solvers() -> None:
    for i in range(4):
        ours, ref = flow_requests(Velocity())[i], flow_requests(Velocity())[i]
        drive(ours)
        assert torch.equal(ours.x, reference_flow(ref)), i
    net = Velocity()
    together = flow_requests(net)
    assert drive_all(together) == {}
    for i, request in enumerate(together):
        alone = flow_requests(Velocity())[i]
        drive(alone)
        assert torch.equal(alone.x, request.x), i
    # evaluations: 5 (euler) / 6 (heun 3 x 2) / 8 (midpoint 4 x 2) / 8 (euler): 8 forwards, rows of all
    assert len(net.calls) == 8 and net.calls[0] == 2 * (2 + 1 + 3 + 1)


# ---- fair share between groups (tenants) when a forward cannot take every row ---------------------------------


class Rows:
    """A request of ``n`` rows that never finishes by itself (``steps`` None) or after ``steps`` evaluations."""

    def __init__(self, network: object, n: int, name: str, steps: int | None = None) -> None:
        self.network, self.n, self.name, self.steps, self.done = network, n, name, steps, 0

    def inputs(self) -> dict[str, Tensor]:
        return {"x": torch.zeros(self.n, 1)}

    def advance(self, output: Tensor) -> bool:
        self.done += 1
        return self.steps is not None and self.done >= self.steps


class Counter:
    """Records which requests (by name) each forward held, in order."""

    def __init__(self) -> None:
        self.forwards: list[list[str]] = []
        self.pending: list[str] = []

    def __call__(self, x: Tensor) -> Tensor:
        return x


def run_steps(driver: StepDriver, steps: int) -> list[list[str]]:
    seen: list[list[str]] = []
    driver.on_forward = lambda net, reqs, a, b: seen.append([r.name for r, _ in reqs])  # type: ignore[attr-defined]
    for _ in range(steps):
        driver.step()
    return seen


def test_rows_are_shared_by_weight_between_groups_each_fifo() -> None:
    net = Counter()
    driver = StepDriver(max_rows=3)
    for i in range(6):
        driver.submit(Rows(net, 1, f"a{i}"), group="a", weight=2)
    for i in range(6):
        driver.submit(Rows(net, 1, f"b{i}"), group="b", weight=1)
    seen = [sorted(f) for f in run_steps(driver, 6)]
    assert seen[:3] == [["a0", "a1", "b0"], ["a2", "a3", "b1"], ["a4", "a5", "b2"]]  # 2:1, FIFO in each group
    assert seen[3] == ["a0", "a1", "b3"]  # the served ones went to the back of their group
    rows = [sum(name[0] == g for f in seen for name in f) for g in "ab"]
    assert rows == [12, 6]


def test_a_turn_cut_short_by_a_full_forward_goes_on_at_the_next_step() -> None:
    """Requests of 100 rows, 256 rows a forward, weights 2:1: 2 of A fit, B's turn waits for the next step; over
    every three steps A sends 4 requests and B 2, and no forward is over the limit."""
    net = Counter()
    driver = StepDriver(max_rows=256)
    for i in range(8):
        driver.submit(Rows(net, 100, f"a{i}"), group="a", weight=2)
    for i in range(8):
        driver.submit(Rows(net, 100, f"b{i}"), group="b", weight=1)
    seen = [sorted(f) for f in run_steps(driver, 30)]
    assert all(len(f) <= 2 for f in seen)
    per = [sum(name[0] == g for f in seen for name in f) for g in "ab"]
    assert per == [40, 20]
    assert seen[:3] == [["a0", "a1"], ["a2", "b0"], ["a3", "b1"]]


def test_equal_weights_alternate_and_a_late_group_is_not_starved() -> None:
    net = Counter()
    driver = StepDriver(max_rows=2)
    for i in range(10):
        driver.submit(Rows(net, 1, f"a{i}"), group="a")
    first = run_steps(driver, 2)
    assert first == [["a0", "a1"], ["a2", "a3"]]  # one group alone: FIFO as before
    driver.submit(Rows(net, 1, "b0"), group="b")
    driver.submit(Rows(net, 1, "b1"), group="b")
    seen = run_steps(driver, 4)
    assert [sum(n[0] == "b" for n in f) for f in seen] == [1, 1, 1, 1]


def test_everything_fits_so_everyone_runs() -> None:
    net = Counter()
    driver = StepDriver(max_rows=10)
    for i, g in enumerate("aabbc"):
        driver.submit(Rows(net, 2, f"{g}{i}"), group=g, weight=1 + i)
    assert run_steps(driver, 1) == [["a0", "a1", "b2", "b3", "c4"]]


def test_a_request_larger_than_the_forward_still_runs_alone_on_its_turn() -> None:
    net = Counter()
    driver = StepDriver(max_rows=4)
    driver.submit(Rows(net, 6, "big"), group="a")
    driver.submit(Rows(net, 1, "b0"), group="b")
    driver.submit(Rows(net, 1, "b1"), group="b")
    seen = run_steps(driver, 4)
    assert ["big"] in seen and all("big" not in f or f == ["big"] for f in seen)
    assert sum(f.count("b0") for f in seen) >= 2  # b is not starved by the oversized request


def test_free_rows_are_filled_and_charged_to_the_group() -> None:
    """A's 3-row requests leave a row free that B's 1-row request takes; B pays it back later."""
    net = Counter()
    driver = StepDriver(max_rows=4)
    for i in range(4):
        driver.submit(Rows(net, 3, f"a{i}"), group="a")
    for i in range(4):
        driver.submit(Rows(net, 1, f"b{i}"), group="b")
    seen = run_steps(driver, 60)
    assert all(sum(3 if n[0] == "a" else 1 for n in f) <= 4 for f in seen)
    rows_a = 3 * sum(n[0] == "a" for f in seen for n in f)
    rows_b = sum(n[0] == "b" for f in seen for n in f)
    assert abs(rows_a - rows_b) <= 6, (rows_a, rows_b)  # equal weights: equal rows
