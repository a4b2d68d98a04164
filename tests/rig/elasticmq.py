"""ElasticMQ for the rig: an SQS-compatible server (Maven artifact org.elasticmq:elasticmq-server_2.13).

One Java process on the node address and a free port, its config and log in the run folder.
Queue URLs are ``http://<node address>:<port>/000000000000/<name>``. ElasticMQ accepts any
credentials (it checks no signature), so a test of refused credentials cannot use it.

The test's own view of a queue (:meth:`ElasticMQ.attributes`) uses the query protocol
(``Action=GetQueueAttributes``, an XML answer): a different protocol from the JSON one
tidescale speaks, so the comparison does not share tidescale's request or parsing.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.rig.network import Network
from tests.rig.paths import elasticmq_classpath
from tests.rig.processes import Managed, Supervisor, free_port, port_open, wait_until

ACCOUNT = "000000000000"
REGION = "elasticmq"
JVM = ("-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")
_NS = "{http://queue.amazonaws.com/doc/2012-11-05/}"


class ElasticMQError(RuntimeError):
    """ElasticMQ refused a request of the test; the message carries its answer."""


@dataclass(kw_only=True, slots=True)
class ElasticMQ:
    """A running ElasticMQ started by :meth:`start`; stopped with the supervisor."""

    host: str
    port: int
    process: Managed
    start_seconds: float

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def queue_url(self, name: str) -> str:
        return f"{self.endpoint}/{ACCOUNT}/{name}"

    @classmethod
    def start(
        cls, supervisor: Supervisor, network: Network, run_dir: Path, *, timeout: float = 120.0
    ) -> ElasticMQ:
        began = time.monotonic()
        classpath = elasticmq_classpath()
        directory = run_dir / "elasticmq"
        directory.mkdir(parents=True, exist_ok=True)
        host = network.node_address
        port = free_port(host)
        config = directory / "elasticmq.conf"
        config.write_text(
            'include classpath("application.conf")\n'
            f'node-address {{ protocol = http, host = "{host}", port = {port}, context-path = "" }}\n'
            f'rest-sqs {{ enabled = true, bind-port = {port}, bind-hostname = "{host}" }}\n'
            "rest-sqs.sqs-limits = strict\n"
            "generate-node-address = false\n"
            f'aws {{ region = "{REGION}", accountId = "{ACCOUNT}" }}\n'
        )
        process = supervisor.start(
            "elasticmq",
            ["java", *JVM, f"-Dconfig.file={config}", "-cp", classpath, "org.elasticmq.server.Main"],
            cwd=directory,
        )
        server = cls(host=host, port=port, process=process, start_seconds=0.0)
        wait_until(
            f"elasticmq listening on {host}:{port}",
            lambda: port_open(host, port),
            timeout=timeout,
            process=process,
        )
        wait_until("elasticmq answering ListQueues", server._answers, timeout=30.0, process=process)
        server.start_seconds = time.monotonic() - began
        return server

    def _answers(self) -> bool:
        self.call("ListQueues")
        return True

    def call(self, action: str, **params: str) -> ElementTree.Element:
        """One query-protocol request (unsigned: ElasticMQ checks no signature); its XML answer."""
        form = {"Action": action, "Version": "2012-11-05", **params}
        response = httpx.post(self.endpoint + "/", data=form, timeout=10.0)
        if response.status_code >= 400:
            raise ElasticMQError(f"{action} answered HTTP {response.status_code}: {response.text[:500]}")
        # The rig's own server on the bridge, not tenant input.
        return ElementTree.fromstring(response.content)  # noqa: S314

    def create_queue(self, name: str, **attributes: str) -> str:
        params: dict[str, str] = {"QueueName": name}
        for index, (key, value) in enumerate(sorted(attributes.items()), start=1):
            params[f"Attribute.{index}.Name"] = key
            params[f"Attribute.{index}.Value"] = value
        answer = self.call("CreateQueue", **params)
        found = answer.find(f".//{_NS}QueueUrl")
        if found is None or not found.text:
            raise ElasticMQError(f"CreateQueue gave no QueueUrl: {ElementTree.tostring(answer)[:300]!r}")
        return found.text

    def delete_queue(self, name: str) -> None:
        self.call("DeleteQueue", QueueUrl=self.queue_url(name))

    def send(self, name: str, count: int, *, delay_seconds: int = 0) -> None:
        """``count`` messages."""
        self.send_bodies(name, [f"message {n}" for n in range(count)], delay_seconds=delay_seconds)

    def send_bodies(self, name: str, bodies: list[str], *, delay_seconds: int = 0) -> None:
        """One message per body, in batches of 10 (SendMessageBatch's most)."""
        for start in range(0, len(bodies), 10):
            params: dict[str, str] = {"QueueUrl": self.queue_url(name)}
            for index, body in enumerate(bodies[start : start + 10], start=1):
                params[f"SendMessageBatchRequestEntry.{index}.Id"] = f"m{index}"
                params[f"SendMessageBatchRequestEntry.{index}.MessageBody"] = body
                if delay_seconds:
                    params[f"SendMessageBatchRequestEntry.{index}.DelaySeconds"] = str(delay_seconds)
            self.call("SendMessageBatch", **params)

    def receive(self, name: str, count: int, *, visibility_timeout: int = 600) -> list[str]:
        """Receives up to ``count`` messages (in flight ``visibility_timeout`` s): their receipt handles."""
        handles: list[str] = []
        while len(handles) < count:
            answer = self.call(
                "ReceiveMessage",
                QueueUrl=self.queue_url(name),
                MaxNumberOfMessages=str(min(10, count - len(handles))),
                VisibilityTimeout=str(visibility_timeout),
            )
            got = [e.text or "" for e in answer.iter(f"{_NS}ReceiptHandle")]
            if not got:
                break
            handles.extend(got)
        return handles

    def delete_messages(self, name: str, handles: list[str]) -> None:
        for handle in handles:
            self.call("DeleteMessage", QueueUrl=self.queue_url(name), ReceiptHandle=handle)

    def attributes(self, name: str) -> dict[str, str]:
        """ElasticMQ's own answer: every attribute of the queue (query protocol, XML)."""
        answer = self.call("GetQueueAttributes", QueueUrl=self.queue_url(name), **{"AttributeName.1": "All"})
        found: dict[str, Any] = {}
        for attribute in answer.iter(f"{_NS}Attribute"):
            key, value = attribute.find(f"{_NS}Name"), attribute.find(f"{_NS}Value")
            if key is not None and value is not None and key.text:
                found[key.text] = value.text or ""
        return found
