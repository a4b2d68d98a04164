"""Sample SQS consumer workload for the rig: receives from SQS_QUEUE_URL (ElasticMQ, query
protocol; ElasticMQ checks no signature, so the requests are unsigned), one message at a time,
takes WORK_SECONDS per message, deletes it after the work, and appends each message body (the
test's message id) to RECORD_FILE.

Env: SQS_QUEUE_URL, WORK_SECONDS (default 0.05), RECORD_FILE (optional).
SIGTERM: finish the message in hand, exit 0.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import xml.etree.ElementTree as ElementTree

import httpx

_NS = "{http://queue.amazonaws.com/doc/2012-11-05/}"
stopping = False


def _stop(_signum: int, _frame: object) -> None:
    global stopping
    stopping = True


def call(client: httpx.Client, queue_url: str, action: str, **params: str) -> ElementTree.Element:
    form = {"Action": action, "Version": "2012-11-05", "QueueUrl": queue_url, **params}
    response = client.post(queue_url, data=form)
    response.raise_for_status()
    return ElementTree.fromstring(response.content)  # noqa: S314 - the rig's own ElasticMQ


def consume() -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    queue_url = os.environ["SQS_QUEUE_URL"]
    work = float(os.environ.get("WORK_SECONDS", "0.05"))
    record = os.environ.get("RECORD_FILE")
    out = open(record, "a", buffering=1) if record else None  # noqa: SIM115 - lives as long as the loop
    print(f"consuming {queue_url}", flush=True)
    with httpx.Client(timeout=10.0) as client:
        while not stopping:
            try:
                answer = call(
                    client, queue_url, "ReceiveMessage", MaxNumberOfMessages="1", WaitTimeSeconds="1"
                )
            except httpx.HTTPError as exc:
                print(f"receive failed: {exc}", flush=True)
                time.sleep(0.5)
                continue
            for message in answer.iter(f"{_NS}Message"):
                body = message.findtext(f"{_NS}Body") or ""
                handle = message.findtext(f"{_NS}ReceiptHandle") or ""
                time.sleep(work)
                if out is not None:
                    out.write(body + "\n")
                call(client, queue_url, "DeleteMessage", ReceiptHandle=handle)
    if out is not None:
        out.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(consume())
