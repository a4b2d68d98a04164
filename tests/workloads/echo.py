"""A small HTTP workload for the rig: probes, its own environment and files, and the API server.

GET /healthz        200 while alive
GET /readyz         200 once ready (after --ready-after seconds), 503 before
GET /env            the process environment as JSON
GET /file?path=P    the content of the file P as seen inside the container
GET /selfsubject    a SelfSubjectReview made with the mounted service-account token
Options: --port N, --ready-after S, --term-delay S (linger after SIGTERM),
--record FILE (append "<name> started" on start and "<name> SIGTERM" on SIGTERM),
--exit-after-record (an init container: record, then exit 0), --name NAME.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def record(path: str | None, line: str) -> None:
    print(line, flush=True)
    if path:
        with open(path, "a") as out:
            out.write(f"{line}\n")


def self_subject() -> tuple[int, dict[str, Any]]:
    """Asks the API server who the mounted token is, exactly as an in-cluster client would."""
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ["KUBERNETES_SERVICE_PORT"]
    token = (SA_DIR / "token").read_text().strip()
    context = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
    body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode()
    request = urllib.request.Request(
        f"https://{host}:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:  # noqa: S310 (https)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {"error": error.read().decode(errors="replace")}


def make_handler(started: float, ready_after: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def reply(self, status: int, payload: object) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            if url.path == "/healthz":
                self.reply(200, {"ok": True})
            elif url.path == "/readyz":
                ready = time.monotonic() - started >= ready_after
                self.reply(200 if ready else 503, {"ready": ready})
            elif url.path == "/env":
                self.reply(200, dict(os.environ))
            elif url.path == "/file":
                try:
                    self.reply(200, Path(query["path"][0]).read_bytes())
                except (KeyError, OSError) as error:
                    self.reply(404, {"error": str(error)})
            elif url.path == "/selfsubject":
                try:
                    status, payload = self_subject()
                except Exception as error:
                    status, payload = 599, {"error": repr(error)}
                self.reply(200, {"status": status, "review": payload})
            else:
                self.reply(404, {"error": f"no route {url.path}"})

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every second would drown the log

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--term-delay", type=float, default=0.0)
    parser.add_argument("--record")
    parser.add_argument("--exit-after-record", action="store_true")
    parser.add_argument("--name", default=os.environ.get("HOSTNAME", "echo"))
    options = parser.parse_args()

    record(options.record, f"{options.name} started")
    if options.exit_after_record:
        return

    server = ThreadingHTTPServer(
        ("0.0.0.0", options.port), make_handler(time.monotonic(), options.ready_after)
    )

    def on_term(signum: int, frame: object) -> None:
        record(options.record, f"{options.name} SIGTERM")

        def finish() -> None:
            time.sleep(options.term_delay)
            server.shutdown()

        threading.Thread(target=finish, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    print(f"{options.name} listening on :{options.port}", flush=True)
    server.serve_forever()
    record(options.record, f"{options.name} exiting")
    sys.exit(0)


if __name__ == "__main__":
    main()
