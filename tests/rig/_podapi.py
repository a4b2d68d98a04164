"""The pod runner's API calls: plain JSON dicts over kubernetes_asyncio's authenticated session.

Pod specs are read and written as the API server spells them (camelCase dicts): the
runner follows Kubernetes field names one to one, and typed models would only add a
translation step to every field it reads.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config

Json = dict[str, Any]


class ApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:500]}")
        self.status = status


class Api:
    def __init__(self, api_client: client.ApiClient) -> None:
        self._client = api_client

    @classmethod
    async def from_kubeconfig(cls, kubeconfig: Path) -> Api:
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        return cls(client.ApiClient(configuration))

    async def close(self) -> None:
        await self._client.close()

    async def _open(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        limit: float | aiohttp.ClientTimeout = 30.0,
    ) -> Any:
        return await self._client.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=limit,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Json:
        response = await self._open(method, path, query=query, body=body, content_type=content_type)
        async with response:
            text = await response.text()
            if not 200 <= response.status < 300:
                raise ApiError(method, path, response.status, text)
        result: Json = json.loads(text) if text else {}
        return result

    async def watch(self, path: str, *, query: dict[str, Any]) -> AsyncIterator[Json]:
        """Events of one watch request until the server ends it (the caller re-lists and re-watches)."""
        response = await self._open(
            "GET",
            path,
            query={**query, "watch": "true"},
            limit=aiohttp.ClientTimeout(sock_connect=10.0, sock_read=float(query["timeoutSeconds"]) + 30),
        )
        async with response:
            if response.status != 200:
                raise ApiError("WATCH", path, response.status, await response.text())
            async for line in response.content:
                if line.strip():
                    event: Json = json.loads(line)
                    yield event
