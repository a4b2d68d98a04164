"""KEDA in the rig: its operator and metrics adapter, built from the Go module by
``tests/rig/build/build.sh keda`` (``make bench-keda``; not part of ``make rig``).

Both run as local processes against the rig's API server, each with the token of its own
ServiceAccount in namespace ``keda`` (bound to cluster-admin: the benchmark measures KEDA's
speed, memory and traffic, not its permissions). The adapter is registered as the APIService
``v1beta1.external.metrics.k8s.io`` through a Service whose Endpoints are its address (the
API server routes to Endpoints: there is no kube-proxy), so the rig's HPA controller reads
KEDA's metrics exactly as on a cluster: HPA -> aggregator -> adapter -> operator (gRPC, mutual
TLS) -> the scaler -> the broker.

Certificates: one CA of the run, one certificate (server and client use) that the operator's
gRPC metrics service, the adapter's HTTPS port and the adapter's gRPC client share, as KEDA's
own ``kedaorg-certs`` Secret does; KEDA's certificate rotation is off.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.rig.certs import CertificateAuthority
from tests.rig.controlplane import ControlPlane
from tests.rig.network import Network
from tests.rig.paths import VERSIONS, RigNotBuilt, cache_dir
from tests.rig.processes import Managed, Supervisor, free_port, wait_until

NAMESPACE = "keda"
OPERATOR_ACCOUNT = "keda-operator"
ADAPTER_ACCOUNT = "keda-metrics-server"
ADAPTER_SERVICE = "keda-metrics-apiserver"
APISERVICE = "v1beta1.external.metrics.k8s.io"
START_TIMEOUT = 180.0
"""Seconds for each of KEDA's processes to serve: Go binaries start in a second, but the
adapter waits for the operator's gRPC service and the aggregator's first successful probe."""


@dataclass(frozen=True, kw_only=True, slots=True)
class KedaBinaries:
    operator: Path
    adapter: Path
    crd_dir: Path
    version: str

    @classmethod
    def from_cache(cls) -> KedaBinaries:
        version = VERSIONS["KEDA_VERSION"]
        root = cache_dir() / f"keda-{version}"
        found = cls(
            operator=root / "bin" / "keda-operator",
            adapter=root / "bin" / "keda-adapter",
            crd_dir=root / "crd",
            version=version,
        )
        for path in (found.operator, found.adapter, found.crd_dir / "keda.sh_scaledobjects.yaml"):
            if not path.is_file():
                raise RigNotBuilt(
                    f"{path} is missing: build KEDA {version} with `tests/rig/build/build.sh keda` "
                    "(make bench-keda does it on first use; a cold build takes tens of minutes)"
                )
        return found


def _issue_server_and_client(
    ca: CertificateAuthority, name: str, *, dns_names: list[str], ip_addresses: list[str]
) -> tuple[Path, Path]:
    """One certificate usable by a TLS server and a TLS client (KEDA's gRPC is mutual TLS with the
    same files on both ends); written as ``tls.crt`` / ``tls.key`` beside the CA's ``ca.crt``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_file, key_file = ca.directory / "tls.crt", ca.directory / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def _account_objects(account: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": NAMESPACE}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"bench-{account}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}],
        },
    ]


def _registration(host: str, port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": ADAPTER_SERVICE, "namespace": NAMESPACE},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": ADAPTER_SERVICE, "namespace": NAMESPACE},
            "subsets": [{"addresses": [{"ip": host}], "ports": [{"name": "https", "port": port}]}],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE},
            "spec": {
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "service": {"namespace": NAMESPACE, "name": ADAPTER_SERVICE, "port": 443},
                "caBundle": base64.b64encode(ca_pem).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


@dataclass(kw_only=True, slots=True)
class Keda:
    """KEDA's two processes, running. Build it with :meth:`start`; :meth:`stop` ends both."""

    operator: Managed
    adapter: Managed
    binaries: KedaBinaries
    operator_metrics: str
    """host:port of the operator's Prometheus metrics."""
    adapter_metrics: str

    @classmethod
    def start(cls, supervisor: Supervisor, plane: ControlPlane, network: Network, run_dir: Path) -> Keda:
        """Installs KEDA's CRDs, starts the operator and the adapter, registers the adapter, and
        returns once the APIService is Available (the aggregator reaches the adapter)."""
        binaries = KedaBinaries.from_cache()
        directory = run_dir / "keda"
        directory.mkdir(parents=True, exist_ok=True)
        plane.kubectl("apply", "--server-side", "-f", str(binaries.crd_dir))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(binaries.crd_dir))
        plane.kubectl("create", "namespace", NAMESPACE, check=False)
        objects = _account_objects(OPERATOR_ACCOUNT) + _account_objects(ADAPTER_ACCOUNT)
        plane.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        )
        node = network.node_address
        ca = CertificateAuthority.create(directory / "certs", common_name="tidescale-rig-keda-ca")
        _issue_server_and_client(
            ca,
            "keda",
            dns_names=[
                f"{ADAPTER_SERVICE}.{NAMESPACE}.svc",
                f"{ADAPTER_SERVICE}.{NAMESPACE}.svc.cluster.local",
                f"keda-operator.{NAMESPACE}.svc",
                f"keda-operator.{NAMESPACE}.svc.cluster.local",
            ],
            ip_addresses=[node],
        )
        certs = ca.directory
        environment = {
            **os.environ,
            "WATCH_NAMESPACE": "",
            "POD_NAMESPACE": NAMESPACE,
            "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
        }
        grpc_port, adapter_port = free_port(node), free_port(node)
        operator_metrics = f"127.0.0.1:{free_port()}"
        probes = f"127.0.0.1:{free_port()}"
        operator_config = plane.service_account_kubeconfig(
            NAMESPACE, OPERATOR_ACCOUNT, expiration_seconds=86400
        )
        operator = supervisor.start(
            "keda-operator",
            [
                binaries.operator,
                f"--kubeconfig={operator_config}",
                "--leader-elect=false",
                f"--metrics-bind-address={operator_metrics}",
                f"--health-probe-bind-address={probes}",
                f"--metrics-service-bind-address={node}:{grpc_port}",
                f"--cert-dir={certs}",
                "--enable-cert-rotation=false",
                f"--ca-dir={certs}",
                "--zap-log-level=info",
            ],
            env={**environment, "KUBECONFIG": str(operator_config), "POD_NAME": "keda-operator"},
        )
        keda: Keda | None = None
        try:
            import httpx

            wait_until(
                "keda-operator /readyz",
                lambda: httpx.get(f"http://{probes}/readyz", timeout=2.0).status_code == 200,
                timeout=START_TIMEOUT,
                process=operator,
                interval=0.5,
            )
            adapter_config = plane.service_account_kubeconfig(
                NAMESPACE, ADAPTER_ACCOUNT, expiration_seconds=86400
            )
            adapter_metrics_port = free_port()
            adapter = supervisor.start(
                "keda-adapter",
                [
                    binaries.adapter,
                    f"--lister-kubeconfig={adapter_config}",
                    f"--authentication-kubeconfig={adapter_config}",
                    f"--authorization-kubeconfig={adapter_config}",
                    f"--bind-address={node}",
                    f"--secure-port={adapter_port}",
                    f"--cert-dir={certs}",
                    f"--tls-cert-file={certs / 'tls.crt'}",
                    f"--tls-private-key-file={certs / 'tls.key'}",
                    f"--metrics-service-address={node}:{grpc_port}",
                    f"--port={adapter_metrics_port}",
                    "--zap-log-level=info",
                ],
                env={**environment, "KUBECONFIG": str(adapter_config), "POD_NAME": "keda-metrics-apiserver"},
            )
            keda = cls(
                operator=operator,
                adapter=adapter,
                binaries=binaries,
                operator_metrics=operator_metrics,
                adapter_metrics=f"127.0.0.1:{adapter_metrics_port}",
            )
            plane.kubectl(
                "apply",
                "-f",
                "-",
                input=json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "List",
                        "items": _registration(node, adapter_port, ca.cert_pem),
                    }
                ),
            )
            wait_until(
                f"APIService {APISERVICE} Available (the aggregator reaches keda-adapter)",
                lambda: apiservice_available(plane),
                timeout=START_TIMEOUT,
                process=adapter,
                interval=0.5,
            )
        except BaseException:
            if keda is not None:
                keda.stop()
            else:
                operator.stop()
            raise
        return keda

    @property
    def pids(self) -> dict[str, int]:
        return {"keda-operator": self.operator.pid, "keda-adapter": self.adapter.pid}

    def stop(self) -> None:
        """Ends the adapter, then the operator, and waits for both."""
        self.adapter.stop()
        self.operator.stop()


def apiservice_available(plane: ControlPlane) -> bool:
    result = plane.kubectl("get", "apiservice", APISERVICE, "-o", "json", check=False)
    if result.returncode != 0:
        return False
    conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)


def kafka_scaled_object(
    name: str,
    namespace: str,
    *,
    deployment: str,
    bootstrap: str,
    topic: str,
    group: str,
    lag_threshold: int,
    min_replicas: int,
    max_replicas: int,
    cooldown_seconds: int,
    scale_down_stabilization_seconds: int,
    polling_interval_seconds: int | None = None,
) -> dict[str, Any]:
    """A ScaledObject with one Kafka trigger; ``polling_interval_seconds`` None keeps KEDA's default
    (30 s, written nowhere, as a user who never set it)."""
    spec: dict[str, Any] = {
        "scaleTargetRef": {"name": deployment},
        "minReplicaCount": min_replicas,
        "maxReplicaCount": max_replicas,
        "cooldownPeriod": cooldown_seconds,
        "advanced": {
            "horizontalPodAutoscalerConfig": {
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": scale_down_stabilization_seconds}}
            }
        },
        "triggers": [
            {
                "type": "kafka",
                "metadata": {
                    "bootstrapServers": bootstrap,
                    "consumerGroup": group,
                    "topic": topic,
                    "lagThreshold": str(lag_threshold),
                },
            }
        ],
    }
    if polling_interval_seconds is not None:
        spec["pollingInterval"] = polling_interval_seconds
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
