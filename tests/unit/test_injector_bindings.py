"""The missing-binding warning: asked once per ServiceAccount, never slow, never failing the webhook."""

from __future__ import annotations

import asyncio

import orjson

from tidescale_injector import review
from tidescale_injector.bindings import BindingCheck
from tidescale_injector.config import InjectorConfig


class Reviewer:
    def __init__(self, allowed: bool = False, *, hang: bool = False, fail: bool = False) -> None:
        self.allowed, self.hang, self.fail = allowed, hang, fail
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, namespace: str, service_account: str) -> bool:
        self.asked.append((namespace, service_account))
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail:
            raise RuntimeError("403 forbidden")
        return self.allowed


async def test_a_missing_binding_gives_the_exact_command_and_is_asked_once_per_account() -> None:
    reviewer, now = Reviewer(allowed=False), [0.0]
    check = BindingCheck(reviewer, cluster_role="ts-agent", clock=lambda: now[0])
    first = await check.warning("shop", "worker")
    assert first is not None
    command = "kubectl create rolebinding tidescale-agent --clusterrole=ts-agent --serviceaccount=shop:worker"
    assert f"{command} -n shop" in first
    assert await check.warning("shop", "worker") == first
    assert reviewer.asked == [("shop", "worker")]
    now[0] = 11.0  # a missing binding is asked again soon: the apply after the fix is quiet
    reviewer.allowed = True
    assert await check.warning("shop", "worker") is None
    assert len(reviewer.asked) == 2


async def test_a_slow_or_refusing_api_server_means_no_warning_and_no_error() -> None:
    slow = BindingCheck(Reviewer(hang=True), cluster_role="r", timeout=0.01)
    refusing = BindingCheck(Reviewer(fail=True), cluster_role="r")
    assert await slow.warning("shop", "default") is None
    assert await refusing.warning("shop", "default") is None


def _review(annotations: dict[str, str], *, account: str | None = None, kind: str = "Deployment") -> bytes:
    template: dict[str, object] = {"containers": [{"name": "c", "image": "i"}]}
    if account:
        template["serviceAccountName"] = account
    obj = {
        "metadata": {"name": "w", "namespace": "shop", "annotations": annotations},
        "spec": {"template": {"metadata": {"labels": {"tidescale.io/inject": "true"}}, "spec": template}},
    }
    request = {
        "uid": "u",
        "kind": {"group": "apps", "version": "v1", "kind": kind},
        "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "namespace": "shop",
        "operation": "CREATE",
        "object": obj,
    }
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})


def test_the_identity_checked_is_the_pod_templates_account_and_only_for_hinted_deployments() -> None:
    hints = {"tidescale.io/kafka.topic": "t"}
    assert review.agent_identity(_review(hints)) == ("shop", "default")
    assert review.agent_identity(_review(hints, account="worker")) == ("shop", "worker")
    assert review.agent_identity(_review({})) is None
    assert review.agent_identity(_review(hints, kind="StatefulSet")) is None
    assert review.agent_identity(b"not json") is None


def test_the_extra_warning_is_added_to_a_hinted_deployments_answer_only() -> None:
    config = InjectorConfig(image="tidescale:test")
    hinted = review.validate(_review({"tidescale.io/max-replicas": "3"}), config, extra_warnings=["bind it"])
    plain = review.validate(_review({}), config, extra_warnings=["bind it"])
    assert "bind it" in orjson.loads(hinted.body)["response"]["warnings"]
    assert "bind it" not in str(orjson.loads(plain.body)["response"].get("warnings"))
