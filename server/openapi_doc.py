"""The served OpenAPI schema tells the truth about *this* server: its caps, its refusals, its auth.

FastAPI generates the schema from the pydantic models (the contract's limits, server/schemas.py). A server
started with lower caps (``--max-size``, ``--max-steps``, ``--max-invert-steps``), with the model's own size
limit, or on a CPU (the device-aware size cap, ``limits.device_max_size``) refuses more than that, so the
served schema is patched to the effective limits: render and compile sizes, render/sequence steps and
inversion steps. ``POST /v1/render`` answers PNG or JPEG as its ``Accept`` header asks (OpenAPI ignores a
declared ``Accept`` parameter, so the operation's description and its response types say it). Refusals that every route can give (the
Host/Origin checks of ``host_origin``, the bearer token) are documented on every operation, and a server with
a token declares the bearer scheme. What JSON Schema cannot express (a rigid pose, a decodable image, one
camera per image or frame) is in the descriptions and in server/API.md.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from viewneti_backend import limits

from .images import JPEG, PNG, RESPONSE_TYPES
from .schemas import NAME_PATTERN

_ERROR_REF = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
_EVERY_ROUTE = {
    "403": "Forbidden: a cross-origin request (foreign or null Origin, Sec-Fetch-Site: cross-site)",
    "421": "Misdirected Request: the Host header is missing or not a name of this server (see --allowed-host)",
}
# Components whose camera size is capped by the server's max_size (render-size requests); the inversion's
# reference cameras keep the contract's limit (a reference photo may be larger than what the server renders).
_CAPPED_CAMERA_USERS = ("RenderRequest", "SequenceRequest")
REFERENCE_CAMERA = "ReferenceCameraIn"
_CAPPED_SIZE_MODELS = ("CameraIn", "CompileRequest")  # width/height capped at max_size (CameraIn: not references)

_RENDER_DESCRIPTION = (
    f"Render one view. The response format follows the request's Accept header: {PNG} (default; lossless, "
    f"uncompressed) or {JPEG} when Accept prefers it (e.g. 'Accept: {JPEG}' or '{JPEG}, {PNG};q=0.5'); "
    f"an Accept naming neither still gets {PNG}, never 406. Responses carry Vary: Accept."
)
_RENDER_HEADERS = {
    "X-Seed": {"description": "the seed used", "schema": {"type": "string"}},
    "X-Timings-Ms": {
        "description": "JSON object of server-side timings in milliseconds (queue, model stages, image, total)",
        "schema": {"type": "string"},
    },
    "X-Warnings": {
        "description": "present when there is something to say (a camera outside the view-mapper's trained "
        "distances, a size far above the model's native size; the image is still rendered): a JSON array of "
        "strings (ASCII-escaped)",
        "schema": {"type": "string"},
    },
    "Vary": {"description": "Accept: the format depends on it", "schema": {"type": "string"}},
}


def install_openapi(
    app: FastAPI,
    *,
    max_size: Callable[[], int],
    max_steps: int,
    max_invert_steps: int,
    token_required: bool,
    ready: Callable[[], bool],
) -> None:
    """Replace ``app.openapi`` by the patched schema; cached once the model is loaded (its size limit is known)."""
    generate = app.openapi  # FastAPI's own generator (caches its result in app.openapi_schema)
    final: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if final:
            return final["schema"]
        base = generate()
        schema = patch_schema(
            base,
            max_size=max_size(),
            max_steps=max_steps,
            max_invert_steps=max_invert_steps,
            token_required=token_required,
        )
        if ready():
            final["schema"] = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def patch_schema(
    base: dict[str, Any], *, max_size: int, max_steps: int, max_invert_steps: int, token_required: bool
) -> dict[str, Any]:
    schema = copy.deepcopy(base)
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    camera = comps.get("CameraIn")
    if camera is not None:
        comps[REFERENCE_CAMERA] = {**copy.deepcopy(camera), "title": REFERENCE_CAMERA}
        _retarget(
            comps.get("InvertRequest", {}), "#/components/schemas/CameraIn", f"#/components/schemas/{REFERENCE_CAMERA}"
        )
    size_cap = float(max_size // limits.SIZE_MULTIPLE * limits.SIZE_MULTIPLE)
    for model in _CAPPED_SIZE_MODELS:
        for side in ("width", "height"):
            _cap(
                comps.get(model),
                side,
                size_cap,
                f"image {side} in pixels, a multiple of {limits.SIZE_MULTIPLE}; at most this server's max_size ({max_size}, GET /v1/health; "
                f"on a CPU at most {limits.CPU_SIZE_FACTOR}x the model's native size)",
            )
    for name in _CAPPED_CAMERA_USERS:
        steps = comps.get(name, {}).get("properties", {}).get("steps")
        for alt in (steps or {}).get("anyOf", []):
            if alt.get("type") == "integer":
                alt["maximum"] = min(float(alt.get("maximum", max_steps)), float(max_steps))
    _cap(
        comps.get("InvertRequest"),
        "steps",
        float(max_invert_steps),
        f"optimisation steps; at most this server's max_invert_steps ({max_invert_steps}, GET /v1/health)",
    )
    render = schema.get("paths", {}).get("/v1/render", {}).get("post")
    if render is not None:
        render["description"] = _RENDER_DESCRIPTION
        ok = render.get("responses", {}).get("200")
        if ok is not None:
            ok["content"] = {t: {"schema": {"type": "string", "format": "binary"}} for t in RESPONSE_TYPES}
            ok.setdefault("headers", {}).update(copy.deepcopy(_RENDER_HEADERS))
    for path, item in schema.get("paths", {}).items():
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses = op["responses"]
            for status, text in _EVERY_ROUTE.items():
                responses.setdefault(status, {**copy.deepcopy(_ERROR_REF), "description": text})
            if token_required:
                responses.setdefault(
                    "401", {**copy.deepcopy(_ERROR_REF), "description": "Unauthorized: missing or wrong access token"}
                )
            if path.startswith("/v1/objects/{name}"):
                for param in op.get("parameters", []):
                    if param.get("name") == "name" and param.get("in") == "path":
                        param["schema"] = {**param.get("schema", {}), "pattern": NAME_PATTERN}
    _add_links(schema)
    if token_required:
        schema["components"]["securitySchemes"] = {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "the server's --token (with --token auto: the file <data-dir>/token)",
            }
        }
        schema["security"] = [{"bearerAuth": []}]
    return schema


# OpenAPI links: where the ids that other operations need come from (clients, and Schemathesis' stateful
# phase, follow them). (source path, method, status) -> [(link name, target path, method, parameters)].
_LINKS = {
    ("/v1/objects", "get", "200"): [
        ("DeleteObject", "/v1/objects/{name}", "delete", {"name": "$response.body#/objects/0/name"}),
    ],
    ("/v1/jobs/sequence", "post", "202"): [
        ("GetFirstFrame", "/v1/jobs/{job_id}/frames/{frame}", "get", {"job_id": "$response.body#/job_id", "frame": 0}),
    ],
    ("/v1/jobs", "get", "200"): [
        ("GetJob", "/v1/jobs/{job_id}", "get", {"job_id": "$response.body#/jobs/0/job_id"}),
        ("CancelJob", "/v1/jobs/{job_id}/cancel", "post", {"job_id": "$response.body#/jobs/0/job_id"}),
        ("DeleteJob", "/v1/jobs/{job_id}", "delete", {"job_id": "$response.body#/jobs/0/job_id"}),
        (
            "GetFrame",
            "/v1/jobs/{job_id}/frames/{frame}",
            "get",
            {"job_id": "$response.body#/jobs/0/job_id", "frame": 0},
        ),
    ],
}


def _add_links(schema: dict[str, Any]) -> None:
    paths = schema.get("paths", {})
    for (path, method, status), links in _LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        for name, target, target_method, params in links:
            op_id = paths.get(target, {}).get(target_method, {}).get("operationId")
            if op_id:
                response.setdefault("links", {})[name] = {"operationId": op_id, "parameters": params}


def _cap(model: dict[str, Any] | None, field: str, cap: float, description: str) -> None:
    """Lower ``model``'s ``field`` maximum to ``cap``; a contract default above it is dropped and the field
    made required (a request that leaves it out would be refused)."""
    prop = (model or {}).get("properties", {}).get(field)
    if model is None or prop is None:
        return
    prop["maximum"] = min(float(prop.get("maximum", cap)), cap)
    for alt in prop.get("anyOf", []):  # an optional number: cap its numeric alternative too
        if alt.get("type") in ("integer", "number"):
            alt["maximum"] = min(float(alt.get("maximum", cap)), cap)
    prop["description"] = description
    default = prop.get("default")
    if default is not None and float(default) > prop["maximum"]:
        prop.pop("default")
        prop["description"] += "; required on this server (the contract's default is larger)"
        required = model.setdefault("required", [])
        if field not in required:
            required.append(field)


def _retarget(node: Any, old: str, new: str) -> None:
    """Point every ``$ref`` equal to ``old`` inside ``node`` at ``new``."""
    if isinstance(node, dict):
        if node.get("$ref") == old:
            node["$ref"] = new
        for v in node.values():
            _retarget(v, old, new)
    elif isinstance(node, list):
        for v in node:
            _retarget(v, old, new)
