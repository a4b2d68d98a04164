"""The CLI's way to the API server: kubernetes-asyncio's config loader, raw JSON reads.

The CLI runs on people's laptops with their kubeconfig: contexts, exec credential
plugins (EKS, GKE, AKS), OIDC, client certificates. kubernetes-asyncio's loader
handles all of them, so the CLI is built on it; the three in-cluster roles keep the
thin client in :mod:`tidescale.kube`. Objects are read as plain JSON (dicts), the
form the rest of tidescale parses (hints, park records, status annotations).

kubernetes-asyncio is imported inside :func:`connect` only: ``tidescale agent`` never
pays for it, and a missing install (``pip install tidescale`` without the ``cli``
extra) is one clear message.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tidescale.errors import KubeError, KubeNotFound, KubeUnavailable, TidescaleError

__all__ = ["Api", "add_kube_arguments", "connect"]


def add_kube_arguments(parser: argparse.ArgumentParser, *, all_namespaces: bool = False) -> None:
    """``--kubeconfig``, ``--context``, ``-n`` (and ``-A``), as kubectl spells them."""
    group = parser.add_argument_group("cluster (as kubectl)")
    group.add_argument(
        "--kubeconfig", help="path of the kubeconfig (default: $KUBECONFIG, else ~/.kube/config)"
    )
    group.add_argument("--context", help="the kubeconfig context to use (default: its current context)")
    group.add_argument("-n", "--namespace", help="the namespace (default: the context's, else default)")
    if all_namespaces:
        group.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    group.add_argument(
        "--request-timeout", type=float, default=10.0, metavar="SECONDS", help="per API request (default 10)"
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Target:
    """Where the CLI talks to, for the first line of a report."""

    server: str
    context: str | None
    namespace: str


class Api:
    """GETs (and one POST) against the API server, answering JSON dicts."""

    def __init__(self, client: Any, *, target: Target, timeout: float) -> None:
        self._client = client
        self.target = target
        self._timeout = timeout

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._client.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        what: str,
    ) -> Any:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            return await self._client.call_api(
                path,
                method,
                query_params=list((params or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=body,
                response_types_map={200: "object", 201: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=self._timeout,
            )
        except ApiException as exc:
            raise _translate(exc, what) from exc
        except TimeoutError as exc:
            raise KubeUnavailable(f"{what}: no answer from {self.target.server} in time") from exc
        except OSError as exc:
            raise KubeUnavailable(f"{what}: {self.target.server} unreachable: {exc}") from exc
        except Exception as exc:  # aiohttp's client errors: not worth importing aiohttp to name them
            if type(exc).__module__.startswith("aiohttp"):
                raise KubeUnavailable(f"{what}: {self.target.server} unreachable: {exc!r}") from exc
            raise

    async def create_dry_run(
        self, path: str, body: Mapping[str, Any], *, what: str
    ) -> tuple[dict[str, Any], list[str]]:
        """A server-side dry-run create (admission runs, nothing is stored): the object as the API
        server would store it, and the warnings it sent (webhooks' among them)."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            data, _, headers = await self._client.call_api(
                path,
                "POST",
                query_params=[("dryRun", "All")],
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=dict(body),
                response_types_map={200: "object", 201: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=False,
                _request_timeout=self._timeout,
            )
        except ApiException as exc:
            raise _translate(exc, what) from exc
        getall = getattr(headers, "getall", None)
        values = list(getall("Warning", [])) if callable(getall) else [str(headers.get("Warning") or "")]
        return (data if isinstance(data, dict) else {}), [_warning_text(v) for v in values if v]

    async def get(self, path: str, *, what: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        result = await self.request("GET", path, params=params, what=what)
        return result if isinstance(result, dict) else {}

    async def get_or_none(self, path: str, *, what: str) -> dict[str, Any] | None:
        try:
            return await self.get(path, what=what)
        except KubeNotFound:
            return None

    async def items(
        self, path: str, *, what: str, params: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        return list((await self.get(path, what=what, params=params)).get("items") or [])


def _kubeconfig_exists(given: str | None) -> bool:
    default = os.path.expanduser("~/.kube/config")
    return bool(given or os.environ.get("KUBECONFIG") or os.path.exists(default))


def _in_cluster_namespace() -> str:
    account = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(account, encoding="utf-8") as file:
            return file.read().strip() or "default"
    except OSError:
        return "default"


def _translate(exc: Any, what: str) -> KubeError:
    """kubernetes-asyncio's ApiException as our KubeError, from the API server's Status body."""
    status: Any = None
    try:
        status = orjson.loads(exc.body) if exc.body else None
    except (orjson.JSONDecodeError, TypeError):
        status = None
    if not isinstance(status, dict):
        status = {"message": f"HTTP {exc.status} {exc.reason}"}
    return KubeError.from_status(int(exc.status or 503), status, what=what)


def _warning_text(header: str) -> str:
    """``299 - "text"`` (RFC 7234 warn-code, agent, quoted text) -> ``text``."""
    match = re.fullmatch(r'\s*\d{3}\s+\S+\s+"(.*)"\s*', header)
    return match[1].replace('\\"', '"') if match else header


async def connect(args: argparse.Namespace) -> Api:
    """An :class:`Api` for the kubeconfig, context and namespace the arguments name.

    Outside a cluster: the kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``).
    Inside one with no kubeconfig: the pod's service account."""
    try:
        from kubernetes_asyncio import client, config
        from kubernetes_asyncio.config.config_exception import ConfigException
    except ImportError as exc:
        raise TidescaleError(
            "the tidescale CLI needs kubernetes-asyncio: pip install 'tidescale[cli]'"
        ) from exc
    configuration = client.Configuration()
    context_name: str | None = args.context
    namespace = "default"
    kubeconfig = args.kubeconfig or None
    has_file = _kubeconfig_exists(kubeconfig)
    try:
        if has_file or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            await config.load_kube_config(
                config_file=kubeconfig, context=context_name, client_configuration=configuration
            )
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
            chosen = (
                next((c for c in contexts if c.get("name") == context_name), None) if context_name else active
            )
            context_name = (chosen or {}).get("name")
            namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            namespace = _in_cluster_namespace()
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise TidescaleError(
            f"cannot load the kubeconfig {where}"
            + (f" (context {context_name!r})" if context_name else "")
            + f": {exc}; expected a kubeconfig such as kubectl uses (--kubeconfig, --context)"
        ) from exc
    api_client = client.ApiClient(configuration=configuration)
    target = Target(
        server=str(configuration.host),
        context=context_name,
        namespace=getattr(args, "namespace", None) or namespace,
    )
    return Api(api_client, target=target, timeout=float(getattr(args, "request_timeout", 10.0)))
