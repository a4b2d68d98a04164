"""The agent's thin client for the Kubernetes API: the dozen calls it makes, nothing else.

The agent runs beside every pod, so its memory is paid for once per replica. The
generated ``kubernetes_asyncio`` client costs ~72 MiB of RSS on import; this module
is a small HTTP/1.1 client on asyncio streams (:mod:`tidescale._http1`: httpx in use would add
~8 MiB per pod) + orjson and typed dictionaries holding only the fields tidescale reads.

Configuration comes from the pod (``KubeConfig.in_cluster``: service host/port, the
projected token, re-read when the kubelet rotates it, the CA and the namespace) or from
a kubeconfig for local runs and tests (``KubeConfig.from_kubeconfig``; PyYAML is
imported only on that path).

Every failure leaves as a :class:`tidescale.errors.KubeError` subclass built from
the API server's ``Status`` body; transport failures become ``KubeUnavailable``.

Watches are async iterators of ``(type, object)`` with ``type`` one of ``ADDED``,
``MODIFIED``, ``DELETED``. They follow bookmarks, re-read the state after ``410
Gone`` (reporting what changed meanwhile as ordinary events), reconnect with backoff
while the API server is unavailable and end when the task iterating them is
cancelled. Iterate them inside ``contextlib.aclosing`` when breaking out early.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, TypeVar, cast

import orjson

from tidescale._http1 import HttpClient, HttpError
from tidescale.errors import KubeError, KubeNotFound, KubeUnauthorized, KubeUnavailable

__all__ = [
    "AGENT_COMPONENT",
    "SERVICE_ACCOUNT_DIR",
    "WAKER_COMPONENT",
    "AccessReview",
    "Deployment",
    "Event",
    "EventType",
    "KubeClient",
    "KubeConfig",
    "Lease",
    "LeaseSpec",
    "ObjectMeta",
    "ObjectReference",
    "Pod",
    "Scale",
    "WatchEvent",
    "format_micro_time",
    "parse_time",
]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
AGENT_COMPONENT = "tidescale-agent"
WAKER_COMPONENT = "tidescale-waker"

# --- raw payloads: only the fields tidescale reads or writes --------------------------------


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    resourceVersion: str
    generation: int
    labels: dict[str, str]
    annotations: dict[str, str]
    creationTimestamp: str
    deletionTimestamp: str


class LeaseSpec(TypedDict, total=False):
    holderIdentity: str | None
    leaseDurationSeconds: int | None
    acquireTime: str | None
    renewTime: str | None
    leaseTransitions: int | None


class Lease(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: LeaseSpec


class DeploymentSpec(TypedDict, total=False):
    replicas: int
    selector: dict[str, Any]


class DeploymentStatus(TypedDict, total=False):
    replicas: int
    readyReplicas: int
    availableReplicas: int
    observedGeneration: int


class Deployment(TypedDict, total=False):
    metadata: ObjectMeta
    spec: DeploymentSpec
    status: DeploymentStatus


class ScaleSpec(TypedDict, total=False):
    replicas: int


class ScaleStatus(TypedDict, total=False):
    replicas: int
    selector: str


class Scale(TypedDict, total=False):
    metadata: ObjectMeta
    spec: ScaleSpec
    status: ScaleStatus


class PodStatus(TypedDict, total=False):
    phase: str
    podIP: str
    conditions: list[dict[str, Any]]


class Pod(TypedDict, total=False):
    metadata: ObjectMeta
    status: PodStatus


class ObjectReference(TypedDict):
    """The object an Event is about. Give the uid: ``kubectl describe`` matches events by it."""

    apiVersion: str
    kind: str
    namespace: str
    name: str
    uid: NotRequired[str]
    resourceVersion: NotRequired[str]


class Event(TypedDict, total=False):
    metadata: ObjectMeta
    involvedObject: ObjectReference
    reason: str
    message: str
    type: str
    count: int
    source: dict[str, str]
    reportingComponent: str
    reportingInstance: str
    firstTimestamp: str
    lastTimestamp: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AccessReview:
    """The API server's answer to "may I?" for one verb on one resource."""

    allowed: bool
    reason: str


EventType = Literal["ADDED", "MODIFIED", "DELETED"]
_T = TypeVar("_T")
WatchEvent = tuple[EventType, _T]
"""One watch notification: what happened and the object as it is now (or was, when deleted)."""

# --- times -----------------------------------------------------------------------------------


def format_micro_time(moment: datetime) -> str:
    """``moment`` as a Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """A Kubernetes Time or MicroTime as an aware UTC datetime (``None`` stays ``None``)."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError as exc:
        raise KubeError(f"the API server sent a time that is not RFC 3339: {text!r}") from exc


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class KubeConfig:
    """Where the API server is and how to prove who we are."""

    server: str
    namespace: str = "default"
    ca_file: Path | None = None
    ca_data: str | None = None
    insecure_skip_tls_verify: bool = False
    token: str | None = None
    token_file: Path | None = None
    """Read again whenever it changes on disk: kubelet rotates projected tokens."""
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    client_cert_data: bytes | None = None
    client_key_data: bytes | None = None

    @classmethod
    def in_cluster(
        cls, *, environ: Mapping[str, str] | None = None, account_dir: Path = SERVICE_ACCOUNT_DIR
    ) -> KubeConfig:
        """The pod's own service account, as every in-cluster client finds it."""
        env = os.environ if environ is None else environ
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise KubeError("not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset")
        token_file = account_dir / "token"
        if not token_file.is_file():
            raise KubeError(f"not in a cluster: the service account token {token_file} is missing")
        namespace_file = account_dir / "namespace"
        namespace = namespace_file.read_text().strip() if namespace_file.is_file() else "default"
        bracketed = f"[{host}]" if ":" in host else host
        return cls(
            server=f"https://{bracketed}:{port}",
            namespace=namespace,
            ca_file=account_dir / "ca.crt",
            token_file=token_file,
        )

    @classmethod
    def from_kubeconfig(cls, path: Path, *, context: str | None = None) -> KubeConfig:
        """The chosen (or current) context of a kubeconfig file."""
        import base64

        import yaml  # only local runs and tests read kubeconfigs: keep it out of the pod

        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise KubeError(f"kubeconfig {path} cannot be read: {exc}") from exc
        if not isinstance(document, dict):
            raise KubeError(f"kubeconfig {path} is not a mapping")

        def named(section: str, name: str) -> dict[str, Any]:
            for entry in document.get(section) or []:
                if isinstance(entry, dict) and entry.get("name") == name:
                    return cast(dict[str, Any], entry)
            raise KubeError(f"kubeconfig {path}: no entry {name!r} under {section}")

        context_name = context or document.get("current-context")
        if not context_name:
            raise KubeError(f"kubeconfig {path} has no current-context and none was given")
        ctx = named("contexts", str(context_name)).get("context") or {}
        cluster = named("clusters", str(ctx.get("cluster"))).get("cluster") or {}
        user = named("users", str(ctx.get("user"))).get("user") or {}
        base = path.parent

        def file_of(value: object) -> Path | None:
            return None if not value else (base / str(value))

        def data_of(value: object) -> bytes | None:
            return None if not value else base64.b64decode(str(value))

        if "server" not in cluster:
            raise KubeError(f"kubeconfig {path}: cluster of context {context_name!r} has no server")
        ca_bytes = data_of(cluster.get("certificate-authority-data"))
        return cls(
            server=str(cluster["server"]).rstrip("/"),
            namespace=str(ctx.get("namespace") or "default"),
            ca_file=file_of(cluster.get("certificate-authority")),
            ca_data=ca_bytes.decode() if ca_bytes else None,
            insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
            token=str(user["token"]) if user.get("token") else None,
            token_file=file_of(user.get("tokenFile")),
            client_cert_file=file_of(user.get("client-certificate")),
            client_key_file=file_of(user.get("client-key")),
            client_cert_data=data_of(user.get("client-certificate-data")),
            client_key_data=data_of(user.get("client-key-data")),
        )

    @classmethod
    def from_environment(cls) -> KubeConfig:
        """In a pod: the service account. Elsewhere: ``$KUBECONFIG`` or ``~/.kube/config``."""
        if os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT_DIR / "token").is_file():
            return cls.in_cluster()
        first = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        return cls.from_kubeconfig(Path(first) if first else Path.home() / ".kube" / "config")

    def ssl_context(self) -> ssl.SSLContext:
        if self.insecure_skip_tls_verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            try:
                context = ssl.create_default_context(
                    cafile=str(self.ca_file) if self.ca_file else None, cadata=self.ca_data
                )
            except (OSError, ssl.SSLError) as exc:
                raise KubeError(f"the API server's CA cannot be loaded: {exc}") from exc
        try:
            if self.client_cert_file is not None:
                key = self.client_key_file or self.client_cert_file
                context.load_cert_chain(str(self.client_cert_file), str(key))
            elif self.client_cert_data is not None:
                # ssl loads chains only from files: write them to a private folder for the call.
                with tempfile.TemporaryDirectory(prefix="tidescale-") as folder:
                    cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
                    cert.write_bytes(self.client_cert_data)
                    key.write_bytes(self.client_key_data or self.client_cert_data)
                    context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise KubeError(f"the client certificate cannot be loaded: {exc}") from exc
        return context


class _BearerToken:
    """A bearer token, from the config or from a file read again whenever it changes."""

    def __init__(self, *, token: str | None, token_file: Path | None) -> None:
        self._token = token
        self._file = token_file
        self._stamp: tuple[int, int] | None = None

    def current(self, *, force: bool = False) -> str | None:
        """The token to send; ``force`` reads the file again even when it looks unchanged."""
        if self._file is None:
            return self._token
        try:
            stat = self._file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if force or stamp != self._stamp:
                self._token = self._file.read_text().strip()
                self._stamp = stamp
        except OSError:
            pass  # keep the last token: the kubelet swaps the file atomically, a miss is transient
        return self._token

    def fresher_than(self, token: str | None) -> str | None:
        """After a 401 answered to ``token``: the token file's new token, or None when there is none
        (then the 401 stands)."""
        if self._file is None:
            return None
        fresh = self.current(force=True)
        return fresh if fresh and fresh != token else None


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# --- the client ------------------------------------------------------------------------------

_LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
_DEPLOYMENTS = "/apis/apps/v1/namespaces/{ns}/deployments"
_PODS = "/api/v1/namespaces/{ns}/pods"
_EVENTS = "/api/v1/namespaces/{ns}/events"
_MERGE_PATCH = "application/merge-patch+json"

_WATCH_MIN_SECONDS = 300  # client-go's reflector picks 5-10 minutes so watches do not expire together
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 30.0


class KubeClient:
    """One connection pool to the API server and the calls the agent makes through it."""

    def __init__(self, config: KubeConfig, *, timeout: float = 10.0, max_requests: int = 16) -> None:
        self.config = config
        self._timeout = timeout
        self._auth = _BearerToken(token=config.token, token_file=config.token_file)
        try:
            self._http = HttpClient(
                config.server,
                ssl_context=config.ssl_context() if config.server.startswith("https:") else None,
                headers={"Accept": "application/json", "User-Agent": AGENT_COMPONENT},
                max_requests=max_requests,
            )
        except ValueError as exc:
            raise KubeError(f"the API server's address {config.server!r} is not an http(s) URL") from exc

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # -- plumbing --

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Content-Type": content_type} if body is not None else {}
        content = None if body is None else orjson.dumps(body)
        token = self._auth.current()
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._http.request(
                    method, path, params=params, body=content, headers={**headers, **_bearer(token)}
                )
                fresh = self._auth.fresher_than(token) if response.status == 401 else None
                if fresh is not None:  # the kubelet rotated the token: once more with the new one
                    response = await self._http.request(
                        method, path, params=params, body=content, headers={**headers, **_bearer(fresh)}
                    )
        except TimeoutError as exc:
            raise KubeUnavailable(f"{what}: no answer from {self.config.server} in time") from exc
        except HttpError as exc:
            raise KubeUnavailable(f"{what}: {self.config.server} unreachable: {exc}") from exc
        if response.status >= 300:
            raise _error_of(response.status, response.content, what)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise KubeUnavailable(f"{what}: the API server answered with something not JSON") from exc

    async def _stream(
        self, path: str, params: Mapping[str, str], *, what: str, read_timeout: float
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout(self._timeout):
                    response = await stack.enter_async_context(
                        self._http.stream("GET", path, params=params, headers=_bearer(self._auth.current()))
                    )
                    if response.status >= 300:
                        raise _error_of(response.status, await response.read(), what)
                lines = await stack.enter_async_context(contextlib.aclosing(response.lines()))
                while True:
                    # Each read has its own deadline: a timeout around the yield would fire in the
                    # consumer's code.
                    try:
                        async with asyncio.timeout(read_timeout):
                            line = await anext(lines)
                    except StopAsyncIteration:
                        return
                    if line.strip():
                        event = orjson.loads(line)
                        yield str(event.get("type")), event.get("object") or {}
        except TimeoutError as exc:
            raise KubeUnavailable(f"{what}: watch connection lost: no data in time") from exc
        except HttpError as exc:
            raise KubeUnavailable(f"{what}: watch connection lost: {exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise KubeUnavailable(f"{what}: the watch stream carried something not JSON") from exc

    async def _watch(
        self,
        path: str,
        params: Mapping[str, str],
        *,
        what: str,
        initial: Callable[[], Awaitable[tuple[list[dict[str, Any]], str | None]]],
    ) -> AsyncGenerator[tuple[EventType, Any], None]:
        known: dict[str, dict[str, Any]] = {}
        resource_version: str | None = None
        delay = _BACKOFF_FIRST
        while True:
            try:
                if resource_version is None:
                    items, resource_version = await initial()
                    listed = {_name(item): item for item in items}
                    for name, item in listed.items():
                        before = known.get(name)
                        if before is None:
                            yield "ADDED", item
                        elif _rv(before) != _rv(item):
                            yield "MODIFIED", item
                    for name in known.keys() - listed.keys():
                        yield "DELETED", known[name]
                    known = {name: _slim(item) for name, item in listed.items()}
                seconds = random.randint(_WATCH_MIN_SECONDS, 2 * _WATCH_MIN_SECONDS)  # noqa: S311
                query = {**params, "watch": "true", "timeoutSeconds": str(seconds)}
                if resource_version:
                    query["resourceVersion"] = resource_version
                    # Only with a resourceVersion: asked for bookmarks without one, the API server
                    # (1.37) sends its initial-events-end bookmark and then nothing at all.
                    query["allowWatchBookmarks"] = "true"
                gone = False
                async for kind, item in self._stream(path, query, what=what, read_timeout=seconds + 30.0):
                    delay = _BACKOFF_FIRST
                    if kind == "BOOKMARK":
                        resource_version = _rv(item) or resource_version
                        continue
                    if kind == "ERROR":
                        code = int(item.get("code") or 500)
                        if code == 410:
                            gone = True
                            break
                        raise KubeError.from_status(code, item, what=what)
                    if kind not in ("ADDED", "MODIFIED", "DELETED"):
                        continue
                    resource_version = _rv(item) or resource_version
                    name = _name(item)
                    before = known.get(name)
                    if kind == "DELETED":
                        known.pop(name, None)
                    elif before is not None and kind == "ADDED" and _rv(before) == _rv(item):
                        continue  # a watch without resourceVersion replays what we already reported
                    else:
                        known[name] = _slim(item)
                    yield cast(EventType, kind), item
                if gone:
                    resource_version = None
            except KubeError as exc:
                if exc.code == 410:
                    resource_version = None
                    continue
                if not isinstance(exc, KubeUnavailable | KubeUnauthorized):
                    raise
                # The API server is away or restarting (or our token is being rotated): keep trying.
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311
                delay = min(delay * 2, _BACKOFF_MAX)

    async def _single(self, path: str, name: str, what: str) -> tuple[list[dict[str, Any]], str | None]:
        """Initial state of a one-object watch, needing only ``get`` (no ``list``) permission."""
        try:
            item = await self._request("GET", f"{path}/{name}", what=what)
        except KubeNotFound:
            return [], None  # the watch then starts at "now" and reports the object if it appears
        return [item], _rv(item)

    async def _collection(
        self, path: str, params: Mapping[str, str], what: str
    ) -> tuple[list[dict[str, Any]], str | None]:
        listing = await self._request("GET", path, params=params, what=what)
        return list(listing.get("items") or []), str(listing.get("metadata", {}).get("resourceVersion") or "")

    # -- leases --

    async def get_lease(self, namespace: str, name: str) -> Lease:
        path = _LEASES.format(ns=namespace)
        return cast(Lease, await self._request("GET", f"{path}/{name}", what=f"get lease {namespace}/{name}"))

    async def create_lease(self, namespace: str, name: str, spec: LeaseSpec) -> Lease:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        what = f"create lease {namespace}/{name}"
        return cast(Lease, await self._request("POST", _LEASES.format(ns=namespace), what=what, body=body))

    async def update_lease(
        self,
        namespace: str,
        name: str,
        spec: LeaseSpec,
        *,
        resource_version: str,
    ) -> Lease:
        """Replace the Lease's spec if it is still at ``resource_version`` (else ``KubeConflict``)."""
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": resource_version},
            "spec": spec,
        }
        path = f"{_LEASES.format(ns=namespace)}/{name}"
        what = f"update lease {namespace}/{name}"
        return cast(Lease, await self._request("PUT", path, what=what, body=body))

    def watch_lease(self, namespace: str, name: str) -> AsyncGenerator[WatchEvent[Lease], None]:
        path, what = _LEASES.format(ns=namespace), f"watch lease {namespace}/{name}"
        return self._watch(
            path,
            {"fieldSelector": f"metadata.name={name}"},
            what=what,
            initial=lambda: self._single(path, name, what),
        )

    # -- deployments --

    async def get_deployment(self, namespace: str, name: str) -> Deployment:
        path = f"{_DEPLOYMENTS.format(ns=namespace)}/{name}"
        return cast(Deployment, await self._request("GET", path, what=f"get deployment {namespace}/{name}"))

    def watch_deployment(self, namespace: str, name: str) -> AsyncGenerator[WatchEvent[Deployment], None]:
        path, what = _DEPLOYMENTS.format(ns=namespace), f"watch deployment {namespace}/{name}"
        return self._watch(
            path,
            {"fieldSelector": f"metadata.name={name}"},
            what=what,
            initial=lambda: self._single(path, name, what),
        )

    async def patch_deployment_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> Deployment:
        """Set (or, with ``None``, remove) annotations; other annotations stay as they are."""
        path = f"{_DEPLOYMENTS.format(ns=namespace)}/{name}"
        result = await self._patch_annotations(path, annotations, what=f"deployment {namespace}/{name}")
        return cast(Deployment, result)

    async def _patch_annotations(self, path: str, annotations: Mapping[str, str | None], *, what: str) -> Any:
        """A JSON merge patch of ``metadata.annotations`` and nothing else."""
        body = {"metadata": {"annotations": dict(annotations)}}
        return await self._request(
            "PATCH", path, what=f"patch annotations of {what}", body=body, content_type=_MERGE_PATCH
        )

    async def patch_deployment(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Deployment:
        """A JSON merge patch of the Deployment; a ``metadata.resourceVersion`` in it makes the
        write conditional (409 ``KubeConflict`` if the Deployment changed since)."""
        path = f"{_DEPLOYMENTS.format(ns=namespace)}/{name}"
        what = f"patch deployment {namespace}/{name}"
        result = await self._request("PATCH", path, what=what, body=dict(patch), content_type=_MERGE_PATCH)
        return cast(Deployment, result)

    async def get_scale(self, namespace: str, name: str) -> Scale:
        path = f"{_DEPLOYMENTS.format(ns=namespace)}/{name}/scale"
        return cast(
            Scale, await self._request("GET", path, what=f"get scale of deployment {namespace}/{name}")
        )

    async def patch_scale(
        self,
        namespace: str,
        name: str,
        replicas: int,
        *,
        resource_version: str | None = None,
    ) -> Scale:
        """Set spec.replicas; with ``resource_version`` only if the Deployment has not changed since."""
        metadata = {} if resource_version is None else {"metadata": {"resourceVersion": resource_version}}
        body = {**metadata, "spec": {"replicas": replicas}}
        path = f"{_DEPLOYMENTS.format(ns=namespace)}/{name}/scale"
        what = f"scale deployment {namespace}/{name} to {replicas}"
        result = await self._request("PATCH", path, what=what, body=body, content_type=_MERGE_PATCH)
        return cast(Scale, result)

    # -- pods --

    async def list_pods(self, namespace: str, label_selector: str) -> list[Pod]:
        path, params = _PODS.format(ns=namespace), {"labelSelector": label_selector}
        items, _ = await self._collection(path, params, f"list pods {label_selector!r} in {namespace}")
        return cast(list[Pod], items)

    async def patch_pod_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> Pod:
        """Set (or, with ``None``, remove) annotations of one pod; a JSON merge patch of nothing else."""
        path = f"{_PODS.format(ns=namespace)}/{name}"
        return cast(Pod, await self._patch_annotations(path, annotations, what=f"pod {namespace}/{name}"))

    def watch_pods(self, namespace: str, label_selector: str) -> AsyncGenerator[WatchEvent[Pod], None]:
        path, params = _PODS.format(ns=namespace), {"labelSelector": label_selector}
        what = f"watch pods {label_selector!r} in {namespace}"
        return self._watch(path, params, what=what, initial=lambda: self._collection(path, params, what))

    # -- events --

    async def create_event(
        self,
        involved: ObjectReference,
        *,
        reason: str,
        message: str,
        event_type: Literal["Normal", "Warning"] = "Normal",
        reporting_instance: str,
        component: str = AGENT_COMPONENT,
    ) -> Event:
        """A core/v1 Event on ``involved`` (shown by ``kubectl describe``), signed by ``component``."""
        now = datetime.now(UTC)
        stamp = _format_time(now)
        namespace = involved["namespace"]
        body: Event = {
            # client-go's naming: the object's name and a unique hex suffix.
            "metadata": {"name": f"{involved['name']}.{time.time_ns():x}", "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "count": 1,
            "source": {"component": component, "host": reporting_instance},
            "reportingComponent": component,
            "reportingInstance": reporting_instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
        }
        what = f"create event {reason} on {involved['kind']} {namespace}/{involved['name']}"
        return cast(Event, await self._request("POST", _EVENTS.format(ns=namespace), what=what, body=body))

    async def patch_event(self, namespace: str, name: str, *, count: int, last_timestamp: datetime) -> Event:
        """Count one more occurrence of an Event (the kubelet's aggregation: count and lastTimestamp)."""
        body = {"count": count, "lastTimestamp": _format_time(last_timestamp)}
        path = f"{_EVENTS.format(ns=namespace)}/{name}"
        what = f"update event {namespace}/{name}"
        result = await self._request("PATCH", path, what=what, body=body, content_type=_MERGE_PATCH)
        return cast(Event, result)

    # -- who am I, what may I do --

    async def review_access(
        self, *, namespace: str, verb: str, group: str, resource: str, subresource: str = ""
    ) -> AccessReview:
        """SelfSubjectAccessReview: may this client ``verb`` the resource in ``namespace``?"""
        attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": resource}
        if subresource:
            attributes["subresource"] = subresource
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        result = await self._request("POST", path, what=f"review access to {verb} {resource}", body=body)
        status = result.get("status") or {}
        return AccessReview(
            allowed=bool(status.get("allowed")),
            reason=str(status.get("reason") or status.get("evaluationError") or ""),
        )

    async def review_subject_access(
        self, *, service_account: str, namespace: str, verb: str, group: str, resource: str
    ) -> AccessReview:
        """SubjectAccessReview: may ServiceAccount ``namespace/service_account`` ``verb`` the resource
        in its namespace? (The injector asks it for the agent's binding; needs ``create
        subjectaccessreviews``.)"""
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{namespace}:{service_account}",
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{namespace}",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                },
            },
        }
        path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        result = await self._request("POST", path, what=f"review {service_account}'s access", body=body)
        status = result.get("status") or {}
        return AccessReview(
            allowed=bool(status.get("allowed")),
            reason=str(status.get("reason") or status.get("evaluationError") or ""),
        )

    async def server_version(self) -> dict[str, Any]:
        """The API server's ``GET /version`` (major, minor, gitVersion, ...); any user may read it."""
        result = await self._request("GET", "/version", what="read the API server version")
        return dict(result) if isinstance(result, dict) else {}

    async def who_am_i(self) -> str:
        """The user name the API server knows this client as (SelfSubjectReview)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        path = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
        result = await self._request("POST", path, what="self subject review", body=body)
        return str(((result.get("status") or {}).get("userInfo") or {}).get("username") or "")


def _slim(item: Mapping[str, Any]) -> dict[str, Any]:
    """What a watch remembers of an object: enough to notice changes and report deletions.
    Keeping whole objects (every peer Pod, in the leader) costs memory in every pod."""
    metadata = item.get("metadata") or {}
    keep = ("name", "namespace", "uid", "resourceVersion", "labels")
    return {"metadata": {key: metadata[key] for key in keep if key in metadata}}


def _rv(item: Mapping[str, Any]) -> str:
    return str((item.get("metadata") or {}).get("resourceVersion") or "")


def _name(item: Mapping[str, Any]) -> str:
    return str((item.get("metadata") or {}).get("name") or "")


def _error_of(code: int, content: bytes, what: str) -> KubeError:
    try:
        body = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or body.get("kind") != "Status":
        text = content[:200].decode(errors="replace").strip()
        body = {"message": f"HTTP {code}" + (f": {text}" if text else "")}
    return KubeError.from_status(code, body, what=what)
