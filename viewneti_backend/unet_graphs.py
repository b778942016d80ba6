"""CUDA-graph replay of the uncompiled UNet, for render shapes that have no compiled graph yet.

Until a shape is compiled (minutes at SD 2 scale, in the background), its renders run the eager
UNet: some two thousand kernel launches per step, issued one by one from Python, which leave the GPU
mostly idle (44 ms a step at 768x576 on an H100, against 10.7 compiled) and slow down further when
compile helpers load the CPU. :class:`GraphedUNet` records the eager UNet's kernels into a CUDA graph
at the second step of a shape and replays that graph for every later step: the same kernels on the
same inputs, so the same maths, with no compile and no per-step Python.

A shape's first call runs plain eager (it is also the warm-up that a capture needs: cuBLAS handles,
cuDNN plans); its second call records and replays; later calls copy their inputs into the recorded
graph's input buffers and replay. A shape whose capture fails runs plain eager from then on.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# Recorded graphs kept at once, least recently used dropped first: each holds its own activation memory
# (about a UNet forward's worth), and a user moves between few sizes before they are compiled.
MAX_UNET_GRAPHS = 2

GraphKey = tuple[Any, ...]


class _RecordedStep:
    """One recorded UNet call: static input buffers, the graph, and its output buffer."""

    def __init__(
        self, unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> None:
        self.sample = sample.clone()
        self.timestep = timestep.to(sample.device, copy=True)
        self.encoder_hidden_states = encoder_hidden_states.clone()
        self.graph = torch.cuda.CUDAGraph()
        ambient = torch.cuda.current_stream(sample.device)
        stream = torch.cuda.Stream(sample.device)
        stream.wait_stream(ambient)  # the input buffers were filled on the ambient stream
        # capture_begin/end rather than torch.cuda.graph(), which synchronizes the device and empties the
        # allocator's cache first: the server may be recording a compiled shape's graphs in another thread.
        # Thread-local mode: that thread's GPU work does not break this capture, nor this one that thread's.
        with torch.cuda.stream(stream):
            self.graph.capture_begin(capture_error_mode="thread_local")
            try:
                self.output = unet(
                    self.sample, self.timestep, encoder_hidden_states=self.encoder_hidden_states, return_dict=False
                )[0]
            except BaseException:
                try:
                    self.graph.capture_end()
                except Exception:  # noqa: BLE001 - the capture is broken anyway; the first error is the one to report
                    pass
                raise
            self.graph.capture_end()
        ambient.wait_stream(stream)

    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        self.sample.copy_(sample)
        self.timestep.copy_(timestep)
        self.encoder_hidden_states.copy_(encoder_hidden_states)
        self.graph.replay()
        return self.output.clone()  # the next replay overwrites the output buffer


class GraphedUNet(nn.Module):
    """The eager UNet, replayed from CUDA graphs per input shape (see the module docstring).

    Called like the UNet as the pipeline calls it: ``(sample, timestep, encoder_hidden_states=...,
    return_dict=False)``. Anything else (CPU tensors, gradients on, other arguments) runs plain eager.
    """

    def __init__(self, unet: nn.Module, max_graphs: int = MAX_UNET_GRAPHS) -> None:
        super().__init__()
        self.unet = unet
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[GraphKey, _RecordedStep] = OrderedDict()
        self._warmed: set[GraphKey] = set()  # shapes whose plain first call ran (the capture's warm-up)
        self.failed: dict[GraphKey, str] = {}  # shapes whose capture raised -> why; they stay plain eager
        self.recording = True  # False: every call runs plain (set after running out of GPU memory)
        self._lock = threading.Lock()

    @property
    def config(self) -> Any:  # the pipeline and schedulers read the UNet's config through this module too
        return self.unet.config

    @property
    def recorded(self) -> int:
        """How many shapes have a recorded graph now."""
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every recorded graph and its memory (the next call of each shape records again), after
        the GPU has finished the replays already queued: their memory must not be handed out before."""
        with self._lock:
            if any(key[2].type == "cuda" for key in self._graphs):  # key[2]: the inputs' device
                torch.cuda.synchronize()
            self._graphs.clear()
            self._warmed.clear()

    def _graphable(self, sample: torch.Tensor) -> bool:
        """Whether this input can be recorded: CUDA graphs record CUDA kernels only."""
        return sample.device.type == "cuda"

    def _record(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> _RecordedStep:
        return _RecordedStep(self.unet, sample, timestep, encoder_hidden_states)

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict: bool = True, **kwargs):
        ehs = encoder_hidden_states
        if (
            return_dict
            or kwargs
            or torch.is_grad_enabled()
            or not isinstance(ehs, torch.Tensor)
            or not isinstance(timestep, torch.Tensor)
            or not self.recording
            or not self._graphable(sample)
        ):
            return self.unet(sample, timestep, encoder_hidden_states=ehs, return_dict=return_dict, **kwargs)
        return (self._step(sample, timestep, ehs),)

    def _plain(self, sample: torch.Tensor, timestep: torch.Tensor, ehs: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=ehs, return_dict=False)[0]

    def _step(self, sample: torch.Tensor, timestep: torch.Tensor, ehs: torch.Tensor) -> torch.Tensor:
        """One UNet call: plain the first time at a shape, recorded the second, replayed after."""
        key = (
            tuple(sample.shape),
            sample.dtype,
            sample.device,
            tuple(ehs.shape),
            ehs.dtype,
            tuple(timestep.shape),
            timestep.dtype,
        )
        with self._lock:
            if key in self.failed:
                return self._plain(sample, timestep, ehs)
            step = self._graphs.get(key)
            if step is None:
                if key not in self._warmed:
                    self._warmed.add(key)
                    return self._plain(sample, timestep, ehs)
                try:
                    step = self._record(sample, timestep, ehs)
                except Exception as exc:  # noqa: BLE001 - same maths without the graph: the render goes on
                    self.failed[key] = f"{type(exc).__name__}: {exc}"[:300]
                    log.warning(
                        "could not record a CUDA graph of the uncompiled UNet at %s; running it plain",
                        key[0],
                        exc_info=exc,
                    )
                    return self._plain(sample, timestep, ehs)
                self._graphs[key] = step
                while len(self._graphs) > self.max_graphs:
                    old, _ = self._graphs.popitem(last=False)
                    self._warmed.discard(old)
            self._graphs.move_to_end(key)
            return step(sample, timestep, ehs)
