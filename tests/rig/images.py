"""Which local command stands in for each container image the pod runner is asked to run.

An image is looked up by its repository name without registry and tag
(``ghcr.io/acme/tidescale:0.1`` -> ``tidescale``), then by its last path part
(``acme/tidescale`` -> ``tidescale``). An entry plays the image's ENTRYPOINT and CMD:
a container's ``command`` replaces the entrypoint, its ``args`` the default arguments,
exactly as on a node. Adding a workload is one line in ``IMAGES``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
WORKLOADS = REPO_ROOT / "tests" / "workloads"
# The venv's interpreter when there is one, so workloads import the project's dependencies.
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable


@dataclass(frozen=True, kw_only=True, slots=True)
class Image:
    """What an image would run: its entrypoint, default arguments and working directory."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    workdir: str = "/"


def _script(name: str) -> Image:
    return Image(entrypoint=(PYTHON, "-u", str(WORKLOADS / name)))


IMAGES: dict[str, Image] = {
    "tidescale": Image(entrypoint=(str(VENV_BIN / "tidescale"),)),
    "tidescale-test/echo": _script("echo.py"),
    "tidescale-test/kafka-consumer": _script("kafka_consumer.py"),
    "tidescale-test/rabbitmq-consumer": _script("rabbitmq_consumer.py"),
    "tidescale-test/redis-consumer": _script("redis_consumer.py"),
    "tidescale-test/postgresql-consumer": _script("postgresql_consumer.py"),
    "tidescale-test/nats-consumer": _script("nats_consumer.py"),
    "tidescale-test/sqs-consumer": _script("sqs_consumer.py"),
    "tidescale-test/azure-queue-consumer": _script("azure_queue_consumer.py"),
}


class UnknownImage(LookupError):
    """No local command is mapped to this image."""


def image_key(image: str) -> str:
    """``registry:5000/org/name:tag@sha256:...`` -> ``org/name``."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    if ":" in name[last_slash + 1 :]:
        name = name[: name.rfind(":")]
    parts = name.split("/")
    # A first part with a dot or a port, or "localhost", names a registry, not a repository.
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    return "/".join(parts)


def lookup(image: str) -> Image:
    key = image_key(image)
    found = IMAGES.get(key) or IMAGES.get(key.rsplit("/", 1)[-1])
    if found is None:
        raise UnknownImage(f"image {image} has no local command in tests/rig/images.py")
    return found


def container_argv(image: str, command: list[str] | None, args: list[str] | None) -> list[str]:
    """The argv a container runs, by the Kubernetes rules for command/args over ENTRYPOINT/CMD."""
    entry = lookup(image)
    if command:
        return [*command, *(args or [])]
    return [*entry.entrypoint, *(args if args else entry.cmd)]
