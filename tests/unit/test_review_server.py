"""The webhook server in-process: endpoints, metrics, certificate reload, settings."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
from pathlib import Path

import httpx
import orjson
import pytest

from tests.rig.certs import CertificateAuthority
from tests.unit.test_patch import make_pod
from tests.unit.test_review import pod_request, review_of
from tidescale_injector.config import InjectorConfig, ServerSettings, parse_settings
from tidescale_injector.server import Injector


def settings_for(directory: Path) -> ServerSettings:
    return ServerSettings(
        host="127.0.0.1",
        port=0,
        cert_file=directory / "tls.crt",
        key_file=directory / "tls.key",
        cert_reload_interval=0.1,
        sidecar_mode="true",
    )


def install_pair(ca: CertificateAuthority, name: str, directory: Path) -> None:
    pair = ca.issue_serving_cert(name, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    # Write then rename, as the kubelet swaps a Secret volume's files.
    for source, target in ((pair.cert_file, "tls.crt"), (pair.key_file, "tls.key")):
        shutil.copy(source, directory / f".{target}.tmp")
        os.replace(directory / f".{target}.tmp", directory / target)


def client(ca: CertificateAuthority) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca.cert_file)), timeout=5)


async def test_the_server_answers_reviews_probes_and_metrics_over_tls(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    install_pair(ca, "one", tmp_path)
    injector = await Injector.start(settings_for(tmp_path), InjectorConfig(image="i", version="1"))
    base = f"https://127.0.0.1:{injector.port}"
    try:
        async with client(ca) as http:
            answer = await http.post(base + "/mutate", content=review_of(pod_request(make_pod())))
            assert answer.status_code == 200
            assert "patch" in orjson.loads(answer.content)["response"]
            assert (await http.post(base + "/validate", content=b"{")).status_code == 400
            assert (await http.get(base + "/healthz")).status_code == 200
            assert (await http.get(base + "/readyz")).status_code == 200
            metrics = (await http.get(base + "/metrics")).text
    finally:
        await injector.stop()
    assert 'tidescale_injector_admissions_total{webhook="mutate",result="injected"} 1' in metrics
    assert 'tidescale_injector_injections_total{mode="native"} 1' in metrics
    assert 'tidescale_injector_errors_total{kind="rejected"} 1' in metrics
    assert 'tidescale_injector_admission_duration_seconds_count{webhook="mutate"} 1' in metrics


async def test_a_rotated_certificate_is_served_to_new_connections_without_a_restart(tmp_path: Path) -> None:
    old_ca = CertificateAuthority.create(tmp_path / "old")
    new_ca = CertificateAuthority.create(tmp_path / "new")
    install_pair(old_ca, "old", tmp_path)
    injector = await Injector.start(settings_for(tmp_path), InjectorConfig(image="i", version="1"))
    base = f"https://127.0.0.1:{injector.port}"
    try:
        async with client(old_ca) as http:
            assert (await http.get(base + "/healthz")).status_code == 200
        install_pair(new_ca, "new", tmp_path)
        for _ in range(50):
            if injector.metrics.cert_reloads:
                break
            await asyncio.sleep(0.1)
        assert injector.metrics.cert_reloads == 1
        async with client(new_ca) as http:
            assert (await http.get(base + "/healthz")).status_code == 200
        async with client(old_ca) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(base + "/healthz")
    finally:
        await injector.stop()


async def test_a_half_written_pair_keeps_the_old_certificate_until_it_loads(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    install_pair(ca, "one", tmp_path)
    injector = await Injector.start(settings_for(tmp_path), InjectorConfig(image="i", version="1"))
    base = f"https://127.0.0.1:{injector.port}"
    try:
        (tmp_path / "tls.key").write_text("not a key")
        await asyncio.sleep(0.4)
        assert injector.metrics.errors["certificate"] == 1
        async with client(ca) as http:
            assert (await http.get(base + "/healthz")).status_code == 200
        install_pair(ca, "two", tmp_path)
        await asyncio.sleep(0.4)
        assert injector.metrics.cert_reloads == 1
    finally:
        await injector.stop()


def test_settings_come_from_flags_over_environment_over_defaults() -> None:
    env = {
        "TIDESCALE_AGENT_IMAGE": "registry/tidescale:9",
        "TIDESCALE_INJECTOR_STRICT": "true",
        "POD_NAMESPACE": "ts",
    }
    settings, config = parse_settings(["--listen=10.0.0.1:9443", "--agent-memory-limit=256Mi"], env)
    assert (settings.host, settings.port) == ("10.0.0.1", 9443)
    assert config.image == "registry/tidescale:9"
    assert config.strict is True
    assert config.resources.memory_limit == 256 * 2**20
    assert config.excluded_namespaces == {"kube-system", "ts"}
    assert settings.sidecar_mode == "auto"


@pytest.mark.parametrize(
    "argv",
    [
        ["--agent-cpu-request=lots"],
        ["--listen=nowhere"],
        ["--native-sidecars=maybe"],
        ["--agent-cpu-request=2"],
    ],
)
def test_bad_settings_exit_with_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(argv, {})
    assert exited.value.code == 2
