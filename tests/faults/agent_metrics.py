"""Reading an agent's own ``/metrics`` from the test process (pods' addresses are on the rig's
bridge, port 9464): what a fault test checks about polling, beside the audit log and the brokers'
tools."""

from __future__ import annotations

import re
import urllib.request

AGENT_PORT = 9464
KAFKA_GROUP_SCOPE = {"trigger": "kafka", "type": "kafka", "scope": "group"}
"""Labels of the single-trigger Kafka shorthand's group-wide (leader) measurements."""


def scrape(address: str) -> str:
    """The agent's /metrics text at ``address`` (a pod IP)."""
    with urllib.request.urlopen(f"http://{address}:{AGENT_PORT}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The first sample of ``name`` in /metrics ``text`` whose labels include ``labels``."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(have.get(key) == value for key, value in (labels or {}).items()):
            return float(match.group(3))
    return None


def counter(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """A counter's sample (0 before its first increment)."""
    return sample(text, name, labels) or 0.0
