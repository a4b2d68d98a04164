"""AdmissionReview handling for both webhooks: answers, warnings, denials and 400s."""

from __future__ import annotations

import base64
import copy
from typing import Any

import jsonpatch
import orjson
import pytest

from tests.unit.test_patch import make_pod
from tidescale_injector.config import AGENT_NAME, InjectorConfig
from tidescale_injector.review import MAX_REVIEW_BYTES, mutate, validate

CONFIG = InjectorConfig(image="tidescale:test", version="1.2.3")
STRICT = InjectorConfig(image="tidescale:test", version="1.2.3", strict=True)
GOOD_HINTS = {
    "tidescale.io/max-replicas": "5",
    # A trigger: a labelled Deployment without one is warned about (it would never scale).
    "tidescale.io/kafka.bootstrap-servers": "kafka:9092",
    "tidescale.io/kafka.consumer-group": "web",
}
BAD_HINTS = {"tidescale.io/max-replica": "3", "tidescale.io/min-replicas": "x"}


def review_of(request: dict[str, Any]) -> bytes:
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})


def pod_request(pod: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "uid": "abc-123",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "shop",
        "operation": "CREATE",
        "object": pod,
        **extra,
    }


def deployment(annotations: dict[str, str], *, labelled: bool = True) -> dict[str, Any]:
    labels = {"app": "web", **({"tidescale.io/inject": "true"} if labelled else {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": "n"}]},
            },
        },
    }


def deployment_request(obj: dict[str, Any], operation: str = "CREATE", old: Any = None) -> dict[str, Any]:
    request = {
        "uid": "dep-1",
        "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "namespace": "shop",
        "operation": operation,
        "object": obj,
    }
    if old is not None:
        request["oldObject"] = old
    return request


def response_of(body: bytes) -> dict[str, Any]:
    review = orjson.loads(body)
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert review["kind"] == "AdmissionReview"
    response: dict[str, Any] = review["response"]
    return response


def test_a_labelled_pod_gets_a_json_patch_that_adds_the_agent() -> None:
    pod = make_pod()
    outcome = mutate(review_of(pod_request(pod)), CONFIG)
    assert outcome.status == 200
    assert outcome.result == "injected"
    response = response_of(outcome.body)
    assert response["uid"] == "abc-123"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    ops = orjson.loads(base64.b64decode(response["patch"]))
    result = jsonpatch.JsonPatch(ops).apply(copy.deepcopy(pod))
    assert [c["name"] for c in result["spec"]["initContainers"]] == [AGENT_NAME]


def test_an_unlabelled_pod_is_allowed_without_a_patch() -> None:
    pod = make_pod()
    del pod["metadata"]["labels"]["tidescale.io/inject"]
    outcome = mutate(review_of(pod_request(pod)), CONFIG)
    response = response_of(outcome.body)
    assert response == {"uid": "abc-123", "allowed": True}
    assert (outcome.result, outcome.reason) == ("skipped", "not-labelled")


def test_pods_in_excluded_namespaces_are_left_alone() -> None:
    outcome = mutate(review_of(pod_request(make_pod(), namespace="kube-system")), CONFIG)
    assert response_of(outcome.body) == {"uid": "abc-123", "allowed": True}
    assert outcome.reason == "excluded-namespace"


def test_an_update_of_a_pod_is_not_patched() -> None:
    outcome = mutate(review_of(pod_request(make_pod(), operation="UPDATE", oldObject=make_pod())), CONFIG)
    assert "patch" not in response_of(outcome.body)


def test_resource_override_warnings_reach_the_response() -> None:
    pod = make_pod()
    pod["metadata"]["annotations"] = {"tidescale.io/agent-memory-limit": "64Gi"}
    response = response_of(mutate(review_of(pod_request(pod)), CONFIG).body)
    assert any("tidescale.io/agent-memory-limit" in w for w in response["warnings"])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (orjson.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}), "apiVersion"),
        (orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}), "no request"),
        (review_of({"kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE"}), "uid"),
        (review_of({"uid": "u", "operation": "CREATE"}), "request.kind"),
        (review_of({"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"}}), "operation"),
        (
            review_of(
                {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE"}
            ),
            "object",
        ),
        (b" " * (9 * 2**20), "exceeds"),
        (b"[" + b"[]," * 400_000 + b"[]]", "JSON objects and arrays exceed"),
    ],
)
def test_a_malformed_review_gets_a_400_naming_the_problem(body: bytes, fragment: str) -> None:
    for handler in (lambda b: mutate(b, CONFIG), lambda b: validate(b, CONFIG)):
        outcome = handler(body)
        assert outcome.status == 400
        assert outcome.result == "rejected"
        assert fragment in outcome.body.decode()


def test_a_deployment_without_tidescale_annotations_passes_untouched() -> None:
    obj = deployment({"owner": "team-a"}, labelled=False)
    outcome = validate(review_of(deployment_request(obj)), STRICT)
    assert response_of(outcome.body) == {"uid": "dep-1", "allowed": True}


def test_only_agent_written_annotations_count_as_no_hints() -> None:
    obj = deployment({"tidescale.io/status": "{}", "tidescale.io/park-record": "x"}, labelled=False)
    assert response_of(validate(review_of(deployment_request(obj)), STRICT).body) == {
        "uid": "dep-1",
        "allowed": True,
    }


def test_good_hints_are_allowed_without_warnings() -> None:
    outcome = validate(review_of(deployment_request(deployment(GOOD_HINTS))), STRICT)
    assert response_of(outcome.body) == {"uid": "dep-1", "allowed": True}


def test_bad_hints_become_one_warning_each_naming_the_annotation() -> None:
    outcome = validate(review_of(deployment_request(deployment(BAD_HINTS))), CONFIG)
    response = response_of(outcome.body)
    assert response["allowed"] is True
    assert outcome.result == "warned"
    assert len(response["warnings"]) == 2
    assert any(
        w.startswith("tidescale.io/max-replica ") and "did you mean" in w for w in response["warnings"]
    )
    assert any(w.startswith("tidescale.io/min-replicas ") for w in response["warnings"])


def test_strict_mode_denies_bad_hints_with_every_problem_in_the_message() -> None:
    outcome = validate(review_of(deployment_request(deployment(BAD_HINTS))), STRICT)
    response = response_of(outcome.body)
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert "tidescale.io/max-replica " in response["status"]["message"]
    assert "tidescale.io/min-replicas " in response["status"]["message"]
    assert outcome.result == "denied"


def test_strict_mode_does_not_block_an_update_that_leaves_bad_hints_unchanged() -> None:
    old = deployment(BAD_HINTS)
    new = deployment({**BAD_HINTS, "tidescale.io/status": "{leader: a}"})
    response = response_of(validate(review_of(deployment_request(new, "UPDATE", old)), STRICT).body)
    assert response["allowed"] is True
    assert len(response["warnings"]) == 2


def test_strict_mode_denies_an_update_that_changes_hints_to_bad_ones() -> None:
    old = deployment(GOOD_HINTS)
    new = deployment(BAD_HINTS)
    response = response_of(validate(review_of(deployment_request(new, "UPDATE", old)), STRICT).body)
    assert response["allowed"] is False


def test_hints_without_the_pod_template_label_get_a_warning() -> None:
    response = response_of(
        validate(review_of(deployment_request(deployment(GOOD_HINTS, labelled=False))), STRICT).body
    )
    assert response["allowed"] is True
    assert any("tidescale.io/inject" in w for w in response["warnings"])


def test_a_validator_that_raises_lets_the_deployment_through_with_a_warning() -> None:
    def broken(annotations: Any) -> Any:
        raise RuntimeError("bug")

    outcome = validate(review_of(deployment_request(deployment(BAD_HINTS))), STRICT, broken)
    assert outcome.status == 200
    assert outcome.result == "error"
    assert response_of(outcome.body)["allowed"] is True


def test_annotations_that_are_not_strings_are_a_400() -> None:
    obj = deployment({})
    obj["metadata"]["annotations"] = {"tidescale.io/max-replicas": 5}
    assert validate(review_of(deployment_request(obj)), CONFIG).status == 400


def test_a_pod_sent_to_validate_is_allowed_unchanged() -> None:
    outcome = validate(review_of(pod_request(make_pod())), CONFIG)
    assert response_of(outcome.body) == {"uid": "abc-123", "allowed": True}


def test_a_nested_empty_container_bomb_is_refused_before_it_is_parsed() -> None:
    """8 MiB of "[]," would parse into ~200 MiB of Python lists: refused from a byte count."""
    import resource

    body = b"[" + b"[]," * (MAX_REVIEW_BYTES // 3 - 1) + b"[]]"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome = mutate(body, CONFIG)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert outcome.status == 400
    assert grown_kib < 64 * 1024  # the parse (~200 MiB) never happened


def test_a_review_as_large_as_the_api_server_sends_still_parses() -> None:
    pod = make_pod()
    # ~3 MiB with one JSON object per ~45 bytes, a dense real shape (a long env list).
    pod["spec"]["containers"][0]["env"] = [{"name": f"VAR_{i}", "value": f"v{i:020d}"} for i in range(60_000)]
    body = orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": "shop",
                "object": pod,
            },
        }
    )
    assert 2 * 2**20 < len(body) < 4 * 2**20
    assert mutate(body, CONFIG).result == "injected"
