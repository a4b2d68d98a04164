"""Every call of the agent's thin client against the rig's API server, as a ServiceAccount bound
to exactly the Role in deploy/agent-rbac.yaml: the calls work, and anything else is Forbidden."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml

from tests.rig.controlplane import ControlPlane
from tidescale.errors import KubeConflict, KubeForbidden, KubeNotFound
from tidescale.kube import KubeClient, KubeConfig, ObjectReference
from tidescale.rbac import REQUIRED, missing_permissions

pytestmark = pytest.mark.rig

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "agent-rbac.yaml"
NAMESPACE = "kube-client"


def agent_kubeconfig(control_plane: ControlPlane, namespace: str, account: str, *, bind: bool = True) -> Path:
    """A kubeconfig for ServiceAccount ``namespace/account``, bound to the agent Role when ``bind``."""
    kubeconfig = control_plane.service_account_kubeconfig(namespace, account)
    if bind:
        documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
        for document in documents:
            document["metadata"]["namespace"] = namespace
            if document["kind"] == "RoleBinding":
                document["metadata"]["name"] = f"tidescale-agent-{account}"
                document["subjects"] = [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
        control_plane.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in documents))
    return kubeconfig


def _apply(control_plane: ControlPlane, manifest: dict[str, Any]) -> None:
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def _deployment(name: str, namespace: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "example.invalid/none:1"}]},
            },
        },
    }


def _pod(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "example.invalid/none:1"}]},
    }


@pytest_asyncio.fixture(loop_scope="session")
async def client(control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    config = KubeConfig.from_kubeconfig(agent_kubeconfig(control_plane, NAMESPACE, "agent"))
    async with KubeClient(config) as kube:
        yield kube


async def _next_matching(events: AsyncIterator[tuple[str, Any]], kind: str, predicate: Any = None) -> Any:
    async with asyncio.timeout(20):
        async for event_kind, item in events:
            if event_kind == kind and (predicate is None or predicate(item)):
                return item
    raise AssertionError(f"the watch ended before a {kind} event")


async def test_lease_create_get_update_and_a_stale_update_conflicts(client: KubeClient) -> None:
    created = await client.create_lease(
        NAMESPACE, "crud", {"holderIdentity": "a", "leaseDurationSeconds": 15}
    )
    assert created["spec"]["holderIdentity"] == "a"
    fetched = await client.get_lease(NAMESPACE, "crud")
    stale = fetched["metadata"]["resourceVersion"]
    updated = await client.update_lease(
        NAMESPACE, "crud", {"holderIdentity": "b", "leaseDurationSeconds": 15}, resource_version=stale
    )
    assert updated["spec"]["holderIdentity"] == "b"
    with pytest.raises(KubeConflict):
        await client.update_lease(NAMESPACE, "crud", {"holderIdentity": "c"}, resource_version=stale)
    with pytest.raises(KubeConflict):
        await client.create_lease(NAMESPACE, "crud", {"holderIdentity": "d"})
    with pytest.raises(KubeNotFound):
        await client.get_lease(NAMESPACE, "no-such-lease")


async def test_lease_watch_reports_creation_changes_and_deletion(
    client: KubeClient, control_plane: ControlPlane
) -> None:
    async with contextlib.aclosing(client.watch_lease(NAMESPACE, "watched")) as events:
        creating = asyncio.create_task(client.create_lease(NAMESPACE, "watched", {"holderIdentity": "a"}))
        added = await _next_matching(events, "ADDED")
        await creating
        assert added["spec"]["holderIdentity"] == "a"
        await client.update_lease(
            NAMESPACE,
            "watched",
            {"holderIdentity": "b"},
            resource_version=added["metadata"]["resourceVersion"],
        )
        modified = await _next_matching(events, "MODIFIED")
        assert modified["spec"]["holderIdentity"] == "b"
        control_plane.kubectl("delete", "lease", "-n", NAMESPACE, "watched")
        deleted = await _next_matching(events, "DELETED")
        assert deleted["metadata"]["name"] == "watched"


def _compact_etcd(control_plane: ControlPlane) -> None:
    """Compacts etcd to its current revision, as the API server does every five minutes."""
    etcd = httpx.Client(base_url=f"http://127.0.0.1:{control_plane.etcd_client_port}", timeout=10.0)
    with etcd:
        key = base64.b64encode(b"/").decode()
        revision = int(etcd.post("/v3/kv/range", json={"key": key}).json()["header"]["revision"])
        etcd.post("/v3/kv/compaction", json={"revision": str(revision), "physical": True}).raise_for_status()


async def test_a_watch_told_410_gone_relists_and_carries_on(
    client: KubeClient, control_plane: ControlPlane
) -> None:
    # Events are the one resource the API server does not cache for watches, so a watch from
    # a compacted resourceVersion reaches etcd and gets the real 410. The watcher is generic:
    # the same code serves leases, deployments and pods. (The admin client reads events.)
    involved: ObjectReference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "namespace": NAMESPACE,
        "name": "gone",
    }
    await client.create_event(involved, reason="First", message="before", reporting_instance="pod-0")
    _compact_etcd(control_plane)
    path, params = f"/api/v1/namespaces/{NAMESPACE}/events", {"fieldSelector": "involvedObject.name=gone"}
    calls: list[str] = []
    async with KubeClient(KubeConfig.from_kubeconfig(control_plane.admin_kubeconfig)) as admin:

        async def initial() -> tuple[list[dict[str, Any]], str | None]:
            calls.append("initial")
            if len(calls) == 1:
                return [], "1"  # compacted away in etcd: 410 Gone
            return await admin._collection(path, params, "list events")

        events = admin._watch(path, params, what="watch events", initial=initial)
        async with contextlib.aclosing(events):
            assert (await _next_matching(events, "ADDED"))["reason"] == "First"
            assert calls == ["initial", "initial"]
            await client.create_event(involved, reason="Second", message="after", reporting_instance="pod-0")
            assert (await _next_matching(events, "ADDED"))["reason"] == "Second"


async def test_a_watch_stops_cleanly_when_its_task_is_cancelled(client: KubeClient) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(client.watch_pods(NAMESPACE, "app=nothing")) as events:
            started.set()
            async for _ in events:
                pass

    task = asyncio.create_task(consume())
    await started.wait()
    await asyncio.sleep(0.5)  # let the watch request reach the API server
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    # The connection pool is still usable afterwards.
    assert await client.list_pods(NAMESPACE, "app=nothing") == []


async def test_deployment_get_watch_and_annotation_patch(
    client: KubeClient, control_plane: ControlPlane
) -> None:
    _apply(control_plane, _deployment("annotated", NAMESPACE))
    deployment = await client.get_deployment(NAMESPACE, "annotated")
    assert deployment["spec"]["replicas"] == 1
    async with contextlib.aclosing(client.watch_deployment(NAMESPACE, "annotated")) as events:
        first = await _next_matching(events, "ADDED")
        assert first["metadata"]["name"] == "annotated"
        patched = await client.patch_deployment_annotations(
            NAMESPACE, "annotated", {"tidescale.io/status": "leader=pod-0"}
        )
        assert patched["metadata"]["annotations"]["tidescale.io/status"] == "leader=pod-0"
        seen = await _next_matching(
            events, "MODIFIED", lambda d: "tidescale.io/status" in d["metadata"].get("annotations", {})
        )
        assert seen["metadata"]["annotations"]["tidescale.io/status"] == "leader=pod-0"
    removed = await client.patch_deployment_annotations(NAMESPACE, "annotated", {"tidescale.io/status": None})
    assert "tidescale.io/status" not in removed["metadata"].get("annotations", {})


async def test_a_deployment_merge_patch_with_a_stale_resource_version_conflicts(
    client: KubeClient, control_plane: ControlPlane
) -> None:
    _apply(control_plane, _deployment("conditional", NAMESPACE))
    # The Deployment controller may write its status between our read and our patch: a
    # conditional writer reads again and retries, as the agent and the waker do.
    for _ in range(20):
        stale = (await client.get_deployment(NAMESPACE, "conditional"))["metadata"]["resourceVersion"]
        patch = {"metadata": {"resourceVersion": stale, "annotations": {"tidescale.io/park-request": "1"}}}
        try:
            patched = await client.patch_deployment(NAMESPACE, "conditional", patch)
            break
        except KubeConflict:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the Deployment never stood still long enough for a conditional patch")
    assert patched["metadata"]["annotations"]["tidescale.io/park-request"] == "1"
    with pytest.raises(KubeConflict):
        await client.patch_deployment(NAMESPACE, "conditional", patch)


async def test_scale_get_and_patch_with_a_resource_version_precondition(
    client: KubeClient, control_plane: ControlPlane
) -> None:
    _apply(control_plane, _deployment("scaled", NAMESPACE))
    # As with any conditional writer: the Deployment controller may write status between our
    # read and our write, so read again and retry (the agent decides again next tick).
    for _ in range(20):
        scale = await client.get_scale(NAMESPACE, "scaled")
        assert scale["spec"]["replicas"] == 1
        stale = scale["metadata"]["resourceVersion"]
        try:
            after = await client.patch_scale(NAMESPACE, "scaled", 3, resource_version=stale)
            break
        except KubeConflict:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the Deployment never stood still long enough for a conditional scale")
    assert after["spec"]["replicas"] == 3
    with pytest.raises(KubeConflict):
        await client.patch_scale(NAMESPACE, "scaled", 5, resource_version=stale)
    assert (await client.get_scale(NAMESPACE, "scaled"))["spec"]["replicas"] == 3
    unconditional = await client.patch_scale(NAMESPACE, "scaled", 2)
    assert unconditional["spec"]["replicas"] == 2


async def test_pods_list_and_watch_by_label_selector(client: KubeClient, control_plane: ControlPlane) -> None:
    _apply(control_plane, _pod("peer-0", NAMESPACE, {"peers": "yes"}))
    _apply(control_plane, _pod("stranger", NAMESPACE, {"peers": "no"}))
    listed = await client.list_pods(NAMESPACE, "peers=yes")
    assert [p["metadata"]["name"] for p in listed] == ["peer-0"]
    async with contextlib.aclosing(client.watch_pods(NAMESPACE, "peers=yes")) as events:
        listed_first = await _next_matching(events, "ADDED")
        assert listed_first["metadata"]["name"] == "peer-0"
        # The watch keeps only metadata for itself; what it hands out is the whole object.
        assert listed_first["spec"]["containers"][0]["name"] == "main"
        _apply(control_plane, _pod("peer-1", NAMESPACE, {"peers": "yes"}))
        added = await _next_matching(events, "ADDED")
        assert added["metadata"]["name"] == "peer-1"
        assert added["spec"]["containers"][0]["image"] == "example.invalid/none:1"
        control_plane.kubectl(
            "delete", "pod", "-n", NAMESPACE, "peer-0", "--wait=false", "--grace-period=0", "--force"
        )
        assert (await _next_matching(events, "DELETED"))["metadata"]["name"] == "peer-0"


async def test_an_event_on_the_deployment_shows_in_the_api(
    client: KubeClient, control_plane: ControlPlane
) -> None:
    _apply(control_plane, _deployment("eventful", NAMESPACE))
    deployment = await client.get_deployment(NAMESPACE, "eventful")
    involved: ObjectReference = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "namespace": NAMESPACE,
        "name": "eventful",
        "uid": deployment["metadata"]["uid"],
    }
    created = await client.create_event(
        involved, reason="Scaled", message="1 -> 3: lag 300 over target 100", reporting_instance="pod-0"
    )
    assert created["reason"] == "Scaled"
    shown = control_plane.kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector", "involvedObject.name=eventful", "-o", "json"
    )
    (event,) = [e for e in json.loads(shown.stdout)["items"] if e["reason"] == "Scaled"]
    assert event["message"] == "1 -> 3: lag 300 over target 100"
    assert event["source"]["component"] == "tidescale-agent"
    assert event["reportingComponent"] == "tidescale-agent"
    assert event["reportingInstance"] == "pod-0"


async def test_calls_outside_the_role_are_forbidden_naming_verb_and_resource(
    client: KubeClient, control_plane: ControlPlane
) -> None:
    control_plane.kubectl("create", "namespace", "kube-client-elsewhere", check=False)
    with pytest.raises(KubeForbidden) as caught:
        await client.get_lease("kube-client-elsewhere", "anything")
    assert caught.value.code == 403
    assert 'cannot get resource "leases"' in str(caught.value)
    assert "system:serviceaccount:kube-client:agent" in str(caught.value)
    with pytest.raises(KubeForbidden, match='cannot list resource "leases"'):
        await client._request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases", what="list"
        )


async def test_the_service_account_knows_who_it_is_and_holds_every_required_permission(
    client: KubeClient,
) -> None:
    assert await client.who_am_i() == "system:serviceaccount:kube-client:agent"
    assert await missing_permissions(client, NAMESPACE) == ()


async def test_a_service_account_without_the_role_misses_every_permission(
    control_plane: ControlPlane,
) -> None:
    kubeconfig = agent_kubeconfig(control_plane, NAMESPACE, "unbound", bind=False)
    async with KubeClient(KubeConfig.from_kubeconfig(kubeconfig)) as unbound:
        assert await missing_permissions(unbound, NAMESPACE) == REQUIRED
        review = await unbound.review_access(
            namespace=NAMESPACE, verb="update", group="coordination.k8s.io", resource="leases"
        )
        assert not review.allowed
