"""``make demo``: the local cluster rig with tidescale inside it and a sample consumer
scaling with its lag, down to zero and back.

Brings up the rig (API server, controller manager, Kafka, the pod runner), installs
tidescale with its Helm chart (the injector and the waker run as pods), opts a team
namespace in with the one RoleBinding line, deploys a Kafka consumer labelled for
injection with hints (min-replicas 0), then produces a burst of messages every so
often and prints what tidescale does about it, as it happens: scale-up, scale-down,
the handoff to the waker at zero, and the wake-up on the next burst.
Ctrl-C stops everything it started; ``DEMO_SECONDS=N`` stops after N seconds.
It ends by writing a PNG of lag and replicas over time, park and wake marked, and prints
its path (``DEMO_PNG=path`` chooses it; default ``<run dir>/demo.png``).
``DEMO_PROFILE=short`` runs one cycle fast (shorter windows, a smaller burst, the second
burst as soon as the Deployment is parked) and stops once it has woken: the test's profile.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.rigkube import (
    apply,
    consumer_deployment,
    get,
    items,
    kafka_hints,
    produce,
    wait_for,
)
from tests.rig.controlplane import ControlPlane
from tests.rig.helm import CHART, Helm
from tests.rig.kafka import Kafka
from tests.rig.network import Network
from tests.rig.paths import RigNotBuilt, new_run_dir
from tests.rig.plot import Timeline, write_png
from tests.rig.podrunner import PodRunner
from tests.rig.processes import Supervisor

NAMESPACE = "shop"
SYSTEM = "tidescale-system"
DEPLOYMENT = "orders-consumer"
TOPIC = "orders"
PARTITIONS = 8
BURST = 400
BURST_EVERY = 90.0
SHORT = os.environ.get("DEMO_PROFILE", "") == "short"
"""One burst, park, a second burst at zero, wake; then stop."""
if SHORT:
    BURST = 200
COMPONENTS = ("tidescale-agent", "tidescale-waker")


def say(text: str = "") -> None:
    print(text, flush=True)


class _Stop(Exception):
    pass


def _on_signal(signum: int, _frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def _timed(what: str, start: Any) -> Any:
    began = time.monotonic()
    print(f"  {what:<38}", end="", flush=True)
    result = start()
    say(f"ready in {time.monotonic() - began:4.1f}s")
    return result


def _replicas(plane: ControlPlane) -> int:
    return int(get(plane, "deployment", DEPLOYMENT, NAMESPACE)["spec"]["replicas"])


def _new_events(plane: ControlPlane, seen: set[str]) -> list[dict[str, Any]]:
    fresh = []
    for event in items(plane, "events", NAMESPACE):
        uid = event["metadata"]["uid"]
        if uid not in seen and event.get("source", {}).get("component") in COMPONENTS:
            seen.add(uid)
            fresh.append(event)
    return sorted(fresh, key=lambda e: e.get("lastTimestamp") or "")


def run(seconds: float | None) -> None:
    run_dir = new_run_dir()
    timeline = Timeline()
    supervisor = Supervisor(run_dir=run_dir)
    network = Network().open()
    runner: PodRunner | None = None
    try:
        say("tidescale demo: bringing up the local cluster rig")
        plane = _timed(
            "etcd + kube-apiserver + controllers", lambda: ControlPlane.start(supervisor, network, run_dir)
        )
        kafka = _timed("Kafka (KRaft, single node)", lambda: Kafka.start(supervisor, network, run_dir))
        runner = _timed(
            "pod runner (the kubelet stand-in)",
            lambda: PodRunner(
                kubeconfig=plane.admin_kubeconfig, server=plane.server, network=network, run_dir=run_dir
            ).start(),
        )
        say()
        say(f"  API server   {plane.server}  (Kubernetes {plane.version})")
        say(f"  Kafka        {kafka.bootstrap}")
        say(f"  logs         {run_dir}/logs/")
        say(f"  kubectl      KUBECONFIG={plane.admin_kubeconfig} kubectl get deploy,pods -n {NAMESPACE} -w")
        say()
        _install(plane, run_dir)
        kafka.create_topic(TOPIC, PARTITIONS)
        annotations = kafka_hints(
            kafka,
            TOPIC,
            "orders",
            {
                "min-replicas": "0",
                "max-replicas": "6",
                "kafka.lag-threshold": "50",
                "scale-down-stabilization": "5s" if SHORT else "15s",
                "cooldown": "10s" if SHORT else "20s",
            },
        )
        deployment = consumer_deployment(
            DEPLOYMENT,
            kafka=kafka,
            topic=TOPIC,
            group="orders",
            annotations=annotations,
            record_file=run_dir / "consumed.txt",
            work_seconds=0.2,
        )
        # Opted in by the label alone: the injector adds the agent (drop the hand-written one).
        template = deployment["spec"]["template"]
        template["metadata"]["labels"]["tidescale.io/inject"] = "true"
        template["spec"]["containers"] = [
            c for c in template["spec"]["containers"] if c["name"] != "tidescale-agent"
        ]
        apply(plane, deployment, namespace=NAMESPACE)
        say(
            f"deployment {NAMESPACE}/{DEPLOYMENT}: a Kafka consumer (0.2 s a message), "
            "labelled tidescale.io/inject"
        )
        say(
            "hints: "
            + ", ".join(f"{k.removeprefix('tidescale.io/')}={v}" for k, v in sorted(annotations.items()))
        )
        wait_for(
            "the consumer's first pod", lambda: _replicas(plane) >= 1 and _lease_holder(plane), timeout=120
        )
        pod = items(plane, "pods", NAMESPACE, f"app={DEPLOYMENT}")[0]
        containers = [c["name"] for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]]
        say(f"pod {pod['metadata']['name']}: containers {', '.join(containers)} (the agent injected)")
        say(f"agent leading: {_lease_holder(plane)}")
        say()
        _watch(plane, kafka, seconds, timeline, run_dir / "consumed.txt")
    finally:
        if timeline.samples:
            picture = write_png(timeline, Path(os.environ.get("DEMO_PNG") or run_dir / "demo.png"))
            say(f"\npicture of lag and replicas over time (park and wake marked): {picture}")
        say("\nstopping: pods, pod runner, Kafka, control plane")
        if runner is not None:
            runner.stop()
        supervisor.stop_all()
        network.close()
        say(f"stopped. Logs stay in {run_dir}")


def _install(plane: ControlPlane, run_dir: Any) -> None:
    """helm install, as a platform team would; then a team opts its namespace in, as NOTES.txt says."""
    helm = Helm(plane, run_dir / "helm")
    began = time.monotonic()
    print(f"  {'helm install tidescale (chart)':<38}", end="", flush=True)
    helm("install", "tidescale", str(CHART), "--namespace", SYSTEM, "--create-namespace")
    for component in ("injector", "waker"):
        wait_for(
            f"the {component} pods to be Ready",
            functools.partial(_ready, plane, SYSTEM, component),
            timeout=120,
        )
    say(f"ready in {time.monotonic() - began:4.1f}s")
    plane.kubectl("create", "namespace", NAMESPACE)
    apply(
        plane,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "workload"}},
        namespace=NAMESPACE,
    )
    line = ["create", "rolebinding", "tidescale-agent", "--clusterrole=tidescale-agent"]
    plane.kubectl(*line, f"--serviceaccount={NAMESPACE}:workload", "-n", NAMESPACE)
    say(
        f"team namespace {NAMESPACE}: kubectl {' '.join(line)} "
        f"--serviceaccount={NAMESPACE}:workload -n {NAMESPACE}"
    )


def _ready(plane: ControlPlane, namespace: str, component: str) -> bool:
    pods = items(plane, "pods", namespace, f"app.kubernetes.io/component={component}")
    return bool(pods) and all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
        for p in pods
    )


def _lease_holder(plane: ControlPlane) -> str | None:
    with contextlib.suppress(Exception):
        lease = get(plane, "lease", f"tidescale-{DEPLOYMENT}", NAMESPACE)
        holder = lease["spec"].get("holderIdentity")
        return str(holder) if holder else None
    return None


def _consumed(record_file: Path) -> int:
    """Distinct messages the consumers recorded (one id a line)."""
    try:
        return len(set(record_file.read_text().split()))
    except FileNotFoundError:
        return 0


def _watch(
    plane: ControlPlane, kafka: Kafka, seconds: float | None, timeline: Timeline, record_file: Path
) -> None:
    began = time.monotonic()
    next_burst = began
    burst_number = 0
    produced = 0
    seen: set[str] = set()
    last = _replicas(plane)
    last_state: str | None = None
    say(f"[{0:6.1f}s] replicas {last}")
    while seconds is None or time.monotonic() - began < seconds:
        now = time.monotonic()
        parked = any(mark.kind == "park" for mark in timeline.marks)
        due = (burst_number == 0 or (parked and burst_number == 1)) if SHORT else now >= next_burst
        if due:
            burst_number += 1
            ids = [f"b{burst_number}-{i}" for i in range(BURST)]
            produce(kafka, TOPIC, ids)
            produced += BURST
            say(f"[{now - began:6.1f}s] produced a burst of {BURST} messages to {TOPIC}")
            next_burst = now + BURST_EVERY
        deployment = get(plane, "deployment", DEPLOYMENT, NAMESPACE)
        replicas = int(deployment["spec"]["replicas"])
        state = (deployment["metadata"].get("labels") or {}).get("tidescale.io/state")
        if state != last_state:
            say(f"[{time.monotonic() - began:6.1f}s] state {last_state or '-'} -> {state or '-'}")
            last_state = state
        timeline.add(time.monotonic() - began, max(produced - _consumed(record_file), 0), replicas)
        woke = [mark.t for mark in timeline.marks if mark.kind == "wake"]
        if SHORT and woke and time.monotonic() - began > woke[0] + 5:
            say(f"[{time.monotonic() - began:6.1f}s] parked and woken: the short profile ends here")
            return
        for event in _new_events(plane, seen):
            say(f"[{time.monotonic() - began:6.1f}s] Event {event['reason']}: {event['message']}")
        if replicas != last:
            say(f"[{time.monotonic() - began:6.1f}s] replicas {last} -> {replicas}")
            last = replicas
        time.sleep(0.5)


def main() -> int:
    seconds = float(os.environ["DEMO_SECONDS"]) if os.environ.get("DEMO_SECONDS") else None
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        run(seconds)
    except RigNotBuilt as missing:
        print(f"demo: {missing}", file=sys.stderr)
        return 2
    except (_Stop, KeyboardInterrupt):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
