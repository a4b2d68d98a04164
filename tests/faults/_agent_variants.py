"""Pods of one Deployment whose agents differ: one runs with another environment (a shifted wall
clock, an earlier build on PYTHONPATH), the others as shipped.

All pods come from one template, so the choice is made when an agent starts: the container runs
a small shell script that claims a directory in the run directory with ``mkdir`` (atomic) and
picks the environment by whether it won the claim. ``per="process"``: the first agent process
of the Deployment is the chosen one, any later start (a restart in the same pod, or another pod)
is not. ``per="pod"``: the first pod is chosen, and stays chosen across its agent's restarts.
The script ends with ``exec``, so the agent is the container's process as usual (signals, pids).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from tests.integration.rigkube import (
    apply,
    consumer_deployment,
    kafka_hints,
    namespace_with_agent_rbac,
    unique,
    waker_rbac,
)
from tests.integration.test_scale_to_zero import (
    FAST,
    PARTITIONS,
    Background,
    KafkaIds,
    Observer,
    Setup,
    WakerProcess,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.images import VENV_BIN
from tests.rig.kafka import Kafka
from tests.rig.processes import Supervisor
from tidescale.kube import KubeConfig


def _exports(env: Mapping[str, str]) -> str:
    return " ".join(f"export {name}={shlex.quote(value)};" for name, value in env.items()) or ":;"


def chooser_script(
    claim: Path,
    *,
    chosen: Mapping[str, str],
    others: Mapping[str, str],
    per: Literal["process", "pod"],
) -> str:
    """The agent container's ``sh -c`` script. No ``$(`` in it: the pod runner expands ``$(VAR)``."""
    agent = shlex.quote(str(VENV_BIN / "tidescale"))
    where = shlex.quote(str(claim))
    if per == "process":
        test = f"mkdir {where} 2>/dev/null"
    else:
        test = (
            f'{{ mkdir {where} 2>/dev/null && echo "$POD_NAME" > {where}/pod; }}; '
            f'[ "$POD_NAME" = "`cat {where}/pod 2>/dev/null`" ]'
        )
    return f"if {test}; then {_exports(chosen)} else {_exports(others)} fi; exec {agent} agent"


def kafka_setup_with_chosen_agent(
    plane: ControlPlane,
    supervisor: Supervisor,
    background: Background,
    kafka: Kafka,
    run_dir: Path,
    prefix: str,
    *,
    chosen: Mapping[str, str],
    others: Mapping[str, str] | None = None,
    per: Literal["process", "pod"],
    replicas: int = 1,
    work_seconds: float = 0.02,
    extra: dict[str, str] | None = None,
) -> tuple[Setup, KafkaIds]:
    """``kafka_setup`` of the scale-to-zero tests (namespace, RBAC, topic, consumer Deployment with
    the agent, its watch, a waker not started), with the agents chosen as the module doc says."""
    namespace, name = unique(prefix), "orders"
    topic, group = unique("orders"), unique("orders-group")
    kafka.create_topic(topic, PARTITIONS)
    namespace_with_agent_rbac(plane, namespace)
    kubeconfig = waker_rbac(plane, [namespace])
    hints = kafka_hints(
        kafka,
        topic,
        group,
        {**FAST, "kafka.offset-reset-policy": "earliest", "kafka.lag-threshold": "20", **(extra or {})},
    )
    record = run_dir / f"{namespace}-consumed.txt"
    deployment = consumer_deployment(
        name,
        kafka=kafka,
        topic=topic,
        group=group,
        annotations=hints,
        record_file=record,
        work_seconds=work_seconds,
        replicas=replicas,
    )
    script = chooser_script(
        run_dir / f"{namespace}-chosen-agent", chosen=chosen, others=others or {}, per=per
    )
    agent: dict[str, Any] = next(
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "tidescale-agent"
    )
    agent["command"], agent["args"] = ["/bin/sh", "-c", script], []
    observer = Observer(background, KubeConfig.from_kubeconfig(plane.admin_kubeconfig), namespace, name)
    apply(plane, deployment, namespace=namespace)
    waker = WakerProcess(supervisor, kubeconfig, namespace)
    setup = Setup(namespace=namespace, name=name, observer=observer, record=record, waker=waker)
    return setup, KafkaIds(background, kafka, topic)
