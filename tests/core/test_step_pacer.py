"""StepPacer: the host stays at most STEPS_AHEAD denoising steps ahead of the GPU while a render can be
stopped, and progress reports steps the GPU has done (fake events here; the timing is a GPU benchmark:
benchmarks/gpu_render_options.py --sections cancel)."""

import pytest
import torch

from viewneti_backend import step_pacer
from viewneti_backend.errors import Cancelled
from viewneti_backend.step_pacer import STEPS_AHEAD, StepPacer


class FakeEvent:
    def __init__(self, log: list) -> None:
        self.log, self.step = log, None
        self.done = False

    def record(self) -> None:
        self.step = len([e for e in self.log if e[0] == "record"]) + 1
        self.log.append(("record", self.step))

    def synchronize(self) -> None:
        self.done = True
        self.log.append(("wait", self.step))


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
    with pytest.raises(ValueError, match="0 or more"):
        StepPacer(torch.device("cpu"), ahead=-1)


def test_in_lockstep_no_step_stays_ahead_and_it_is_asked_at_each_step():
    """``lockstep()`` true: the step just issued is waited for, with every one before it (a render served
    from on_step then waits for no queued step); false again: back to ``ahead``."""
    log: list = []
    now = iter([False, False, False, True, False, False])
    pacer = StepPacer(torch.device("cuda"), ahead=2, event_factory=lambda: FakeEvent(log), lockstep=lambda: next(now))
    reported = [pacer.issued(k) for k in range(1, 7)]
    assert reported == [[], [], [1], [2, 3, 4], [], []]
    issued_then_waited = [("record", k) for k in (1, 2, 3)] + [("wait", 1), ("record", 4)]
    assert log == issued_then_waited + [("wait", k) for k in (2, 3, 4)] + [("record", 5), ("record", 6)]
    assert pacer.rest() == [5, 6]
    cpu = StepPacer(torch.device("cpu"), lockstep=lambda: True)  # nothing to wait for on the CPU
    assert [cpu.issued(k) for k in (1, 2)] == [[1], [2]]


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

    def fake_events(self, device, ahead=None, event_factory=None, lockstep=None):
        real_init(self, device, ahead, lambda: FakeEvent(log), lockstep)

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

    log.clear()  # in lockstep: each step waited for before the next is issued, the same latents
    locked = pipe(
        cam,
        mapper,
        seed=1,
        steps=3,
        guidance=2.0,
        with_view=False,
        output="latent",
        on_step=on_step,
        lockstep=lambda: True,
    )
    assert log == [(kind, k) for k in (1, 2, 3) for kind in ("record", "wait")]
    assert torch.equal(locked, pipe(cam, mapper, seed=1, steps=3, guidance=2.0, with_view=False, output="latent"))
