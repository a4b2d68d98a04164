"""Azurite's Queue service for the rig (npm package azurite): an Azure Storage Queue emulator.

One Node.js process on the node address and a free port, in-memory, its workspace and log in the
run folder, telemetry off. The account is Azurite's well-known development account
(``devstoreaccount1`` and its published key); URLs are path-style:
``http://<node address>:<port>/devstoreaccount1/<queue>``. Azurite verifies Shared Key signatures
and SAS tokens, so refused credentials are tested against it.

The test's own view of a queue (:meth:`Azurite.approximate_count`, :meth:`Azurite.peek_count`)
reads Azurite's REST answers itself: the metadata header, and the peeked messages parsed as XML
(tidescale counts them without a parser). Requests are signed with tidescale's Shared Key module,
which Azurite checks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx

from tests.rig.network import Network
from tests.rig.paths import azurite_queue_binary
from tests.rig.processes import Managed, Supervisor, free_port, port_open, wait_until
from tidescale.sources.azure_queue._sharedkey import authorization, rfc1123, string_to_sign

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's published development key (not a secret: it is in Microsoft's documentation)."""
VERSION = "2021-12-02"


class AzuriteError(RuntimeError):
    """Azurite refused a request of the test; the message carries its answer."""


@dataclass(kw_only=True, slots=True)
class Azurite:
    """A running Azurite Queue service started by :meth:`start`; stopped with the supervisor."""

    host: str
    port: int
    process: Managed
    start_seconds: float

    @property
    def endpoint(self) -> str:
        """The Queue service URL (path-style: the account is the first path segment)."""
        return f"http://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"QueueEndpoint={self.endpoint};"
        )

    @classmethod
    def start(
        cls, supervisor: Supervisor, network: Network, run_dir: Path, *, timeout: float = 60.0
    ) -> Azurite:
        began = time.monotonic()
        binary = azurite_queue_binary()
        directory = run_dir / "azurite"
        directory.mkdir(parents=True, exist_ok=True)
        host = network.node_address
        port = free_port(host)
        process = supervisor.start(
            "azurite",
            [
                str(binary),
                "--queueHost", host,
                "--queuePort", str(port),
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--disableProductStyleUrl",
            ],
            cwd=directory,
        )  # fmt: skip
        server = cls(host=host, port=port, process=process, start_seconds=0.0)
        wait_until(
            f"azurite listening on {host}:{port}",
            lambda: port_open(host, port),
            timeout=timeout,
            process=process,
        )
        server.start_seconds = time.monotonic() - began
        return server

    def request(
        self, method: str, path: str, query: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> httpx.Response:
        """One Shared Key request to ``/<account><path>``; AzuriteError on an error answer."""
        full = f"/{ACCOUNT}{path}"
        headers = {"x-ms-date": rfc1123(datetime.now(UTC)), "x-ms-version": VERSION}
        if body:
            headers["content-length"] = str(len(body))
            headers["content-type"] = "application/xml"
        text = string_to_sign(method=method, account=ACCOUNT, path=full, query=query or [], headers=headers)
        headers["authorization"] = authorization(ACCOUNT, base64.b64decode(KEY), text)
        response = httpx.request(
            method,
            f"http://{self.host}:{self.port}{full}",
            params=query or [],
            headers=headers,
            content=body or None,
            timeout=10.0,
        )
        if response.status_code >= 400:
            raise AzuriteError(f"{method} {path} answered HTTP {response.status_code}: {response.text[:500]}")
        return response

    def create_queue(self, name: str) -> None:
        self.request("PUT", f"/{name}")

    def delete_queue(self, name: str) -> None:
        self.request("DELETE", f"/{name}")

    def put(self, name: str, texts: list[str]) -> None:
        for text in texts:
            body = f"<QueueMessage><MessageText>{text}</MessageText></QueueMessage>".encode()
            self.request("POST", f"/{name}/messages", body=body)

    def receive(self, name: str, count: int, *, visibility_timeout: int = 600) -> int:
        """Dequeues up to ``count`` messages (invisible for ``visibility_timeout`` s); how many came."""
        got = 0
        while got < count:
            answer = self.request(
                "GET",
                f"/{name}/messages",
                [
                    ("numofmessages", str(min(32, count - got))),
                    ("visibilitytimeout", str(visibility_timeout)),
                ],
            )
            found = len(_messages(answer.content))
            if not found:
                break
            got += found
        return got

    def approximate_count(self, name: str) -> int:
        """Azurite's own answer: Get Queue Metadata's x-ms-approximate-messages-count."""
        return int(
            self.request("GET", f"/{name}", [("comp", "metadata")]).headers["x-ms-approximate-messages-count"]
        )

    def peek_count(self, name: str) -> int:
        """Azurite's own answer: how many messages Peek Messages (32 at most) returns, parsed as XML."""
        answer = self.request("GET", f"/{name}/messages", [("numofmessages", "32"), ("peekonly", "true")])
        return len(_messages(answer.content))

    def account_sas(self, *, permissions: str = "rp", hours: float = 1.0) -> str:
        """An account SAS token for the Queue service, signed with the account key (version 2021-12-02:
        the string to sign ends with the encryption scope line)."""
        expiry = (datetime.now(UTC) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
        fields = [ACCOUNT, permissions, "q", "sco", "", expiry, "", "https,http", VERSION, ""]
        text = "\n".join(fields) + "\n"
        signature = base64.b64encode(hmac.new(base64.b64decode(KEY), text.encode(), hashlib.sha256).digest())
        params = {
            "sv": VERSION,
            "ss": "q",
            "srt": "sco",
            "sp": permissions,
            "se": expiry,
            "spr": "https,http",
        }
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        return f"{query}&sig={quote(signature.decode(), safe='')}"


def _messages(body: bytes) -> list[ElementTree.Element]:
    root = ElementTree.fromstring(body)  # noqa: S314 - the rig's own Azurite, not tenant input
    return root.findall("QueueMessage")
