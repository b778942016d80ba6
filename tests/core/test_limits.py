"""One definition of each limit: the add-on's stdlib copy agrees with viewneti_backend.limits, and
every layer (schemas, cameras, token names, server config) reads the same values."""

from __future__ import annotations

import pytest

from blender_addon import limits as addon_limits
from viewneti_backend import limits

SHARED = [
    "MIN_SIZE",
    "MAX_SIZE",
    "SIZE_MULTIPLE",
    "MAX_STEPS",
    "MAX_INVERT_STEPS",
    "GPU_INVERT_STEPS",
    "CPU_INVERT_STEPS",
    "SIZE_WARNING_FACTOR",
    "MAX_REFERENCE_SIDE",
    "MAX_INVERT_ASPECT",
    "NAME_PATTERN",
    "NAME_RULE",
]


@pytest.mark.parametrize("name", SHARED)
def test_the_addon_copy_equals_the_backend(name):
    assert getattr(addon_limits, name) == getattr(limits, name)


def test_the_addon_copy_is_stdlib_only():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(addon_limits.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"re"}, imported


def test_the_layers_read_the_limits_module():
    from server import schemas
    from server.app import validate_name
    from server.config import ServerConfig
    from server.errors import ApiError
    from viewneti_backend import cameras, tokens

    size = schemas.CameraIn.model_json_schema()["properties"]["width"]
    assert (size["minimum"], size["maximum"], size["multipleOf"]) == (
        limits.MIN_SIZE,
        limits.MAX_SIZE,
        limits.SIZE_MULTIPLE,
    )
    assert (cameras.MIN_SIZE, cameras.MAX_SIZE) == (limits.MIN_SIZE, limits.MAX_SIZE)
    assert tokens.NAME_PATTERN is limits.NAME_RE
    longest = "a" * limits.NAME_MAX_LENGTH
    assert validate_name(longest) == longest  # the server checks names by the same rule
    for bad in (longest + "a", "-a", "a.b"):
        assert not limits.NAME_RE.match(bad)
        with pytest.raises(ApiError, match="letters, digits") as err:
            validate_name(bad)
        assert err.value.status == 400 and limits.NAME_RULE in err.value.message
    assert schemas.NAME_PATTERN == limits.NAME_PATTERN
    steps = schemas.InvertRequest.model_json_schema()["properties"]["steps"]
    integer = next(b for b in steps.get("anyOf", [steps]) if b.get("type") == "integer")
    assert integer["maximum"] == limits.MAX_INVERT_STEPS and steps.get("default") is None  # None: health's
    c = ServerConfig()
    assert (c.max_size, c.max_steps, c.max_invert_steps) == (
        limits.MAX_SIZE,
        limits.MAX_STEPS,
        limits.DEFAULT_MAX_INVERT_STEPS,
    )


@pytest.mark.parametrize(
    "device,native,configured,expected",
    [
        ("cpu", 64, 2048, 256),
        ("cpu", 768, 2048, 2048),
        ("cpu", 64, 128, 128),
        ("cuda:0", 64, 2048, 2048),
        (None, 64, 2048, 2048),
    ],
)
def test_device_max_size(device, native, configured, expected):
    assert limits.device_max_size(device, native, configured) == expected


def test_aspect_and_names():
    assert limits.aspect_error(512, 128) is None
    assert "4:1" in (limits.aspect_error(520, 128) or "")
    assert limits.is_valid_name("mug_01") and not limits.is_valid_name("../x") and not limits.is_valid_name("a" * 65)
    assert limits.size_error("width", 60) and limits.size_error("width", 4096) and not limits.size_error("width", 64)
