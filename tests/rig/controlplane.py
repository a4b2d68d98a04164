"""The rig's Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager.

The API server listens on the rig network's node address (the bridge), where pod
processes reach it, and runs as a real cluster's would: client certificates,
RBAC with the Node authorizer, admission webhooks, service-account tokens. The
controller manager runs the controllers that turn a Deployment into ReplicaSets and
Pods, keep Endpoints and create ServiceAccounts; those that need a cloud, real
nodes or volumes are off. There is no scheduler and no kubelet: Pods stay Pending
until the rig's pod runner takes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.rig.certs import SERVICE_CLUSTER_IP_RANGE, CertificateAuthority, ControlPlanePKI, KeyPair
from tests.rig.network import Network
from tests.rig.paths import ControlPlaneBinaries, kubernetes_minor
from tests.rig.processes import Managed, Supervisor, free_port, port_open, wait_until

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# "*" is every default controller; these are off because they need what the rig has
# not: a pod CIDR to hand out, kubelets sending heartbeats (the lifecycle controller
# would taint and evict the pod runner's pods), volumes, or alpha/beta APIs the API
# server does not serve by default (dynamic resources, trust bundles, storage migration).
# Each with the first Kubernetes minor that has it: kube-controller-manager refuses a name
# it does not know ("... is not in the list of known controllers"), so an older one
# (make test-k8s-oldest) is given only those it has. Checked against 1.30 and 1.37, the two the
# rig builds; the minors between come from the Kubernetes changelogs.
_CONTROLLERS_OFF: tuple[tuple[str, int], ...] = (
    ("node-ipam-controller", 0),
    ("node-lifecycle-controller", 0),
    ("persistentvolume-binder-controller", 0),
    ("persistentvolume-attach-detach-controller", 0),
    ("persistentvolume-expander-controller", 0),
    ("resourceclaim-controller", 0),
    ("storage-version-migrator-controller", 30),
    ("device-taint-eviction-controller", 33),
    ("kube-apiserver-serving-clustertrustbundle-publisher-controller", 33),
    ("podcertificaterequest-cleaner-controller", 34),
    ("resourcepoolstatusrequest-controller", 37),
)


def controllers_flag(kubernetes_minor: int) -> str:
    """The value of kube-controller-manager's --controllers for Kubernetes 1.<kubernetes_minor>."""
    off = [f"-{name}" for name, since in _CONTROLLERS_OFF if kubernetes_minor >= since]
    return ",".join(["*", *off])


START_TIMEOUT = 90.0  # seconds; a warm start takes a few, a loaded 2-core machine more
DEFAULT_HPA_SYNC_PERIOD = 1.0
"""Seconds between two syncs of one HPA in the rig (Kubernetes' own default is 15 s)."""
FRONT_PROXY_CLIENT = "front-proxy-client"
"""The name in the API server's client certificate for aggregated APIs (their requestheader CA's)."""


class ControlPlaneError(RuntimeError):
    """The control plane did not start, or a call to it failed."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Listener:
    host: str
    port: int


def _kubeconfig(path: Path, *, server: str, ca_file: Path, user: dict[str, str]) -> Path:
    """A one-context kubeconfig; JSON is valid YAML, so kubectl and client libraries read it."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "rig", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "rig-user", "user": user}],
        "contexts": [{"name": "rig", "context": {"cluster": "rig", "user": "rig-user"}}],
        "current-context": "rig",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def _cert_user(pair: KeyPair) -> dict[str, str]:
    return {"client-certificate": str(pair.cert_file), "client-key": str(pair.key_file)}


@dataclass(kw_only=True, slots=True)
class ControlPlane:
    """A running control plane. Build it with :meth:`start`; :meth:`stop` ends its processes."""

    node_address: str
    port: int
    directory: Path
    pki: ControlPlanePKI
    binaries: ControlPlaneBinaries
    admin_kubeconfig: Path
    etcd_client_port: int
    etcd_peer_port: int
    processes: list[Managed]
    version: str = ""
    start_seconds: float = 0.0
    hpa_sync_period: float = DEFAULT_HPA_SYNC_PERIOD
    _http: httpx.Client | None = field(default=None, repr=False)

    @property
    def server(self) -> str:
        return f"https://{self.node_address}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.pki.ca.cert_file

    @property
    def listeners(self) -> list[Listener]:
        """Every address:port the control plane's processes listen on."""
        return [
            Listener(host="127.0.0.1", port=self.etcd_client_port),
            Listener(host="127.0.0.1", port=self.etcd_peer_port),
            Listener(host=self.node_address, port=self.port),
        ]

    @classmethod
    def start(
        cls,
        supervisor: Supervisor,
        network: Network,
        run_dir: Path,
        *,
        binaries: ControlPlaneBinaries | None = None,
        hpa_sync_period: float = DEFAULT_HPA_SYNC_PERIOD,
    ) -> ControlPlane:
        """Starts etcd, the API server and the controller manager; returns once they serve.

        Files go to ``run_dir/controlplane`` (certificates, kubeconfigs, etcd data),
        logs to the supervisor's run folder. ``hpa_sync_period`` (seconds) is the HPA
        controller's --horizontal-pod-autoscaler-sync-period (a benchmark compares KEDA at
        Kubernetes' default 15 s and at the rig's 1 s).
        """
        began = time.monotonic()
        bins = binaries if binaries is not None else ControlPlaneBinaries.from_cache()
        directory = run_dir / "controlplane"
        directory.mkdir(parents=True, exist_ok=True)
        node = network.node_address
        pki = ControlPlanePKI.create(directory / "pki", node_address=node)
        port = free_port(node)
        plane = cls(
            node_address=node,
            port=port,
            directory=directory,
            pki=pki,
            binaries=bins,
            admin_kubeconfig=_kubeconfig(
                directory / "admin.kubeconfig",
                server=f"https://{node}:{port}",
                ca_file=pki.ca.cert_file,
                user=_cert_user(pki.admin),
            ),
            etcd_client_port=free_port(),
            etcd_peer_port=free_port(),
            processes=[],
            hpa_sync_period=hpa_sync_period,
        )
        try:
            plane._start_etcd(supervisor)
            plane._start_apiserver(supervisor)
            plane._start_controller_manager(supervisor)
        except BaseException:
            plane.stop()
            raise
        plane.start_seconds = time.monotonic() - began
        return plane

    # -- start-up ---------------------------------------------------------------------

    def _start_etcd(self, supervisor: Supervisor) -> None:
        client = f"http://127.0.0.1:{self.etcd_client_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        etcd = supervisor.start(
            "etcd",
            [
                self.binaries.etcd,
                "--name=rig",
                f"--data-dir={self.directory / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=rig={peer}",
                # A test cluster's data is thrown away with the run: skipping fsync
                # saves the disk waits that dominate etcd's latency on a busy machine.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self.processes.append(etcd)
        wait_until(
            "etcd to accept connections",
            lambda: port_open("127.0.0.1", self.etcd_client_port),
            timeout=START_TIMEOUT,
            process=etcd,
        )

    @property
    def audit_log(self) -> Path:
        """JSON lines, one per audited request: writes to Deployments, their scale, and Leases;
        reads and writes of the HPA differential test's scale targets."""
        return self.directory / "audit.log"

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audit event so far (stage ResponseComplete), oldest first."""
        if not self.audit_log.is_file():
            return []
        events = []
        for line in self.audit_log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def _write_audit_policy(self) -> Path:
        # Only what tests attribute to their authors (a bound service-account token carries
        # the pod's name in user.extra): who wrote a Deployment, its scale, or a Lease, when.
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [
                {
                    "level": "Metadata",
                    "verbs": ["create", "update", "patch"],
                    "resources": [
                        {"group": "apps", "resources": ["deployments", "deployments/scale"]},
                        {"group": "coordination.k8s.io", "resources": ["leases"]},
                    ],
                },
                {
                    # The HPA differential test reads every scale read and write of its targets,
                    # with the replica count written (the request body).
                    "level": "Request",
                    "verbs": ["get", "update", "patch"],
                    "resources": [
                        {"group": "hpadiff.rig.tidescale.dev", "resources": ["scaletargets/scale"]}
                    ],
                },
                {"level": "None"},
            ],
        }
        path = self.directory / "audit-policy.json"
        path.write_text(json.dumps(policy))
        return path

    def _front_proxy(self) -> tuple[Path, KeyPair]:
        """The aggregation layer's own CA (its certificate file) and the API server's client
        certificate from it: an aggregated API server (KEDA's metrics adapter) trusts the user the
        API server names in its X-Remote-* headers only over a connection with this certificate.
        Only the API server holds it, so no other client can name a user this way. Made once per
        control plane (an API server restart keeps it)."""
        directory = self.directory / "pki" / "front-proxy"
        client = KeyPair(
            cert_file=directory / f"{FRONT_PROXY_CLIENT}.crt",
            key_file=directory / f"{FRONT_PROXY_CLIENT}.key",
        )
        if not client.cert_file.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            ca = CertificateAuthority.create(directory, common_name="tidescale-rig-front-proxy-ca")
            client = ca.issue_client_cert(FRONT_PROXY_CLIENT, common_name=FRONT_PROXY_CLIENT)
        return directory / "ca.crt", client

    def _start_apiserver(self, supervisor: Supervisor) -> None:
        pki = self.pki
        audit_policy = self._write_audit_policy()
        front_proxy_ca, front_proxy_client = self._front_proxy()
        apiserver = supervisor.start(
            "kube-apiserver",
            [
                self.binaries.kube_apiserver,
                f"--etcd-servers=http://127.0.0.1:{self.etcd_client_port}",
                f"--bind-address={self.node_address}",
                f"--advertise-address={self.node_address}",
                f"--secure-port={self.port}",
                f"--cert-dir={self.directory / 'apiserver'}",
                f"--tls-cert-file={pki.apiserver.cert_file}",
                f"--tls-private-key-file={pki.apiserver.key_file}",
                f"--client-ca-file={pki.ca.cert_file}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account.public_key_file}",
                f"--service-account-signing-key-file={pki.service_account.private_key_file}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                # Webhook Services are resolved to their Endpoints (the pod addresses):
                # there is no kube-proxy to make a ClusterIP reachable.
                "--enable-aggregator-routing=true",
                # The aggregation layer's authentication (an aggregated API server delegates to it).
                f"--requestheader-client-ca-file={front_proxy_ca}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={front_proxy_client.cert_file}",
                f"--proxy-client-key-file={front_proxy_client.key_file}",
                "--profiling=false",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
            ],
        )
        self.processes.append(apiserver)
        wait_until(
            "kube-apiserver /readyz",
            lambda: self._client().get("/readyz", timeout=2.0).status_code == 200,
            timeout=START_TIMEOUT,
            process=apiserver,
        )
        self.version = str(self._api("GET", "/version")["gitVersion"])

    def _start_controller_manager(self, supervisor: Supervisor) -> None:
        pki = self.pki
        kubeconfig = _kubeconfig(
            self.directory / "kube-controller-manager.kubeconfig",
            server=self.server,
            ca_file=pki.ca.cert_file,
            user=_cert_user(pki.controller_manager),
        )
        manager = supervisor.start(
            "kube-controller-manager",
            [
                self.binaries.kube_controller_manager,
                f"--kubeconfig={kubeconfig}",
                # No HTTPS endpoint of its own: nothing reads it, and it would be one
                # more listener to leave behind.
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account.private_key_file}",
                f"--root-ca-file={pki.ca.cert_file}",
                f"--cluster-signing-cert-file={pki.ca.cert_file}",
                f"--cluster-signing-key-file={pki.ca.key_file}",
                f"--controllers={controllers_flag(kubernetes_minor(self.binaries.kubernetes_version))}",
                # The HPA differential test (tests/integration/test_hpa_differential.py): a 1 s
                # sync; a worker per HPA, as its scripted metrics server holds each query up
                # to 1.6 s; and client rate limits that do not delay dozens of HPAs' writes.
                f"--horizontal-pod-autoscaler-sync-period={self.hpa_sync_period:g}s",
                "--concurrent-horizontal-pod-autoscaler-syncs=64",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )
        self.processes.append(manager)
        # The ServiceAccount controller making `default` is the sign that the
        # controllers run with their own credentials.
        wait_until(
            "the default ServiceAccount in namespace default (kube-controller-manager)",
            lambda: self._get_status("/api/v1/namespaces/default/serviceaccounts/default") == 200,
            timeout=START_TIMEOUT,
            process=manager,
        )

    # -- calls ------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            context = ssl.create_default_context(cafile=str(self.pki.ca.cert_file))
            context.load_cert_chain(str(self.pki.admin.cert_file), str(self.pki.admin.key_file))
            self._http = httpx.Client(base_url=self.server, verify=context, timeout=10.0)
        return self._http

    def _get_status(self, path: str) -> int:
        return self._client().get(path).status_code

    def _api(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, ok: tuple[int, ...] = ()
    ) -> dict[str, Any]:
        """An admin request; a status other than 2xx or one of ``ok`` raises ControlPlaneError."""
        try:
            response = self._client().request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ControlPlaneError(f"{method} {path} on {self.server} failed: {exc}") from exc
        if not response.is_success and response.status_code not in ok:
            raise ControlPlaneError(f"{method} {path} answered {response.status_code}: {response.text}")
        result: dict[str, Any] = response.json()
        return result

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Runs kubectl as the admin (or with ``kubeconfig``); ``check`` raises on a non-zero exit."""
        config = kubeconfig if kubeconfig is not None else self.admin_kubeconfig
        argv = [os.fspath(self.binaries.kubectl), f"--kubeconfig={config}", *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, check=False, timeout=120)
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def service_account_token(self, namespace: str, name: str, *, expiration_seconds: int = 3600) -> str:
        """A token for ServiceAccount ``namespace/name`` from the TokenRequest API (account made if absent).

        The namespace is made too if absent. The API server refuses ``expiration_seconds``
        below 600. The account has only the permissions RBAC grants it.
        """
        self._api("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}}, ok=(409,))
        self._api(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"metadata": {"name": name}},
            ok=(409,),
        )
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        answer = self._api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", request)
        return str(answer["status"]["token"])

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> Path:
        """A kubeconfig acting as ServiceAccount ``namespace/name``: see :meth:`service_account_token`."""
        token = self.service_account_token(namespace, name, expiration_seconds=expiration_seconds)
        return _kubeconfig(
            self.directory / "kubeconfigs" / f"{namespace}.{name}.kubeconfig",
            server=self.server,
            ca_file=self.ca_file,
            user={"token": token},
        )

    def apiserver_metrics(self) -> str:
        """The API server's raw Prometheus text from /metrics."""
        try:
            response = self._client().get("/metrics")
        except httpx.HTTPError as exc:
            raise ControlPlaneError(f"GET /metrics on {self.server} failed: {exc}") from exc
        if response.status_code != 200:
            raise ControlPlaneError(f"GET /metrics answered {response.status_code}: {response.text}")
        return response.text

    def stop(self) -> None:
        """Ends this control plane's processes (newest first) and waits for them to exit."""
        if self._http is not None:
            self._http.close()
            self._http = None
        while self.processes:
            self.processes.pop().stop()

    def restart_apiserver(self, supervisor: Supervisor, *, down_seconds: float = 0.0) -> None:
        """Stops kube-apiserver, waits ``down_seconds``, starts it again with the same flags and
        port; etcd (the data) and the controller manager keep running. For fault tests."""
        old = next(p for p in self.processes if p.name == "kube-apiserver")
        old.stop()
        self.processes.remove(old)
        if self._http is not None:
            self._http.close()
            self._http = None
        time.sleep(down_seconds)
        self._start_apiserver(supervisor)

    def restart_controller_manager(self, supervisor: Supervisor, *, hpa_sync_period: float) -> None:
        """Stops kube-controller-manager and starts it again with another HPA sync period (seconds);
        etcd and the API server keep running. For a benchmark that compares sync periods in one run."""
        old = next(p for p in self.processes if p.name == "kube-controller-manager")
        old.stop()
        self.processes.remove(old)
        self.hpa_sync_period = hpa_sync_period
        self._start_controller_manager(supervisor)

    def open_listeners(self) -> list[Listener]:
        """The control plane's listeners that still accept connections (none after stop)."""
        found = []
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                if port_open(listener.host, listener.port):
                    found.append(listener)
        return found
