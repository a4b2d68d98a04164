"""The thin client's pure parts: configuration, times, the token, errors. The calls themselves
are tested against the rig's API server in tests/integration/test_kube_client.py."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tidescale.errors import KubeConflict, KubeError, KubeForbidden, KubeUnavailable
from tidescale.kube import (
    KubeClient,
    KubeConfig,
    _BearerToken,
    _error_of,
    format_micro_time,
    parse_time,
)


def _write_kubeconfig(path: Path, *, user: dict[str, str], namespace: str | None = None) -> Path:
    context: dict[str, str] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": "https://10.213.0.1:6443/", "certificate-authority": "ca.pem"},
            }
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [
            {"name": "ctx", "context": context},
            {"name": "other", "context": {"cluster": "c", "user": "x"}},
        ],
        "current-context": "ctx",
    }
    path.write_text(json.dumps(document))
    return path


def test_kubeconfig_token_user_gives_server_token_and_relative_ca(tmp_path: Path) -> None:
    config = KubeConfig.from_kubeconfig(
        _write_kubeconfig(tmp_path / "kc", user={"token": "abc"}, namespace="ns1")
    )
    assert config.server == "https://10.213.0.1:6443"
    assert config.token == "abc"
    assert config.ca_file == tmp_path / "ca.pem"
    assert config.namespace == "ns1"


def test_kubeconfig_certificate_data_is_decoded(tmp_path: Path) -> None:
    user = {
        "client-certificate-data": base64.b64encode(b"CERT").decode(),
        "client-key-data": base64.b64encode(b"KEY").decode(),
    }
    config = KubeConfig.from_kubeconfig(_write_kubeconfig(tmp_path / "kc", user=user))
    assert (config.client_cert_data, config.client_key_data) == (b"CERT", b"KEY")
    assert config.namespace == "default"


def test_kubeconfig_context_naming_a_missing_user_is_a_kube_error(tmp_path: Path) -> None:
    path = _write_kubeconfig(tmp_path / "kc", user={"token": "abc"})
    with pytest.raises(KubeError, match="no entry 'x' under users"):
        KubeConfig.from_kubeconfig(path, context="other")


def test_unreadable_kubeconfig_is_a_kube_error(tmp_path: Path) -> None:
    with pytest.raises(KubeError, match="cannot be read"):
        KubeConfig.from_kubeconfig(tmp_path / "absent")


def test_in_cluster_config_reads_the_service_account_folder(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0\n")
    (tmp_path / "namespace").write_text("shop")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    config = KubeConfig.in_cluster(environ=env, account_dir=tmp_path)
    assert config.server == "https://10.0.0.1:443"
    assert config.namespace == "shop"
    assert config.token_file == tmp_path / "token"
    assert config.ca_file == tmp_path / "ca.crt"


def test_in_cluster_config_brackets_an_ipv6_service_host(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert KubeConfig.in_cluster(environ=env, account_dir=tmp_path).server == "https://[fd00::1]:443"


def test_in_cluster_config_outside_a_cluster_is_a_kube_error(tmp_path: Path) -> None:
    with pytest.raises(KubeError, match="KUBERNETES_SERVICE_HOST"):
        KubeConfig.in_cluster(environ={}, account_dir=tmp_path)


def test_token_file_is_read_again_after_the_kubelet_rotates_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first")
    auth = _BearerToken(token=None, token_file=token)
    assert auth.current() == "first"
    token.write_text("second-token")
    stat = token.stat()
    os.utime(token, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert auth.current() == "second-token"


def test_a_401_with_a_rotated_token_file_retries_once_with_the_new_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("old")
    auth = _BearerToken(token=None, token_file=token)
    sent = auth.current()
    token.write_text("new")
    assert auth.fresher_than(sent) == "new"
    assert auth.fresher_than("new") is None  # the same token again: the 401 stands
    assert _BearerToken(token="fixed", token_file=None).fresher_than("fixed") is None


def test_micro_time_is_utc_with_microseconds() -> None:
    moment = datetime(2026, 1, 2, 5, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_micro_time(moment) == "2026-01-02T03:04:05.123456Z"
    assert parse_time("2026-01-02T03:04:05.123456Z") == moment.astimezone(UTC)
    assert parse_time(None) is None


def test_a_time_that_is_not_rfc3339_is_a_kube_error() -> None:
    with pytest.raises(KubeError, match="not RFC 3339"):
        parse_time("yesterday")


def test_a_forbidden_status_becomes_kube_forbidden_carrying_its_message() -> None:
    body = {
        "kind": "Status",
        "code": 403,
        "reason": "Forbidden",
        "message": 'leases.coordination.k8s.io "l" is forbidden: cannot get resource "leases"',
    }
    error = _error_of(403, json.dumps(body).encode(), "get lease ns/l")
    assert isinstance(error, KubeForbidden)
    assert error.reason == "Forbidden"
    assert str(error).startswith("get lease ns/l: leases.coordination.k8s.io")


def test_a_non_status_body_still_gives_the_right_error_class() -> None:
    assert isinstance(_error_of(409, b"", "x"), KubeConflict)
    error = _error_of(503, b"<html>busy</html>", "x")
    assert isinstance(error, KubeUnavailable)
    assert "busy" in str(error)


async def _refusing_server() -> tuple[asyncio.Server, list[int]]:
    """A local port that accepts TCP and hangs up at once: an API server that is not there."""
    connections: list[int] = []

    async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    return server, connections


async def test_a_call_to_an_absent_api_server_is_kube_unavailable() -> None:
    server, _ = await _refusing_server()
    port = server.sockets[0].getsockname()[1]
    async with server, KubeClient(KubeConfig(server=f"https://127.0.0.1:{port}", token="t")) as client:
        with pytest.raises(KubeUnavailable, match="get lease ns/l"):
            await client.get_lease("ns", "l")


async def test_a_watch_retries_with_backoff_while_the_api_server_is_away_and_ends_on_cancel() -> None:
    server, connections = await _refusing_server()
    port = server.sockets[0].getsockname()[1]
    async with server, KubeClient(KubeConfig(server=f"https://127.0.0.1:{port}", token="t")) as client:

        async def consume() -> None:
            async for _ in client.watch_pods("ns", "app=x"):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(2.0)
        assert not task.done()  # no error escaped: it keeps trying
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Backoff 0.5 s, 1 s, 2 s...: a few attempts in 2 s, not a hot loop.
    assert 2 <= len(connections) <= 5
