"""Which ``torch.compile`` mode a model runs in: one vocabulary for the engine, the CLI and the server.

Kept free of torch imports so ``--help`` and the server's argument parsing stay instant.
"""

from __future__ import annotations

from .errors import InputError

COMPILE_MODES = ("reduce-overhead", "max-autotune", "default")
COMPILE_CHOICES = ("auto", "off") + COMPILE_MODES
COMPILE_HELP = (
    "torch.compile the UNet, VAE and (for inversion) the text encoder: auto = CUDA graphs "
    "(reduce-overhead) on CUDA, off on the CPU; max-autotune also times GEMM/convolution kernels. "
    "Each new image size compiles once (~1.5 min at SD 2 scale; max-autotune: over 8 min for an "
    "inversion at SD 2 scale on an H200, and 5-9 s of timing for each of a render size's ~87 GEMM and "
    "convolution shapes): "
    "off starts fastest"
)


def resolve_compile_mode(compile: bool | str | None, device) -> str | None:
    """The ``torch.compile`` mode to use on ``device`` (a torch.device), or None for eager.

    ``None``/``"auto"``: ``reduce-overhead`` (CUDA graphs) on CUDA, eager elsewhere; ``True``: that
    mode on any device; ``False``/``"off"``: eager; or one of :data:`COMPILE_MODES`.
    """
    if compile is None or compile == "auto":
        return "reduce-overhead" if device.type == "cuda" else None
    if compile is True:
        return "reduce-overhead"
    if compile is False or compile == "off":
        return None
    if compile not in COMPILE_MODES:
        raise InputError(f"unknown compile mode '{compile}': use one of {', '.join(COMPILE_CHOICES)}")
    return str(compile)
