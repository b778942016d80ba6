"""A channels-last group norm's statistics by a Triton kernel (CUDA renders; needs ``triton``).

Inductor compiles a group norm over channels-last activations into reductions that reach a fifth of
the GPU's memory bandwidth (RESULTS section 1): a group's values are ``C / G`` neighbouring channels
repeated at every pixel, and its kernels give each (image, group) pair one program that walks the
whole image. :func:`channel_partial_sums` reads the tensor once, in full cache lines, in hundreds of
programs (each a strip of pixels by 64 channels), and writes each strip's per-channel sums of the
values and of their squares, less a shift (the channel's value at the first pixel, so that the
variance loses no digits when the mean dwarfs the spread). Summing the strips, combining a group's
channels (within- plus between-channel variance) and normalizing are ordinary torch ops that
inductor fuses with what follows (a SiLU, say): ``group_norm.partial_sums_group_norm``.

The partial sums are deterministic (no atomics: each program writes its own slots, summed in a fixed
order), so a render's bytes stay the same from call to call. :func:`channel_partial_sums_reference`
computes the same partials with torch ops on any device: the CPU's stand-in, and what the kernel is
tested against.
"""

from __future__ import annotations

import torch

# Pixels a program loads at once, and channels (64 bf16 values: one 128-byte cache line of a row).
# Every channel count of SD 2's UNet and VAE is a multiple of 64.
BLOCK_PIXELS = 32
BLOCK_CHANNELS = 64
# Programs to aim for: a few per streaming multiprocessor of an H100/H200 (132), so that every SM
# has work and a strip is long enough to keep the loads streaming.
TARGET_PROGRAMS = 512


def strip_rows(batch: int, pixels: int, channels: int) -> int:
    """Pixels per program: ~TARGET_PROGRAMS programs in all (batch x strips x channel blocks), a
    multiple of BLOCK_PIXELS."""
    per_strip = max(batch, 1) * -(-channels // BLOCK_CHANNELS)
    strips = max(1, TARGET_PROGRAMS // per_strip)
    rows = -(-pixels // strips)
    return max(BLOCK_PIXELS, -(-rows // BLOCK_PIXELS) * BLOCK_PIXELS)


def _pixels_by_channels(x: torch.Tensor) -> torch.Tensor:
    """``x`` [N, C, H, W] as its channels-last memory, [N, H * W, C] (a view when x is channels-last)."""
    if x.dim() != 4:
        raise ValueError(f"group norm statistics: expected a 4-D [N, C, H, W] tensor, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def channel_partial_sums_reference(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the kernel computes, with torch ops: ``(partials, shift)``.

    ``shift`` [N, C] float32 is each channel's value at the first pixel; ``partials`` [N, S, 2, C]
    float32 holds, for each strip of ``rows`` pixels, the sum of ``x - shift`` over the strip and
    the sum of its squares.
    """
    flat = _pixels_by_channels(x).float()
    b, pixels, c = flat.shape
    shift = flat[:, 0]
    strips = -(-pixels // rows)
    padded = torch.zeros(b, strips * rows, c, dtype=torch.float32, device=x.device)
    padded[:, :pixels] = flat - shift[:, None]
    by_strip = padded.reshape(b, strips, rows, c)
    return torch.stack([by_strip.sum(dim=2), by_strip.square().sum(dim=2)], dim=2), shift


def triton_available() -> bool:
    """Whether the Triton kernel can run here (``triton`` imports; CUDA builds of torch ship it)."""
    return _op() is not None


_OP: object | None = None
_OP_TRIED = False


def _op():  # noqa: ANN202  returns torch's custom-op object, or None
    """Define the kernel and its torch op on first use; None without ``triton``."""
    global _OP, _OP_TRIED
    if _OP_TRIED:
        return _OP
    _OP_TRIED = True
    try:
        import triton  # pyright: ignore[reportMissingImports]
        import triton.language as tl  # pyright: ignore[reportMissingImports]
    except ImportError:
        return None

    @triton.jit
    def channel_sums_kernel(
        x_ptr,
        partials_ptr,
        shift_ptr,
        pixels,
        channels,
        rows,
        strips,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        image = tl.program_id(0)
        strip = tl.program_id(1)
        cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = cols < channels
        x_image = x_ptr + image.to(tl.int64) * pixels * channels
        shift = tl.load(x_image + cols, mask=col_ok, other=0.0).to(tl.float32)  # pixel 0
        sums = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        squares = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        row0 = strip * rows
        for r0 in range(row0, row0 + rows, BLOCK_P):
            pix = r0 + tl.arange(0, BLOCK_P)
            ok = (pix[:, None] < pixels) & col_ok[None, :]
            v = tl.load(x_image + pix[:, None] * channels + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            d = tl.where(ok, v - shift[None, :], 0.0)
            sums += d
            squares += d * d
        out = partials_ptr + (image * strips + strip) * 2 * channels + cols
        tl.store(out, tl.sum(sums, axis=0), mask=col_ok)
        tl.store(out + channels, tl.sum(squares, axis=0), mask=col_ok)
        if strip == 0:
            tl.store(shift_ptr + image * channels + cols, shift, mask=col_ok)

    @torch.library.triton_op("viewneti::channel_partial_sums", mutates_args=())
    def channel_partial_sums_op(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        flat = _pixels_by_channels(x).contiguous()
        b, pixels, c = flat.shape
        strips = -(-pixels // rows)
        partials = torch.empty(b, strips, 2, c, dtype=torch.float32, device=x.device)
        shift = torch.empty(b, c, dtype=torch.float32, device=x.device)
        grid = (b, strips, -(-c // BLOCK_CHANNELS))
        torch.library.wrap_triton(channel_sums_kernel)[grid](
            flat, partials, shift, pixels, c, rows, strips, BLOCK_P=BLOCK_PIXELS, BLOCK_C=BLOCK_CHANNELS
        )
        return partials, shift

    _OP = channel_partial_sums_op
    return _OP


def channel_partial_sums(x: torch.Tensor, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(partials, shift)`` of :func:`channel_partial_sums_reference`, by the Triton kernel.

    ``rows`` defaults to :func:`strip_rows`. Raises RuntimeError without ``triton``."""
    op = _op()
    if op is None:
        raise RuntimeError("channel_partial_sums needs triton (CUDA builds of torch ship it); use the split group norm")
    b, c, h, w = x.shape
    return op(x, rows or strip_rows(b, h * w, c))  # pyright: ignore[reportCallIssue]
