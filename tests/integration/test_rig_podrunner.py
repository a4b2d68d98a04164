"""The pod runner, as a kubelet: pods from the API server run here with their own address, env,
volumes and probes, and stop on deletion."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.rig.controlplane import ControlPlane
from tests.rig.podrunner import PodRunner

pytestmark = pytest.mark.rig

T = TypeVar("T")
ECHO = "registry.example/tidescale-test/echo:1"


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """The first truthy result of ``probe``; fails naming ``what`` when time runs out."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
            last = result
        except Exception as error:  # the API or a pod not answering yet
            last = error
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def get_json(cp: ControlPlane, *args: str) -> Any:
    return json.loads(cp.kubectl("get", "-o", "json", *args).stdout)


def http_get(url: str) -> tuple[int, bytes]:
    # Generous: on a busy 2-core machine a Python workload can take seconds to answer.
    with urllib.request.urlopen(url, timeout=15) as response:  # noqa: S310 (http to a pod address)
        return int(response.status), bytes(response.read())


def ready_pods(cp: ControlPlane, namespace: str, selector: str, count: int) -> list[dict[str, Any]] | None:
    pods = get_json(cp, "pods", "-n", namespace, "-l", selector)["items"]
    ready = [
        p
        for p in pods
        if p["metadata"].get("deletionTimestamp") is None
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]
    return ready if len(ready) == count else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent has not reaped it yet).
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"pr-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def echo_deployment(
    name: str, *, replicas: int, grace: int = 5, args: list[str] | None = None
) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"tier": "test"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, "flavour": "salty"}},
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "containers": [
                        {
                            "name": "echo",
                            "image": ECHO,
                            "args": args or ["--port", "8080"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", "port": "http"},
                                "periodSeconds": 1,
                            },
                            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2},
                            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                            "env": [
                                {
                                    "name": "MY_POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                                {
                                    "name": "MY_NAMESPACE",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                                },
                                {
                                    "name": "MY_POD_IP",
                                    "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                },
                                {
                                    "name": "MY_NODE",
                                    "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                                },
                                {
                                    "name": "MY_FLAVOUR",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['flavour']"}},
                                },
                                {
                                    "name": "MY_CPU_MILLIS",
                                    "valueFrom": {
                                        "resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}
                                    },
                                },
                                {
                                    "name": "MY_MEMORY_MI",
                                    "valueFrom": {
                                        "resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}
                                    },
                                },
                                {"name": "GREETING", "value": "hello $(MY_POD_NAME)"},
                            ],
                        }
                    ],
                },
            },
        },
    }


def apply(cp: ControlPlane, namespace: str, *objects: dict[str, Any]) -> None:
    cp.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )


def test_a_deployment_of_two_echo_pods_ends_with_two_ready_pods_at_distinct_reachable_addresses(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    apply(control_plane, namespace, echo_deployment("echo", replicas=2))
    pods = eventually("two Ready echo pods", lambda: ready_pods(control_plane, namespace, "app=echo", 2))
    addresses = {p["status"]["podIP"] for p in pods}
    assert len(addresses) == 2
    assert all(addr.startswith("10.213.") for addr in addresses)
    assert {p["status"]["hostIP"] for p in pods} == {control_plane.node_address}
    assert {p["spec"]["nodeName"] for p in pods} == {"rig-node"}
    for pod in pods:
        assert http_get(f"http://{pod['status']['podIP']}:8080/healthz")[0] == 200
        status = pod["status"]["containerStatuses"][0]
        assert status["ready"] is True
        assert "running" in status["state"]
        assert pod["status"]["phase"] == "Running"
        assert pod_runner.pod_pids()[f"{namespace}/{pod['metadata']['name']}"]


def test_a_pod_sees_its_downward_api_fields_resources_and_expanded_values_in_its_env(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    apply(control_plane, namespace, echo_deployment("env", replicas=1))
    (pod,) = eventually("a Ready env pod", lambda: ready_pods(control_plane, namespace, "app=env", 1))
    name, address = pod["metadata"]["name"], pod["status"]["podIP"]
    env = json.loads(http_get(f"http://{address}:8080/env")[1])
    assert env["MY_POD_NAME"] == name
    assert env["MY_NAMESPACE"] == namespace
    assert env["MY_POD_IP"] == address
    assert env["MY_NODE"] == "rig-node"
    assert env["MY_FLAVOUR"] == "salty"
    assert env["MY_CPU_MILLIS"] == "500"
    assert env["MY_MEMORY_MI"] == "64"
    assert env["GREETING"] == f"hello {name}"
    assert env["KUBERNETES_SERVICE_HOST"] == control_plane.node_address
    assert env["KUBERNETES_SERVICE_PORT"] == str(control_plane.port)


def test_a_pod_calls_the_api_server_with_its_mounted_service_account_token(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    apply(control_plane, namespace, echo_deployment("token", replicas=1))
    (pod,) = eventually("a Ready token pod", lambda: ready_pods(control_plane, namespace, "app=token", 1))
    address = pod["status"]["podIP"]
    mounted = http_get(
        f"http://{address}:8080/file?path=/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    )
    assert mounted[1].decode() == namespace
    answer = json.loads(http_get(f"http://{address}:8080/selfsubject")[1])
    assert answer["status"] == 201, answer
    user = answer["review"]["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{namespace}:default"
    # A bound token, as the kubelet requests it: tied to this very pod.
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == [pod["metadata"]["name"]]


def test_a_service_selecting_the_pods_gets_an_endpointslice_with_their_addresses(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "svc"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    apply(control_plane, namespace, echo_deployment("svc", replicas=2), service)
    pods = eventually("two Ready svc pods", lambda: ready_pods(control_plane, namespace, "app=svc", 2))
    expected = {p["status"]["podIP"] for p in pods}

    def listed() -> set[str] | None:
        slices = get_json(
            control_plane, "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=echo"
        )
        found = {
            address
            for s in slices["items"]
            for endpoint in s.get("endpoints") or []
            if endpoint["conditions"].get("ready")
            for address in endpoint["addresses"]
        }
        return found if found == expected else None

    eventually("the EndpointSlice to list both pod addresses", listed)
    slices = get_json(
        control_plane, "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=echo"
    )
    assert {e.get("nodeName") for s in slices["items"] for e in s["endpoints"]} == {"rig-node"}
    assert slices["items"][0]["ports"][0]["port"] == 8080


def test_deleting_a_deployment_sends_sigterm_and_leaves_no_process_or_namespace(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    apply(
        control_plane,
        namespace,
        echo_deployment("bye", replicas=2, args=["--port", "8080", "--term-delay", "0.3"]),
    )
    pods = eventually("two Ready bye pods", lambda: ready_pods(control_plane, namespace, "app=bye", 2))
    keys = [f"{namespace}/{p['metadata']['name']}" for p in pods]
    pids = [pid for key in keys for pid in pod_runner.pod_pids()[key]]
    netns = [pod_runner.pod_netns()[key] for key in keys]
    assert len(pids) == 2
    assert all(alive(pid) for pid in pids)

    control_plane.kubectl("delete", "deployment", "bye", "-n", namespace)
    eventually(
        "the bye pods to leave the API",
        lambda: not get_json(control_plane, "pods", "-n", namespace, "-l", "app=bye")["items"] or None,
    )
    assert not any(alive(pid) for pid in pids)

    def namespaces_gone() -> bool:
        # Addresses (and so namespace names) are reused: a name still listed must belong to
        # another live pod of the session, never to one of these.
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        runner_view = pod_runner.pod_netns()
        owned_by_others = {ns for key, ns in runner_view.items() if key not in keys}
        return not any(key in runner_view for key in keys) and not any(
            ns in listing.split() and ns not in owned_by_others for ns in netns
        )

    eventually("the bye pods' network namespaces to be removed", namespaces_gone, timeout=15)
    for pod in pods:
        log = pod_runner.log_path(namespace, pod["metadata"]["name"], "echo").read_text()
        assert "SIGTERM" in log
        assert "exiting" in log


def test_a_container_that_ignores_sigterm_is_killed_after_its_grace_period(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    apply(
        control_plane,
        namespace,
        echo_deployment("stubborn", replicas=1, grace=1, args=["--term-delay", "60"]),
    )
    (pod,) = eventually(
        "a Ready stubborn pod", lambda: ready_pods(control_plane, namespace, "app=stubborn", 1)
    )
    name = pod["metadata"]["name"]
    (pid,) = pod_runner.pod_pids()[f"{namespace}/{name}"]
    control_plane.kubectl("delete", "pod", name, "-n", namespace, "--wait=true")
    assert not alive(pid)
    log = pod_runner.log_path(namespace, name, "echo").read_text()
    assert "SIGTERM" in log
    # Killed within its one second of grace: left alone, it would have exited by itself after the
    # minute its --term-delay asks for, and said so.
    assert "exiting" not in log


def test_native_sidecars_start_in_order_before_the_containers_and_stop_after_them(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    record = ["--record", "/shared/order"]
    mount = [{"name": "shared", "mountPath": "/shared"}]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sidecars", "labels": {"app": "sidecars"}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "initContainers": [
                {
                    "name": "setup",
                    "image": ECHO,
                    "args": [*record, "--name", "setup", "--exit-after-record"],
                    "volumeMounts": mount,
                },
                {
                    "name": "helper",
                    "image": ECHO,
                    "restartPolicy": "Always",
                    "args": [*record, "--name", "helper", "--port", "9090", "--ready-after", "2"],
                    "startupProbe": {
                        "httpGet": {"path": "/readyz", "port": 9090},
                        "periodSeconds": 1,
                        "failureThreshold": 30,
                    },
                    "volumeMounts": mount,
                },
            ],
            "containers": [
                {
                    "name": "main",
                    "image": ECHO,
                    "args": [*record, "--name", "main"],
                    "volumeMounts": mount,
                    # Without a readiness probe a container is Ready as soon as it runs, before it listens.
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1},
                }
            ],
        },
    }
    apply(control_plane, namespace, pod)
    (ready,) = eventually(
        "the sidecars pod Ready", lambda: ready_pods(control_plane, namespace, "app=sidecars", 1)
    )
    order = (
        http_get(f"http://{ready['status']['podIP']}:8080/file?path=/shared/order")[1].decode().splitlines()
    )
    assert order == ["setup started", "helper started", "main started"]
    setup, helper = ready["status"]["initContainerStatuses"]
    assert setup["state"]["terminated"]["exitCode"] == 0
    assert helper["started"] is True
    assert "running" in helper["state"]

    control_plane.kubectl("delete", "pod", "sidecars", "-n", namespace, "--wait=true")
    shared = pod_runner.run_dir / "pods" / f"{namespace}_sidecars" / "volumes" / "shared" / "order"
    stopping = [line for line in shared.read_text().splitlines() if line.endswith("SIGTERM")]
    assert stopping == ["main SIGTERM", "helper SIGTERM"]


def test_an_image_without_a_local_command_leaves_the_pod_waiting_with_a_pull_error(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "nowhere"},
        "spec": {"containers": [{"name": "c", "image": "docker.io/library/nginx:1.27"}]},
    }
    apply(control_plane, namespace, pod)

    def waiting() -> dict[str, Any] | None:
        statuses = (
            get_json(control_plane, "pod", "nowhere", "-n", namespace)["status"].get("containerStatuses")
            or []
        )
        return (
            statuses[0]["state"].get("waiting")
            if statuses and statuses[0]["state"].get("waiting", {}).get("reason") == "ErrImagePull"
            else None
        )

    state = eventually("the nowhere pod to report ErrImagePull", waiting)
    assert "nginx" in state["message"]
    assert "tests/rig/images.py" in state["message"]
    assert get_json(control_plane, "pod", "nowhere", "-n", namespace)["status"]["phase"] == "Pending"


def test_a_crashing_container_is_restarted_with_back_off_and_its_last_exit_reported(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "crasher"},
        "spec": {
            "containers": [{"name": "c", "image": ECHO, "command": ["sh", "-c", "echo crashing; exit 3"]}]
        },
    }
    apply(control_plane, namespace, pod)

    def restarted() -> dict[str, Any] | None:
        statuses = get_json(control_plane, "pod", "crasher", "-n", namespace)["status"].get(
            "containerStatuses"
        )
        return statuses[0] if statuses and statuses[0]["restartCount"] >= 2 else None

    status = eventually("the crasher to restart twice", restarted)
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["ready"] is False
    assert pod_runner.log_path(namespace, "crasher", "c").read_text().count("crashing") >= 2


def test_config_maps_and_secrets_reach_a_container_as_env_and_as_read_only_files(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"MODE": "fast"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "stringData": {"password": "s3cret", "user": "alice"},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "configured", "labels": {"app": "configured"}},
        "spec": {
            "automountServiceAccountToken": False,
            "volumes": [
                {"name": "creds", "secret": {"secretName": "creds", "items": [{"key": "user", "path": "u"}]}}
            ],
            "containers": [
                {
                    "name": "echo",
                    "image": ECHO,
                    "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                    "env": [
                        {
                            "name": "PASSWORD",
                            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
                        },
                        {
                            "name": "MODE",
                            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "MODE"}},
                        },
                    ],
                    "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds", "readOnly": True}],
                    "readinessProbe": {"exec": {"command": ["cat", "/etc/creds/u"]}, "periodSeconds": 1},
                }
            ],
        },
    }
    apply(control_plane, namespace, config, secret, pod)
    (ready,) = eventually(
        "the configured pod Ready", lambda: ready_pods(control_plane, namespace, "app=configured", 1)
    )
    base = f"http://{ready['status']['podIP']}:8080"
    # Ready here comes from an exec probe on the file, not from the HTTP server: wait for it.
    env = json.loads(eventually("the echo server to answer", lambda: http_get(f"{base}/env")[1]))
    assert env["CFG_MODE"] == "fast"
    assert env["MODE"] == "fast"
    assert env["PASSWORD"] == "s3cret"
    assert http_get(f"{base}/file?path=/etc/creds/u")[1] == b"alice"
    # automountServiceAccountToken: false -> no token where in-cluster clients look for one.
    token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    with pytest.raises(urllib.error.HTTPError):
        http_get(f"{base}/file?path={token}")
    # The mount is private to the container: this machine sees no /etc/creds/u.
    assert not os.path.exists("/etc/creds/u")


def test_stopping_a_runner_ends_its_pod_processes_and_removes_their_namespaces(
    control_plane: ControlPlane, pod_runner: PodRunner, namespace: str
) -> None:
    second = PodRunner(
        kubeconfig=control_plane.admin_kubeconfig,
        server=control_plane.server,
        network=pod_runner.network,
        run_dir=pod_runner.run_dir,
        node_name="rig-node-2",
        bind_pending=False,
    ).start()
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "second", "labels": {"app": "second"}},
            "spec": {"nodeName": "rig-node-2", "containers": [{"name": "echo", "image": ECHO}]},
        }
        apply(control_plane, namespace, pod)
        eventually("the second pod Ready", lambda: ready_pods(control_plane, namespace, "app=second", 1))
        pids = second.pod_pids()[f"{namespace}/second"]
        netns = second.pod_netns()[f"{namespace}/second"]
    finally:
        second.stop()
    assert pids
    assert not any(alive(pid) for pid in pids)
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert netns not in listing.split()
    assert not second.pods
    control_plane.kubectl(
        "delete", "pod", "second", "-n", namespace, "--grace-period=0", "--force", check=False
    )
    control_plane.kubectl("delete", "node", "rig-node-2", check=False)
