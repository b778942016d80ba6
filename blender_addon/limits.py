"""The wire contract's limits, as the add-on sees them (stdlib only).

A copy of the values defined in ``viewneti_backend/limits.py`` (the add-on never imports the
backend); ``tests/core/test_limits.py`` fails when the two differ. The response caps at the end
are the add-on's own.
"""

import re

MIN_SIZE = 16
MAX_SIZE = 2048
SIZE_MULTIPLE = 8
MAX_STEPS = 150
MAX_INVERT_STEPS = 100_000
GPU_INVERT_STEPS = 3000
CPU_INVERT_STEPS = 150
SIZE_WARNING_FACTOR = 2.0
MAX_REFERENCE_SIDE = 4096
MAX_INVERT_ASPECT = 4.0
MIN_GUIDANCE = 0.0
MAX_GUIDANCE = 30.0
MAX_SEQUENCE_FRAMES = 10_000
_NAME_BODY = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
NAME_PATTERN = f"^{_NAME_BODY}$"
NAME_RE = re.compile(rf"\A{_NAME_BODY}\Z")  # \Z, not $: "mug\n" is no name
NAME_RULE = "use 1-64 letters, digits, '_' or '-', starting with a letter or digit (no paths, dots or spaces)"

# -- the add-on's own caps on what a backend sends back ---------------------------------------
MAX_JSON_BYTES = 8 * 1024 * 1024  # a job list or an error body is kilobytes
# an RGBA PNG of MAX_SIZE x MAX_SIZE stored without compression, plus slack for chunks and filters
MAX_IMAGE_BYTES = MAX_SIZE * MAX_SIZE * 4 + MAX_SIZE + 64 * 1024
MAX_SSE_LINE_BYTES = MAX_IMAGE_BYTES * 4 // 3 + 4096  # one event line: a base64 preview PNG at most
