"""Host -> device copies that do not stall the GPU."""

from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without a stream sync on CUDA (pinned + non-blocking); a plain copy elsewhere."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class ScalarReadback:
    """A snapshot of a device scalar, copied to the host without making the host wait for work queued after it.

    ``float(t)`` on a CUDA tensor synchronises the whole stream: it waits for everything queued so
    far, including a training step queued after ``t`` was computed, so the GPU drains and then sits
    idle while the host prepares the next step. Instead the copy goes to pinned memory as soon as
    ``t`` is queued, with an event recorded after it; ``value()`` waits for that event only.
    On the CPU the value is read at once.
    """

    def __init__(self, t: torch.Tensor):
        if t.device.type == "cuda":
            self._host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self._host.copy_(t.detach(), non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host, self._event = float(t), None

    def ready(self) -> bool:
        """True once the value can be read without waiting."""
        return self._event is None or self._event.query()

    def value(self) -> float:
        if self._event is not None:
            self._event.synchronize()
        return float(self._host)
