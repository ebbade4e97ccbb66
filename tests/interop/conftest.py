"""Starts two sandbox providers, a mock shop and the sidecar in front of them, all on 127.0.0.1 port 0.

The sidecar binary is $SWITCHYARD_BIN (default: target/debug/switchyard of this checkout). Every
process is started here and stopped at the end of the session; nothing reaches the internet.
"""

import json
import os
import queue
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("SWITCHYARD_BIN", str(ROOT / "target" / "debug" / "switchyard"))

STRIPE_SECRET = "whsec_interop_new"
STRIPE_OLD_SECRET = "whsec_interop_old"
ADYEN_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
ADYEN_OLD_KEY = "DFB1EB5485895CFA84146406857104ABB4CBCABDC8AAF103A624C8F6A3EAAB00"


def _read_lines(proc, sink):
    for line in proc.stdout:
        sink.put(line)


def _wait_for(lines, pick, what, timeout=30):
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        found = pick(line)
        if found:
            return found
    raise RuntimeError(f"{what} did not start:\n{''.join(seen[-30:])}")


class Process:
    def __init__(self, args):
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines = queue.Queue()
        threading.Thread(target=_read_lines, args=(self.proc, self.lines), daemon=True).start()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Sandbox:
    """A `switchyard sandbox` process and its control API."""

    def __init__(self, name):
        self.name = name
        self.process = Process(
            [BIN, "sandbox", "--listen", "127.0.0.1:0", "--name", name, "--control", "127.0.0.1:0"]
        )
        prefix = f"sandbox {name} listening on "
        self.addr = _wait_for(
            self.process.lines,
            lambda l: l.strip()[len(prefix):] if l.startswith(prefix) else None,
            name,
        )
        self.control = _wait_for(
            self.process.lines,
            lambda l: l.strip()[len("sandbox control on "):] if l.startswith("sandbox control on ") else None,
            f"{name} control",
        )

    def _call(self, method, suffix="", body=None):
        req = urllib.request.Request(
            f"http://{self.control}/admin/sandbox/{self.name}{suffix}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def mode(self, mode, **params):
        return self._call("POST", body={"mode": mode, **params})

    def stats(self):
        return self._call("GET")


class Shop:
    """The shop's webhook endpoint: records every event and answers 200."""

    def __init__(self):
        self.received = []
        shop = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                shop.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                answer = b"[accepted]" if self.path == "/adyen" else b'{"received":true}'
                self.send_response(200)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, path):
        return [(h, b) for p, h, b in self.received if p == path]


class Sidecar:
    def __init__(self, primary, backup, shop, folder):
        secrets = {
            "stripe_new": STRIPE_SECRET,
            "stripe_old": STRIPE_OLD_SECRET,
            "adyen_new": ADYEN_KEY,
            "adyen_old": ADYEN_OLD_KEY,
        }
        for name, value in secrets.items():
            (folder / name).write_text(value + "\n")
        providers = f"""
providers:
  psp-primary:
    url: http://{primary.addr}
    breaker: {{ consecutive_failures: 1000, open_for: 200ms, max_open_for: 500ms }}
  psp-backup:
    url: http://{backup.addr}
    breaker: {{ consecutive_failures: 1000, open_for: 200ms, max_open_for: 500ms }}
"""
        both = "[{ provider: psp-primary, priority: 0 }, { provider: psp-backup, priority: 1 }]"
        config = f"""listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
{providers}
routes:
  - name: limited
    match: {{ path_prefix: /limited/ }}
    strip_prefix: /limited
    errors: stripe
    rate_limit: {{ rps: 1, burst: 1 }}
    targets: {both}
  - name: small
    match: {{ path_prefix: /small/ }}
    strip_prefix: /small
    errors: stripe
    max_body: 1KiB
    targets: {both}
  - name: once
    match: {{ path_prefix: /once/ }}
    strip_prefix: /once
    errors: stripe
    retry: {{ attempts: 1 }}
    targets: [{{ provider: psp-primary }}]
  - name: adyen
    match: {{ path_prefix: /adyen/ }}
    strip_prefix: /adyen
    errors: adyen
    targets: {both}
  - name: stripe
    match: {{ path_prefix: /v1/ }}
    errors: stripe
    targets: {both}
webhooks:
  - name: stripe-events
    path: /webhooks/stripe
    forward_to: http://127.0.0.1:{shop.port}/stripe
    verify: {{ scheme: stripe, secrets_file: ["{folder / 'stripe_new'}", "{folder / 'stripe_old'}"], tolerance: 5m }}
  - name: adyen-events
    path: /webhooks/adyen
    forward_to: http://127.0.0.1:{shop.port}/adyen
    verify: {{ scheme: adyen, secrets_file: ["{folder / 'adyen_new'}", "{folder / 'adyen_old'}"] }}
"""
        path = folder / "routes.yaml"
        path.write_text(config)
        self.process = Process([BIN, "run", "--config", str(path), "--no-watch", "--log-format", "json"])

        def serving(line):
            try:
                v = json.loads(line)
            except ValueError:
                return None
            fields = v.get("fields", v)
            if fields.get("message") == "switchyard is serving":
                return fields["listen"], fields["admin"]
            return None

        listen, admin = _wait_for(self.process.lines, serving, "switchyard")
        self.base = f"http://{listen}"
        self.admin = f"http://{admin}"


def wait_until_serving(url, timeout=15):
    """Waits until a GET through the sidecar reaches a sandbox (404 for an unknown object)."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return
            last = e.code
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{url} is not served: {last}")


@pytest.fixture(scope="session")
def world():
    folder = Path(tempfile.mkdtemp(prefix="switchyard-interop-"))
    primary, backup = Sandbox("psp-primary"), Sandbox("psp-backup")
    shop = Shop()
    sidecar = Sidecar(primary, backup, shop, folder)
    wait_until_serving(f"{sidecar.base}/v1/payment_intents/pi_ready")
    yield {"primary": primary, "backup": backup, "shop": shop, "sidecar": sidecar}
    sidecar.process.stop()
    primary.process.stop()
    backup.process.stop()
    shop.server.shutdown()


@pytest.fixture
def env(world):
    """The world with both sandboxes well again after the test."""
    yield world
    world["primary"].mode("ok")
    world["backup"].mode("ok")
    wait_until_serving(f"{world['sidecar'].base}/once/v1/payment_intents/pi_ready")
