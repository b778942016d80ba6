"""One definition of each limit: the add-on's stdlib copy agrees with viewneti_backend.limits, and
every layer (schemas, cameras, token names, server config) reads the same values."""

from __future__ import annotations

from pathlib import Path

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
    "MIN_GUIDANCE",
    "MAX_GUIDANCE",
    "MAX_SEQUENCE_FRAMES",
    "NAME_PATTERN",
    "NAME_RULE",
]


@pytest.mark.parametrize("name", SHARED)
def test_the_addon_copy_equals_the_backend(name):
    assert getattr(addon_limits, name) == getattr(limits, name)


def test_the_addon_checks_names_with_the_backends_regex():
    assert addon_limits.NAME_RE.pattern == limits.NAME_RE.pattern
    assert addon_limits.NAME_RE.flags == limits.NAME_RE.flags


def test_the_addon_copy_is_stdlib_only():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(addon_limits.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"re"}, imported


def test_the_layers_read_the_limits_module():
    from server import __main__ as server_cli
    from server import schemas
    from server.app import validate_name
    from server.config import ServerConfig
    from server.errors import ApiError
    from viewneti_backend import cameras, sampling_defaults, tokens

    size = schemas.CameraIn.model_json_schema()["properties"]["width"]
    assert (size["minimum"], size["maximum"], size["multipleOf"]) == (
        limits.MIN_SIZE,
        limits.MAX_SIZE,
        limits.SIZE_MULTIPLE,
    )
    assert cameras.MIN_SIZE == limits.MIN_SIZE and cameras.size_error is limits.size_error
    assert tokens.NAME_PATTERN is limits.NAME_RE
    longest = "a" * limits.NAME_MAX_LENGTH
    assert validate_name(longest) == longest  # the server checks names by the same rule
    for bad in (longest + "a", "-a", "a.b", "a\n"):
        assert not limits.NAME_RE.match(bad)
        with pytest.raises(ApiError, match="letters, digits") as err:
            validate_name(bad)
        assert err.value.status == 400 and limits.NAME_RULE in err.value.message
    assert schemas.NAME_PATTERN == limits.NAME_PATTERN
    steps = schemas.InvertRequest.model_json_schema()["properties"]["steps"]
    integer = next(b for b in steps.get("anyOf", [steps]) if b.get("type") == "integer")
    assert integer["maximum"] == limits.MAX_INVERT_STEPS and steps.get("default") is None  # None: health's
    guidance = schemas.RenderRequest.model_json_schema()["properties"]["guidance"]
    number = next(b for b in guidance["anyOf"] if b.get("type") == "number")
    assert (number["minimum"], number["maximum"]) == (limits.MIN_GUIDANCE, limits.MAX_GUIDANCE)
    assert f"{limits.MIN_GUIDANCE:g}..{limits.MAX_GUIDANCE:g}" in guidance["description"]
    assert (sampling_defaults.MIN_GUIDANCE, sampling_defaults.MAX_GUIDANCE) == (
        limits.MIN_GUIDANCE,
        limits.MAX_GUIDANCE,
    )
    c = ServerConfig()
    assert (c.max_size, c.max_steps, c.max_invert_steps) == (
        limits.MAX_SIZE,
        limits.MAX_STEPS,
        limits.DEFAULT_MAX_INVERT_STEPS,
    )
    # the command line's defaults are the config's (one definition each)
    args = server_cli.build_parser().parse_args([])
    assert (args.max_size, args.max_steps, args.max_invert_steps) == (c.max_size, c.max_steps, c.max_invert_steps)
    assert (args.max_jobs, args.max_connections) == (c.max_queued_jobs, c.max_connections)
    assert (args.header_timeout, args.body_timeout) == (c.header_timeout_s, c.body_timeout_s)


def test_guidance_bounds_are_enforced_where_they_are_read():
    from pydantic import ValidationError

    from server.schemas import RenderRequest
    from viewneti_backend.sampling_defaults import SamplingDefaults, SamplingDefaultsError

    cam = {"camera_to_anchor": [[1, 0, 0, 0], [0, 0, -1, -4], [0, 1, 0, 0], [0, 0, 0, 1]]}
    for g in (limits.MIN_GUIDANCE, limits.MAX_GUIDANCE):
        assert RenderRequest.model_validate({"camera": cam, "guidance": g}).guidance == g
        assert SamplingDefaults(guidance=g).guidance == g
    for g in (limits.MIN_GUIDANCE - 0.5, limits.MAX_GUIDANCE + 0.5):
        with pytest.raises(ValidationError):
            RenderRequest.model_validate({"camera": cam, "guidance": g})
        with pytest.raises(SamplingDefaultsError, match="'guidance' must be between"):
            SamplingDefaults(guidance=g)


def test_one_default_data_dir(monkeypatch, tmp_path):
    from server.config import ServerConfig
    from viewneti_backend import cli
    from viewneti_backend.data_dir import DATA_DIR_ENV

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "d"))
    config = ServerConfig()
    assert config.data_dir == tmp_path / "d"
    assert cli.default_library() == config.objects_dir == tmp_path / "d" / "objects"
    monkeypatch.delenv(DATA_DIR_ENV)
    home = Path("~/.local/share/viewneti").expanduser()
    assert ServerConfig().data_dir == home and cli.default_library() == home / "objects"


def test_openapi_size_cap_uses_the_size_multiple():
    from server.openapi_doc import patch_schema

    base = {"components": {"schemas": {"CameraIn": {"properties": {"width": {"maximum": 2048.0}}}}}}
    width = patch_schema(base, max_size=100, max_steps=4, max_invert_steps=10, token_required=False)["components"][
        "schemas"
    ]["CameraIn"]["properties"]["width"]
    assert width["maximum"] == 100 // limits.SIZE_MULTIPLE * limits.SIZE_MULTIPLE
    assert f"a multiple of {limits.SIZE_MULTIPLE}" in width["description"]


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
    assert not limits.size_error("width", 300, multiple=4) and "multiple of 4" in (limits.size_error("w", 302, 4) or "")


@pytest.mark.parametrize("name", ["mug\n", "mug\r\n", "\nmug", "mug\x00", "mu\ng", "mug ", ""])
def test_a_name_with_a_newline_or_junk_is_refused_everywhere(tmp_path, name):
    """'$' in a Python regex also matches before a trailing newline: "mug\n" must still be refused."""
    from viewneti_backend.errors import InputError
    from viewneti_backend.mapper import CONFIG_NAME, WEIGHTS_NAME
    from viewneti_backend.tokens import ObjectLibrary, validate_token_name

    assert not limits.is_valid_name(name)
    for regex in (limits.NAME_RE, addon_limits.NAME_RE):
        assert regex.match(name) is None and regex.search(name) is None and regex.fullmatch(name) is None
    with pytest.raises(InputError, match="invalid object name"):
        validate_token_name(name)
    user = tmp_path / "objects"
    (user / "mug").mkdir(parents=True)
    (user / "mug" / CONFIG_NAME).write_text("{}")
    (user / "mug" / WEIGHTS_NAME).write_bytes(b"")
    lib = ObjectLibrary(user)
    assert lib.exists("mug") and not lib.exists(name)
    with pytest.raises(InputError, match="invalid object name"):
        lib.rename("mug", name)
    with pytest.raises(InputError, match="invalid object name"):
        lib.delete(name)
    assert sorted(p.name for p in user.iterdir()) == ["mug"]
