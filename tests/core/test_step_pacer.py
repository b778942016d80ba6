"""StepPacer: the host stays at most STEPS_AHEAD denoising steps (and, once a step's GPU time is known,
about QUEUED_MS of them, at least one) ahead of the GPU while a render can be stopped, and progress
reports steps the GPU has done (fake events here; the timing is a GPU benchmark:
benchmarks/gpu_render_options.py --sections cancel, and benchmarks/server_gpu.py's live renders during a
sequence job)."""

import pytest
import torch

from viewneti_backend import step_pacer
from viewneti_backend.errors import Cancelled
from viewneti_backend.step_pacer import QUEUED_MS, STEPS_AHEAD, StepPacer


class FakeEvent:
    """A CUDA event stand-in: step k's event is recorded at ``ends_ms[k - 1]`` of GPU time (default: 5 ms a
    step, a short step that keeps STEPS_AHEAD)."""

    def __init__(self, log: list, ends_ms: list[float] | None = None) -> None:
        self.log, self.step, self.ends_ms = log, 0, ends_ms
        self.done = False

    def record(self) -> None:
        self.step = len([e for e in self.log if e[0] == "record"]) + 1
        self.log.append(("record", self.step))

    def synchronize(self) -> None:
        self.done = True
        self.log.append(("wait", self.step))

    def at_ms(self) -> float:
        return self.ends_ms[self.step - 1] if self.ends_ms is not None else 5.0 * self.step

    def elapsed_time(self, end: "FakeEvent") -> float:
        assert self.done and end.done, "CUDA can time two events only once both are done"
        return end.at_ms() - self.at_ms()


def test_waits_for_the_oldest_step_once_more_than_ahead_are_in_flight():
    log: list = []
    pacer = StepPacer(torch.device("cuda"), ahead=2, event_factory=lambda: FakeEvent(log))
    reported = [pacer.issued(k) for k in range(1, 6)]
    assert reported == [[], [], [1], [2], [3]]
    assert log == [
        ("record", 1),
        ("record", 2),
        ("record", 3),
        ("wait", 1),
        ("record", 4),
        ("wait", 2),
        ("record", 5),
        ("wait", 3),
    ]
    assert pacer.rest() == [4, 5] and pacer.rest() == []  # reported without waiting: the decode follows
    assert log[-1] == ("wait", 3)


def test_ahead_zero_waits_for_each_step_and_the_cpu_never_waits():
    log: list = []
    pacer = StepPacer(torch.device("cuda"), ahead=0, event_factory=lambda: FakeEvent(log))
    assert [pacer.issued(k) for k in (1, 2)] == [[1], [2]] and pacer.rest() == []
    cpu = StepPacer(torch.device("cpu"))
    assert [cpu.issued(k) for k in (1, 2, 3)] == [[1], [2], [3]] and cpu.rest() == []
    assert StepPacer(torch.device("cpu")).ahead == STEPS_AHEAD == 2
    assert StepPacer(torch.device("cpu")).queued_ms == QUEUED_MS == 25.0
    with pytest.raises(ValueError, match="0 or more"):
        StepPacer(torch.device("cpu"), ahead=-1)
    with pytest.raises(ValueError, match="more than 0"):
        StepPacer(torch.device("cpu"), queued_ms=0)


def test_long_steps_are_paced_one_ahead_once_their_time_is_known():
    """A sequence job's batched step (~60 ms on an H100): once two steps were waited for, their GPU time
    says two queued steps would be ~120 ms ahead of a live render served between them; one is let run
    ahead from then on. Steps of 10 ms (a 768x576 view) keep two ahead."""
    log: list = []
    ends = [300.0 + 60.0 * k for k in range(8)]  # step 1 ends after the text encoder's 300 ms
    pacer = StepPacer(torch.device("cuda"), ahead=2, event_factory=lambda: FakeEvent(log, ends))
    assert pacer.allowed_ahead() == 2 and pacer.step_ms is None
    reported = [pacer.issued(k) for k in range(1, 7)]
    # steps 1 and 2 waited for as before; 2 - 1 = 60 ms a step: from step 4 on, one step in flight
    assert reported == [[], [], [1], [2, 3], [4], [5]]
    assert pacer.step_ms == 60.0 and pacer.allowed_ahead() == 1
    assert pacer.rest() == [6]

    log2: list = []
    short = StepPacer(
        torch.device("cuda"), ahead=2, event_factory=lambda: FakeEvent(log2, [10.0 * k for k in range(8)])
    )
    assert [short.issued(k) for k in range(1, 7)] == [[], [], [1], [2], [3], [4]]
    assert short.step_ms == 10.0 and short.allowed_ahead() == 2


def test_an_idle_gpu_between_steps_does_not_make_a_step_look_long():
    """The step time is the shortest between two consecutive steps' events: a gap where the GPU waited
    for the host (a live render served between two steps ran first, say) only lengthens one of them."""
    ends = [0.0, 10.0, 110.0, 120.0, 130.0, 140.0, 150.0]  # 100 ms where the GPU ran something else
    log: list = []
    pacer = StepPacer(torch.device("cuda"), ahead=2, event_factory=lambda: FakeEvent(log, ends))
    for k in range(1, 8):
        pacer.issued(k)
    assert pacer.step_ms == 10.0 and pacer.allowed_ahead() == 2
    log0: list = []
    zero = StepPacer(torch.device("cuda"), ahead=0, event_factory=lambda: FakeEvent(log0, [60.0 * k for k in range(4)]))
    assert [zero.issued(k) for k in (1, 2, 3)] == [[1], [2], [3]] and zero.allowed_ahead() == 0


def test_a_stoppable_render_is_paced_and_reports_every_step_once_in_order(tiny_base, monkeypatch):
    """Through the pipeline's loop (fake events standing in for CUDA's): with should_stop or on_step the
    host waits for step k once step k + STEPS_AHEAD is issued, on_step reports each step once, in order,
    after the GPU did it (the last STEPS_AHEAD as issued), and a stop leaves at most STEPS_AHEAD steps
    queued. The latents do not change."""
    from viewneti_backend.cameras import Camera, orbit_pose
    from viewneti_backend.mapper import MapperConfig, NeTIMapper
    from viewneti_backend.pipeline import ViewNeTIPipeline

    log: list = []
    real_init = StepPacer.__init__

    def fake_events(self, device, ahead=None, event_factory=None, queued_ms=None):
        real_init(self, device, ahead, lambda: FakeEvent(log), queued_ms)

    monkeypatch.setattr(step_pacer.StepPacer, "__init__", fake_events)
    text = tiny_base.text
    mapper = NeTIMapper(MapperConfig("object", "<object>", text.embedding_dim, tiny_base.num_layers)).eval()
    pipe = ViewNeTIPipeline(tiny_base)
    cam = [Camera(orbit_pose(10.0, 20.0, 4.0), 40.0, 32, 32)]
    plain = pipe(cam, mapper, seed=1, steps=6, guidance=2.0, with_view=False, output="latent")
    assert log == []  # nothing to stop or report: not paced
    seen: list = []

    def on_step(k, total):
        seen.append((k, total, len(log)))

    paced = pipe(cam, mapper, seed=1, steps=6, guidance=2.0, with_view=False, output="latent", on_step=on_step)
    assert torch.equal(plain, paced)
    assert [k for k, _, _ in seen] == [1, 2, 3, 4, 5, 6] and {t for _, t, _ in seen} == {6}
    waits = [k for kind, k in log if kind == "wait"]
    assert waits == [1, 2, 3, 4]  # steps 5 and 6 reported as issued
    for k, _, n_log in seen[:4]:  # step k reported after the wait for it
        assert ("wait", k) in log[:n_log]

    log.clear()
    issued = []

    def stop_after_three():
        issued.append(len([e for e in log if e[0] == "record"]))
        return issued[-1] >= 3

    with pytest.raises(Cancelled, match="stopped at step 3 of 6"):
        pipe(cam, mapper, seed=1, steps=6, guidance=2.0, with_view=False, output="latent", should_stop=stop_after_three)
    in_flight = [k for kind, k in log if kind == "record" and ("wait", k) not in log]
    assert in_flight == [2, 3] and len(in_flight) <= STEPS_AHEAD


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: real CUDA events are timed")
def test_step_times_come_from_timed_cuda_events():
    """On a GPU the pacer's events are timed: a 'step' of GEMMs long enough to pass QUEUED_MS / 2 is
    measured as about what CUDA events around it say, and the pacer then keeps one step in flight."""
    a = torch.randn(8192, 8192, device="cuda")

    def step() -> None:
        for _ in range(3):
            torch.mm(a, a)

    step()  # first-use costs out of the way
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    end.synchronize()
    reference = start.elapsed_time(end)
    reps = max(1, int(QUEUED_MS // reference) + 1)  # one pacer step of more than QUEUED_MS
    pacer = StepPacer(torch.device("cuda"))
    done = []
    for k in range(1, 7):
        for _ in range(reps):
            step()
        done += pacer.issued(k)
    done += pacer.rest()
    assert done == [1, 2, 3, 4, 5, 6]
    assert pacer.step_ms is not None and 0.8 * reps * reference < pacer.step_ms < 1.25 * reps * reference, (
        pacer.step_ms,
        reps * reference,
    )
    assert pacer.allowed_ahead() == 1
