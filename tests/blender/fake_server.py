"""Minimal stdlib stand-in for the ViewNeTI server, for add-on iteration only (not used by the final tests)."""
import base64, hashlib, json, struct, sys, threading, time, uuid, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def png(w, h, rgb):
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")

def render(cam, seed):
    d = hashlib.sha256(json.dumps([cam["camera_to_anchor"], seed]).encode()).digest()
    return png(cam["width"], cam["height"], d[:3])

OBJECTS = [{"name": "toy_000", "builtin": True, "steps": 0}]
JOBS = {}
LOCK = threading.Lock()

class Job:
    def __init__(self, kind, total):
        self.id = uuid.uuid4().hex[:12]; self.kind = kind; self.total = total
        self.events = []; self.state = "running"; self.cancel = False; self.frames = {}; self.cond = threading.Condition()
    def emit(self, name, data):
        with self.cond:
            self.events.append((name, data)); self.cond.notify_all()

def run_sequence(job, body):
    frames = body.get("frames") or list(range(len(body["cameras"])))
    for i, (cam, f) in enumerate(zip(body["cameras"], frames)):
        time.sleep(0.15)
        if job.cancel:
            job.state = "cancelled"; job.emit("cancelled", {}); return
        job.frames[f] = render(cam, body.get("seed", 0))
        job.emit("frame", {"index": i, "frame": f, "url": f"/v1/jobs/{job.id}/frames/{f}"})
        job.emit("progress", {"step": i + 1, "total": job.total})
    job.state = "done"; job.emit("done", {"result": {"frames": frames}})

def run_invert(job, body):
    for s in range(1, job.total + 1):
        time.sleep(0.05)
        if job.cancel:
            job.state = "cancelled"; job.emit("cancelled", {}); return
        job.emit("progress", {"step": s, "total": job.total, "loss": 1.0 / s, "eta_s": 0.05 * (job.total - s)})
        pe = body.get("preview_every", 0)
        if pe and s % pe == 0:
            job.emit("preview", {"step": s, "png_base64": base64.b64encode(png(16, 16, (s, s, s))).decode()})
    entry = {"name": body["name"], "builtin": False, "steps": job.total}
    OBJECTS.append(entry); job.state = "done"; job.emit("done", {"result": entry})

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send_json(self, code, obj):
        b = json.dumps(obj).encode(); self.send_response(code)
        self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def body(self):
        n = int(self.headers.get("Content-Length", 0)); return json.loads(self.rfile.read(n) or b"{}")
    def do_GET(self):
        p = self.path
        if p == "/v1/health":
            return self.send_json(200, {"status": "ok", "api": "v1", "version": "0.0-fake", "base_model": "fake", "device": "cpu", "dtype": "float32", "default_object": "toy_000", "queue_depth": 0})
        if p == "/v1/objects": return self.send_json(200, {"objects": OBJECTS})
        parts = p.strip("/").split("/")
        if len(parts) >= 3 and parts[1] == "jobs":
            job = JOBS.get(parts[2])
            if not job: return self.send_json(404, {"error": "unknown job"})
            if len(parts) == 3:
                return self.send_json(200, {"job_id": job.id, "kind": job.kind, "state": job.state, "step": 0, "total": job.total})
            if parts[3] == "frames":
                d = job.frames.get(int(parts[4]))
                if d is None: return self.send_json(404, {"error": "not yet"})
                self.send_response(200); self.send_header("Content-Type", "image/png"); self.send_header("Content-Length", str(len(d))); self.end_headers(); self.wfile.write(d); return
            if parts[3] == "events":
                self.send_response(200); self.send_header("Content-Type", "text/event-stream"); self.send_header("Connection", "close"); self.end_headers()
                i = 0
                while True:
                    with job.cond:
                        while i >= len(job.events): job.cond.wait(1)
                        ev = job.events[i]; i += 1
                    self.wfile.write(f"event: {ev[0]}\ndata: {json.dumps(ev[1])}\n\n".encode()); self.wfile.flush()
                    if ev[0] in ("done", "error", "cancelled"): self.close_connection = True; return
        self.send_json(404, {"error": "not found"})
    def do_POST(self):
        p = self.path; b = self.body()
        if p == "/v1/render":
            time.sleep(float(b.get("_delay", 0)))
            d = render(b["camera"], b.get("seed", 0)); self.send_response(200)
            self.send_header("Content-Type", "image/png"); self.send_header("Content-Length", str(len(d)))
            self.send_header("X-Seed", str(b.get("seed", 0))); self.send_header("X-Timings-Ms", json.dumps({"total": 1.0})); self.end_headers(); self.wfile.write(d); return
        if p in ("/v1/jobs/sequence", "/v1/jobs/invert"):
            kind = p.rsplit("/", 1)[1]
            if kind == "invert" and any(o["name"] == b["name"] for o in OBJECTS): return self.send_json(409, {"error": "exists"})
            job = Job(kind, len(b["cameras"]) if kind == "sequence" else b["steps"]); JOBS[job.id] = job
            threading.Thread(target=run_sequence if kind == "sequence" else run_invert, args=(job, b), daemon=True).start()
            return self.send_json(202, {"job_id": job.id, "kind": kind, "total": job.total})
        if p.endswith("/cancel"):
            job = JOBS.get(p.split("/")[3]); job.cancel = True
            return self.send_json(202, {"job_id": job.id, "state": "cancelling"})
        self.send_json(404, {"error": "not found"})

if __name__ == "__main__":
    srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H); srv.serve_forever()
