"""The patch builder: every injection rule, checked by applying the patch with jsonpatch."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from tidescale_injector.config import AGENT_NAME, Bounds, InjectorConfig, Resources
from tidescale_injector.patch import (
    INJECTED_ANNOTATION,
    SKIP_REASONS,
    TOKEN_MOUNT_PATH,
    TOKEN_VOLUME,
    build_patch,
    escape,
    owning_deployment,
)

NATIVE = InjectorConfig(image="tidescale:test", native_sidecars=True, version="1.2.3")
CLASSIC = InjectorConfig(image="tidescale:test", native_sidecars=False, version="1.2.3")


def make_pod(**spec_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9f8c6b5-",
            "namespace": "shop",
            "labels": {"app": "web", "tidescale.io/inject": "true", "pod-template-hash": "7d9f8c6b5"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web-7d9f8c6b5",
                    "controller": True,
                    "uid": "u",
                }
            ],
        },
        "spec": {"containers": [{"name": "web", "image": "nginx"}], **spec_extra},
    }


def patched(pod: dict[str, Any], config: InjectorConfig = NATIVE) -> dict[str, Any]:
    injection = build_patch(pod, config)
    assert injection.skipped is None, injection.skipped
    result: dict[str, Any] = jsonpatch.JsonPatch(list(injection.ops)).apply(copy.deepcopy(pod))
    return result


def agent_of(pod: dict[str, Any]) -> dict[str, Any]:
    found = [
        c
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
        if c["name"] == AGENT_NAME
    ]
    assert len(found) == 1
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_native_mode_adds_the_agent_as_an_init_container_that_restarts_always() -> None:
    pod = patched(make_pod())
    [agent] = pod["spec"]["initContainers"]
    assert agent["name"] == AGENT_NAME
    assert agent["restartPolicy"] == "Always"
    assert agent["image"] == "tidescale:test"
    assert agent["args"] == ["agent"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["web"]


def test_classic_mode_appends_a_regular_container_without_restart_policy() -> None:
    pod = patched(make_pod(), CLASSIC)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["web", AGENT_NAME]
    assert "restartPolicy" not in pod["spec"]["containers"][1]
    assert "initContainers" not in pod["spec"]


def test_existing_init_containers_are_kept_and_the_agent_is_appended() -> None:
    pod = patched(make_pod(initContainers=[{"name": "migrate", "image": "m"}]))
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["migrate", AGENT_NAME]


def test_null_init_containers_are_replaced_by_a_whole_array() -> None:
    pod = patched(make_pod(initContainers=None))
    assert [c["name"] for c in pod["spec"]["initContainers"]] == [AGENT_NAME]


def test_env_carries_downward_api_fields_deployment_name_and_port() -> None:
    env = env_of(agent_of(patched(make_pod())))
    assert env["POD_NAME"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
    assert env["POD_IP"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}
    assert env["TIDESCALE_DEPLOYMENT"] == "web"
    assert env["TIDESCALE_PORT"] == "9464"


def test_a_configured_port_reaches_env_ports_and_probes() -> None:
    config = InjectorConfig(image="i", port=9999, version="1")
    agent = agent_of(patched(make_pod(), config))
    assert env_of(agent)["TIDESCALE_PORT"] == "9999"
    assert agent["ports"] == [{"name": "tidescale", "containerPort": 9999, "protocol": "TCP"}]
    assert agent["livenessProbe"]["httpGet"]["port"] == 9999
    assert agent["readinessProbe"]["httpGet"]["port"] == 9999


@pytest.mark.parametrize(
    ("rs_name", "hash_label", "expected"),
    [
        ("web-7d9f8c6b5", "7d9f8c6b5", "web"),
        ("my-app-v2-5c4b", "5c4b", "my-app-v2"),
        ("web-7d9f8c6b5", "other", None),
        ("-7d9f8c6b5", "7d9f8c6b5", None),
    ],
)
def test_the_deployment_is_the_replica_set_name_minus_the_template_hash(
    rs_name: str, hash_label: str, expected: str | None
) -> None:
    metadata = {
        "labels": {"pod-template-hash": hash_label},
        "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name, "controller": True}
        ],
    }
    assert owning_deployment(metadata) == expected


@pytest.mark.parametrize(
    "owner",
    [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5"},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5", "controller": False},
        {"apiVersion": "example.com/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5", "controller": True},
    ],
    ids=["no-controller-field", "controller-false", "other-api-group"],
)
def test_only_a_controller_reference_to_an_apps_replica_set_names_the_deployment(
    owner: dict[str, Any],
) -> None:
    pod = make_pod()
    pod["metadata"]["ownerReferences"] = [owner]
    assert owning_deployment(pod["metadata"]) is None
    assert build_patch(pod, NATIVE).skipped == "no-deployment"


def test_a_host_network_pod_is_skipped_with_its_reason() -> None:
    injection = build_patch(make_pod(hostNetwork=True), NATIVE)
    assert injection.skipped == "host-network"
    assert injection.ops == ()
    assert "host-network" in SKIP_REASONS


def test_a_deployment_name_too_long_for_its_pod_names_gets_a_warning() -> None:
    name = "a" * 47  # 47 + "-" + 9-character hash + "-" = 58 characters: still whole
    pod = make_pod()
    pod["metadata"]["ownerReferences"][0]["name"] = f"{name}-7d9f8c6b5"
    assert not [w for w in build_patch(pod, NATIVE).warnings if "too long" in w]
    pod["metadata"]["ownerReferences"][0]["name"] = f"{name}b-7d9f8c6b5"
    (warning,) = [w for w in build_patch(pod, NATIVE).warnings if "too long" in w]
    assert "at most 47 characters" in warning


def test_a_pod_without_a_replica_set_owner_is_skipped() -> None:
    pod = make_pod()
    pod["metadata"]["ownerReferences"] = [{"kind": "StatefulSet", "name": "db"}]
    assert build_patch(pod, NATIVE).skipped == "no-deployment"


def test_a_pod_without_the_opt_in_label_is_skipped() -> None:
    pod = make_pod()
    pod["metadata"]["labels"]["tidescale.io/inject"] = "false"
    injection = build_patch(pod, NATIVE)
    assert injection.skipped == "not-labelled"
    assert injection.ops == ()


@pytest.mark.parametrize("where", ["initContainers", "containers"])
def test_a_pod_that_already_has_the_agent_gets_no_operations(where: str) -> None:
    pod = make_pod()
    pod["spec"].setdefault(where, []).append({"name": AGENT_NAME, "image": "x"})
    injection = build_patch(pod, NATIVE)
    assert injection.ops == ()
    assert injection.skipped == "already-injected"


def test_injecting_twice_is_the_same_as_injecting_once() -> None:
    once = patched(make_pod())
    assert build_patch(once, NATIVE).ops == ()


def test_the_injected_annotation_is_added_as_a_whole_map_when_the_pod_has_none() -> None:
    injection = build_patch(make_pod(), NATIVE)
    assert injection.ops[0] == {
        "op": "add",
        "path": "/metadata/annotations",
        "value": {INJECTED_ANNOTATION: "1.2.3"},
    }


def test_the_injected_annotation_key_is_escaped_when_annotations_exist() -> None:
    pod = make_pod()
    pod["metadata"]["annotations"] = {"a~b/c": "kept"}
    injection = build_patch(pod, NATIVE)
    assert injection.ops[0]["path"] == "/metadata/annotations/tidescale.io~1injected"
    result = jsonpatch.JsonPatch(list(injection.ops)).apply(copy.deepcopy(pod))
    assert result["metadata"]["annotations"] == {"a~b/c": "kept", INJECTED_ANNOTATION: "1.2.3"}


def test_escape_replaces_tilde_before_slash() -> None:
    assert escape("a~1/b") == "a~01~1b"


def test_resources_default_to_the_configured_requests_and_limits() -> None:
    agent = agent_of(patched(make_pod()))
    assert agent["resources"] == {
        "requests": {"cpu": "10m", "memory": "48Mi"},
        "limits": {"cpu": "200m", "memory": "128Mi"},
    }


def test_pod_annotations_override_resources_within_bounds() -> None:
    pod = make_pod()
    pod["metadata"]["annotations"] = {
        "tidescale.io/agent-cpu-request": "50m",
        "tidescale.io/agent-cpu-limit": "0.5",
        "tidescale.io/agent-memory-request": "64Mi",
        "tidescale.io/agent-memory-limit": "256Mi",
    }
    injection = build_patch(pod, NATIVE)
    assert injection.warnings == ()
    agent = agent_of(jsonpatch.JsonPatch(list(injection.ops)).apply(copy.deepcopy(pod)))
    assert agent["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tidescale.io/agent-memory-limit", "64Gi"),
        ("tidescale.io/agent-memory-request", "1Ki"),
        ("tidescale.io/agent-cpu-limit", "100"),
        ("tidescale.io/agent-cpu-request", "lots"),
        ("tidescale.io/agent-cpu-request", "-5m"),
    ],
)
def test_an_override_out_of_bounds_or_unparsable_falls_back_to_the_default_with_a_warning(
    key: str, value: str
) -> None:
    pod = make_pod()
    pod["metadata"]["annotations"] = {key: value}
    injection = build_patch(pod, NATIVE)
    assert len(injection.warnings) == 1
    assert key in injection.warnings[0]
    agent = agent_of(jsonpatch.JsonPatch(list(injection.ops)).apply(copy.deepcopy(pod)))
    assert agent["resources"]["limits"] == {"cpu": "200m", "memory": "128Mi"}
    assert agent["resources"]["requests"] == {"cpu": "10m", "memory": "48Mi"}


def test_a_request_above_its_limit_falls_back_to_both_defaults() -> None:
    config = InjectorConfig(
        image="i", version="1", resources=Resources(cpu_bounds=Bounds(minimum=1, maximum=4000))
    )
    pod = make_pod()
    pod["metadata"]["annotations"] = {"tidescale.io/agent-cpu-request": "1"}
    injection = build_patch(pod, config)
    assert any("exceeds its limit" in w for w in injection.warnings)
    agent = agent_of(jsonpatch.JsonPatch(list(injection.ops)).apply(copy.deepcopy(pod)))
    assert agent["resources"]["requests"]["cpu"] == "10m"


def test_probes_check_healthz_and_readyz_and_there_is_no_startup_probe() -> None:
    agent = agent_of(patched(make_pod()))
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "startupProbe" not in agent


def test_the_security_context_is_restricted() -> None:
    assert agent_of(patched(make_pod()))["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_a_pod_that_opts_out_of_token_automount_gets_a_projected_token_for_the_agent_only() -> None:
    pod = patched(make_pod(automountServiceAccountToken=False))
    [volume] = pod["spec"]["volumes"]
    assert volume["name"] == TOKEN_VOLUME
    sources = volume["projected"]["sources"]
    assert sources[0] == {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}
    assert sources[1]["configMap"] == {
        "name": "kube-root-ca.crt",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert sources[2]["downwardAPI"]["items"][0]["path"] == "namespace"
    assert agent_of(pod)["volumeMounts"] == [
        {"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT_PATH, "readOnly": True}
    ]
    assert "volumeMounts" not in pod["spec"]["containers"][0]


def test_the_token_volume_is_appended_to_existing_volumes() -> None:
    pod = patched(make_pod(automountServiceAccountToken=False, volumes=[{"name": "data", "emptyDir": {}}]))
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["data", TOKEN_VOLUME]


def test_a_pod_with_automount_left_on_gets_no_token_volume() -> None:
    pod = patched(make_pod(automountServiceAccountToken=True))
    assert "volumes" not in pod["spec"]
    assert "volumeMounts" not in agent_of(pod)


def test_a_workload_already_using_the_agent_port_gets_a_warning() -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 9464}]
    injection = build_patch(pod, NATIVE)
    assert any("9464" in w for w in injection.warnings)


@pytest.mark.parametrize(
    "spec",
    [
        None,
        "x",
        {"containers": "x"},
        {"containers": []},
        {"containers": [1]},
        {"containers": [{}], "volumes": 3},
    ],
)
def test_a_malformed_pod_is_skipped_not_patched(spec: object) -> None:
    pod = make_pod()
    pod["spec"] = spec
    injection = build_patch(pod, NATIVE)
    assert injection.skipped == "malformed"
    assert injection.ops == ()
