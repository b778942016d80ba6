"""Live mode against the real server: supersede per session, independent sessions, load."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from srvutil import STEPS, render_body


def slow_steps(client, target_s: float = 3.0) -> int:
    """Steps for a render that keeps the worker busy for about ``target_s`` (measured, not assumed)."""
    t0 = time.monotonic()
    assert client.post("/v1/render", json=render_body(steps=8, seed=99)).status_code == 200
    per_step = (time.monotonic() - t0) / 8
    return max(10, min(150, int(target_s / per_step)))


def _post(client, body, results, i, delay=0.0):
    if delay:
        time.sleep(delay)
    t0 = time.monotonic()
    r = client.post("/v1/render", json=body)
    results[i] = (r, time.monotonic() - t0)


def _occupy_worker(server, session="blocker"):
    """Start a slow render from another session and return (thread, results) once it is in flight."""
    results = {}
    c = server.client()
    t = threading.Thread(target=_post, args=(c, render_body(steps=slow_steps(c), session=session), results, 0))
    t.start()
    # wait until the worker has taken it (queue_depth counts the in-flight render)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if c.get("/v1/health").json()["queue_depth"] >= 1:
            break
        time.sleep(0.01)
    return t, results, c


def test_newer_render_of_a_session_supersedes_queued_ones(server):
    blocker, bres, bc = _occupy_worker(server)
    clients = [server.client() for _ in range(5)]
    results: dict[int, tuple] = {}
    threads = [
        threading.Thread(
            target=_post, args=(clients[i], render_body(azimuth=10.0 * i, session="live-A"), results, i, 0.25 * i)
        )
        for i in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    blocker.join(300)
    statuses = [results[i][0].status_code for i in range(5)]
    assert statuses[-1] == 200, statuses
    assert statuses.count(409) >= 1, statuses
    assert set(statuses) <= {200, 409}, statuses
    for i in range(4):
        r = results[i][0]
        if r.status_code == 409:
            body = r.json()
            assert body.get("superseded") is True and "superseded" in body["error"]
    # All four were queued behind the blocker, so each was superseded by the next one.
    assert statuses == [409, 409, 409, 409, 200], statuses
    assert bres[0][0].status_code == 200  # another session's render is untouched
    for c in clients + [bc]:
        c.close()


def test_in_flight_render_is_cut_at_the_next_step(server):
    c1, c2 = server.client(), server.client()
    steps = slow_steps(c1)
    # How long does the slow render take when it is not interrupted?
    t0 = time.monotonic()
    full = c1.post("/v1/render", json=render_body(steps=steps, session="cut-probe"))
    full_s = time.monotonic() - t0
    assert full.status_code == 200
    results = {}
    t = threading.Thread(target=_post, args=(c1, render_body(steps=steps, session="live-B"), results, 0))
    t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and c2.get("/v1/health").json()["queue_depth"] < 1:
        time.sleep(0.01)
    time.sleep(min(0.2, full_s / 4))
    newer = c2.post("/v1/render", json=render_body(session="live-B", azimuth=90.0))
    t.join(300)
    older, older_s = results[0]
    assert newer.status_code == 200
    assert older.status_code == 409, older.text
    assert older.json()["superseded"] is True
    assert older_s < full_s * 0.9, (older_s, full_s)


def test_independent_sessions_do_not_interfere(server, client):
    bodies = {
        s: render_body(session=s, azimuth=az, seed=11)
        for s, az in (("sess-1", 0.0), ("sess-2", 60.0), ("sess-3", 200.0))
    }
    # reference images, rendered one at a time
    ref = {s: client.post("/v1/render", json=b).content for s, b in bodies.items()}
    results = {}
    clients = {s: server.client() for s in bodies}
    threads = []
    for round_ in range(3):
        for s, b in bodies.items():
            threads.append(threading.Thread(target=_post, args=(clients[s], b, results, (s, round_))))
    # one request per session at a time: a session never supersedes itself here
    for round_ in range(3):
        batch = threads[round_ * 3 : (round_ + 1) * 3]
        for t in batch:
            t.start()
        for t in batch:
            t.join(300)
    for (s, _), (r, _) in results.items():
        assert r.status_code == 200, (s, r.text)
        assert r.content == ref[s]
    for c in clients.values():
        c.close()


def test_load_8_clients_x_25_renders(server):
    n_clients, n_req = 8, 25

    def run_client(k):
        out = []
        with server.client() as c:
            for i in range(n_req):
                r = c.post("/v1/render", json=render_body(seed=k * 100 + i, steps=min(STEPS, 2), azimuth=float(i * 7)))
                out.append(
                    (r.status_code, r.headers.get("x-request-id"), r.headers.get("content-type"), len(r.content))
                )
        return out

    with ThreadPoolExecutor(n_clients) as ex:
        all_results = [x for res in ex.map(run_client, range(n_clients)) for x in res]
    assert len(all_results) == n_clients * n_req
    bad = [r for r in all_results if r[0] != 200 or r[2] != "image/png" or r[3] == 0]
    assert not bad, bad[:5]
    ids = [r[1] for r in all_results]
    assert all(ids) and len(set(ids)) == len(ids)


def test_client_that_gives_up_frees_the_worker(server):
    import httpx

    c = server.client()
    steps = slow_steps(c, target_s=6.0)
    # Render this pose once at these steps: its text encodings are then cached, so the abandoned
    # render below is all denoising (cut at a step boundary) and the full one is timed, not assumed.
    t_full = time.monotonic()
    assert c.post("/v1/render", json=render_body(steps=steps, seed=76)).status_code == 200
    full_s = time.monotonic() - t_full
    t0 = time.monotonic()
    try:
        with server.client(timeout=0.5) as impatient:
            impatient.post("/v1/render", json=render_body(steps=steps, seed=77))
    except httpx.TimeoutException:
        pass
    r = c.post("/v1/render", json=render_body(seed=78, steps=1))  # short, so elapsed is mostly waiting
    elapsed = time.monotonic() - t0
    assert r.status_code == 200
    # relative to the measured speed, so a busy machine cannot make it flaky
    assert elapsed < 0.6 * full_s, (
        f"the abandoned render kept the worker busy ({elapsed:.1f}s; a full one takes {full_s:.1f}s)"
    )
    c.close()
