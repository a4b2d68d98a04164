"""Sample Azure Storage Queue consumer workload for the rig: dequeues from AZURE_QUEUE on Azurite
one message at a time (invisible for 30 s), takes WORK_SECONDS per message, deletes it after the
work, and appends each message text (the test's message id) to RECORD_FILE. Requests are signed
with the account key (tidescale's Shared Key module, which Azurite verifies).

Env: AZURE_QUEUE_ENDPOINT (the Queue service URL, path-style), AZURE_ACCOUNT, AZURE_STORAGE_KEY,
AZURE_QUEUE, WORK_SECONDS (default 0.05), RECORD_FILE (optional). SIGTERM: finish, exit 0.
"""

from __future__ import annotations

import base64
import os
import signal
import sys
import time
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from tidescale.sources.azure_queue._sharedkey import authorization, rfc1123, string_to_sign

stopping = False


def _stop(_signum: int, _frame: object) -> None:
    global stopping
    stopping = True


def request(client: httpx.Client, method: str, path: str, query: list[tuple[str, str]]) -> httpx.Response:
    account = os.environ["AZURE_ACCOUNT"]
    headers = {"x-ms-date": rfc1123(datetime.now(UTC)), "x-ms-version": "2021-12-02"}
    text = string_to_sign(method=method, account=account, path=path, query=query, headers=headers)
    headers["authorization"] = authorization(account, base64.b64decode(os.environ["AZURE_STORAGE_KEY"]), text)
    response = client.request(method, path, params=query, headers=headers)
    response.raise_for_status()
    return response


def consume() -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    endpoint = urlsplit(os.environ["AZURE_QUEUE_ENDPOINT"])
    messages = f"{endpoint.path.rstrip('/')}/{os.environ['AZURE_QUEUE']}/messages"
    work = float(os.environ.get("WORK_SECONDS", "0.05"))
    record = os.environ.get("RECORD_FILE")
    out = open(record, "a", buffering=1) if record else None  # noqa: SIM115 - lives as long as the loop
    print(f"consuming {messages}", flush=True)
    with httpx.Client(base_url=f"{endpoint.scheme}://{endpoint.netloc}", timeout=10.0) as client:
        while not stopping:
            try:
                answer = request(
                    client, "GET", messages, [("numofmessages", "1"), ("visibilitytimeout", "30")]
                )
            except httpx.HTTPError as exc:
                print(f"receive failed: {exc}", flush=True)
                time.sleep(0.5)
                continue
            found = ElementTree.fromstring(answer.content).findall("QueueMessage")  # noqa: S314 - the rig's Azurite
            if not found:
                time.sleep(0.3)
                continue
            for message in found:
                time.sleep(work)
                if out is not None:
                    out.write((message.findtext("MessageText") or "") + "\n")
                receipt = message.findtext("PopReceipt") or ""
                request(
                    client, "DELETE", f"{messages}/{message.findtext('MessageId')}", [("popreceipt", receipt)]
                )
    if out is not None:
        out.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(consume())
