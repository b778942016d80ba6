"""Against the real server (issue 24): render warnings in X-Warnings (and a sequence job's `warnings`),
and renaming objects."""

from __future__ import annotations

import json
import time

import pytest
from srvutil import USE_FAKE, png_b64, read_events, render_body, wait_job, wire_camera


def test_render_far_above_native_size_says_so_in_x_warnings(client):
    native = client.get("/v1/health").json()["native_size"]
    big = 4 * native
    r = client.post("/v1/render", json=render_body(camera=wire_camera(size=big), steps=1))
    assert r.status_code == 200, r.text
    warnings = json.loads(r.headers["x-warnings"])
    assert isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)
    assert any("native size" in w for w in warnings), warnings
    ok = client.post("/v1/render", json=render_body(camera=wire_camera(size=native), steps=1))
    assert ok.status_code == 200 and "x-warnings" not in ok.headers


@pytest.mark.skipif(USE_FAKE, reason="the fake engine has no view-mapper distance range")
def test_camera_outside_the_trained_distances_says_so_in_x_warnings(client):
    info = client.get("/v1/health").json()
    r = client.post("/v1/render", json=render_body(camera=wire_camera(radius=12.0, size=info["native_size"]), steps=1))
    assert r.status_code == 200, r.text
    if "x-warnings" not in r.headers:  # only a distance-aware view-mapper (anchor-distance-14d) can say it
        pytest.fail(f"no X-Warnings for a camera 12 units away from the anchor ({info['view_mapper']})")
    (w,) = json.loads(r.headers["x-warnings"])
    assert "outside the view-mapper's trained distances" in w and "12.00 units" in w


def test_a_sequence_carries_the_same_warnings_as_single_renders(client):
    native = client.get("/v1/health").json()["native_size"]
    big = wire_camera(size=3 * native)  # 3x the native size: more than the 2x that gets a warning
    single = client.post("/v1/render", json=render_body(camera=big, steps=1))
    assert single.status_code == 200, single.text
    (size_warning,) = json.loads(single.headers["x-warnings"])
    cameras = [wire_camera(size=native), big]
    if not USE_FAKE:  # the real toy view-mapper was trained at distances 3.2-4.0
        cameras.append(wire_camera(radius=12.0, size=native))
    created = client.post("/v1/jobs/sequence", json={"cameras": cameras, "steps": 1, "seed": 0})
    assert created.status_code == 202, created.text
    warnings = created.json()["warnings"]
    assert size_warning in warnings, warnings  # the very string a single render sends
    if not USE_FAKE:
        assert len(warnings) == 2, warnings
        assert "camera 2 is 12.00 units from the anchor" in warnings[1]  # index into the job's cameras
        assert "outside the view-mapper's trained distances" in warnings[1]
    job_id = created.json()["job_id"]
    events = read_events(client, job_id)
    progress = [data for name, data in events if name == "progress"]
    assert progress and all(p["warnings"] == warnings for p in progress)  # every progress event, replay included
    job = wait_job(client, job_id)
    assert job["state"] == "done" and job["warnings"] == warnings
    assert any(j["job_id"] == job_id and j["warnings"] == warnings for j in client.get("/v1/jobs").json()["jobs"])

    fine = client.post("/v1/jobs/sequence", json={"cameras": [wire_camera(size=native)], "steps": 1, "seed": 0})
    assert fine.status_code == 202 and fine.json()["warnings"] == []
    assert wait_job(client, fine.json()["job_id"])["warnings"] == []


def test_a_sequences_warnings_survive_a_restart(make_server, tmp_path):
    srv = make_server(tmp_path / "data").start()
    with srv.client() as c:
        native = c.get("/v1/health").json()["native_size"]
        body = {"cameras": [wire_camera(size=3 * native)], "steps": 1, "seed": 0}
        created = c.post("/v1/jobs/sequence", json=body)
        assert created.status_code == 202, created.text
        warnings = created.json()["warnings"]
        assert warnings and wait_job(c, created.json()["job_id"])["state"] == "done"
    srv.stop()
    with make_server(tmp_path / "data", port=None).start().client() as c:
        assert c.get(f"/v1/jobs/{created.json()['job_id']}").json()["warnings"] == warnings


@pytest.fixture(scope="module")
def user_object(client):
    name = f"ren_{int(time.time() * 1000) % 10**8}"
    body = {"name": name, "images": [png_b64()], "cameras": [wire_camera()], "steps": 1, "seed": 0}
    r = client.post("/v1/jobs/invert", json=body)
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["job_id"])["state"] == "done"
    return name


def test_rename_an_object_moves_it_to_the_new_name(client, user_object):
    new = user_object + "_b"
    r = client.post(f"/v1/objects/{user_object}/rename", json={"new_name": new})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == new and r.json()["builtin"] is False
    names = [o["name"] for o in client.get("/v1/objects").json()["objects"]]
    assert new in names and user_object not in names
    assert client.post("/v1/render", json=render_body(object=new, steps=1)).status_code == 200
    assert client.post("/v1/render", json=render_body(object=user_object, steps=1)).status_code == 404
    back = client.post(f"/v1/objects/{new}/rename", json={"new_name": user_object})
    assert back.status_code == 200, back.text


def test_rename_refuses_taken_builtin_unknown_and_bad_names(client, user_object):
    builtin = client.get("/v1/health").json()["default_object"]
    taken = client.post(f"/v1/objects/{user_object}/rename", json={"new_name": builtin})
    assert taken.status_code == 409 and "already exists" in taken.json()["error"]
    own = client.post(f"/v1/objects/{builtin}/rename", json={"new_name": "x_new"})
    assert own.status_code == 409 and "built-in" in own.json()["error"]  # a state conflict, as for DELETE
    wrong_method = client.request("OPTIONS", f"/v1/objects/{builtin}/rename")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    wrong_method = client.delete(f"/v1/objects/{builtin}/rename")  # DELETE's {name:path} matches it too
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert client.post("/v1/objects/no_such_thing/rename", json={"new_name": "x_new"}).status_code == 404
    bad = client.post(f"/v1/objects/{user_object}/rename", json={"new_name": "../evil"})
    assert bad.status_code == 400 and "invalid new_name" in bad.json()["error"]
    assert client.post(f"/v1/objects/{user_object}/rename", json={}).status_code == 422
    names = [o["name"] for o in client.get("/v1/objects").json()["objects"]]
    assert user_object in names and "x_new" not in names  # nothing changed


def test_library_rename_is_one_folder_rename(tmp_path):
    from viewneti_backend.errors import NameTakenError, NotFoundError
    from viewneti_backend.tokens import ObjectLibrary

    lib = ObjectLibrary(tmp_path / "objects")
    for name in ("a", "b"):
        folder = tmp_path / "objects" / name
        folder.mkdir()
        (folder / "mapper_config.json").write_text(json.dumps({"base_model": "m", "extra": {"steps": 3}}))
        (folder / "mapper.safetensors").write_bytes(b"")
    assert lib.rename("a", "c")["name"] == "c" and lib.names() == ["b", "c"]
    with pytest.raises(NameTakenError):
        lib.rename("c", "b")
    with pytest.raises(NotFoundError):
        lib.rename("a", "d")
    assert lib.names() == ["b", "c"] and lib.entry("c")["steps"] == 3


def test_invert_without_steps_takes_the_devices_default(client):
    h = client.get("/v1/health").json()
    expected = 150 if h["device"] == "cpu" else 3000
    assert h["invert_steps"] == expected
    name = f"dflt_{int(time.time() * 1000) % 10**8}"
    r = client.post("/v1/jobs/invert", json={"name": name, "images": [png_b64()], "cameras": [wire_camera()]})
    assert r.status_code == 202, r.text
    assert r.json()["total"] == expected
    client.post(f"/v1/jobs/{r.json()['job_id']}/cancel")
    assert wait_job(client, r.json()["job_id"])["state"] == "cancelled"
