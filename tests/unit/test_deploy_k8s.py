"""Kubernetes manifests under deploy/k8s: API schemas (kubernetes_validate, strict), kustomize,
and their wiring: mutual TLS from the Secrets, probes on the plaintext health port,
NetworkPolicy, locked-down pods."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped, unused-ignore]
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from fused.coordinator.server import CoordinatorConfig
from fused.participant.main import ParticipantConfig
from tests.unit.deploy_checks import (
    K8S,
    K8S_VERSIONS,
    check_env,
    check_flags,
    k8s_manifests,
    k8s_objects,
    load_daemon_config,
    read_yaml,
    read_yaml_docs,
    require_tool,
    run_tool,
)

# --- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", k8s_manifests(), ids=lambda p: p.name)
def test_k8s_manifest_validates_against_api_schema(path: Path, version: str) -> None:
    docs = read_yaml_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']} {where}: {exc}")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = read_yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in k8s_manifests()]
    images = {image["name"] for image in kustomization["images"]}
    for doc in k8s_objects().values():
        if doc["kind"] == "StatefulSet":
            spec = doc["spec"]["template"]["spec"]
            for container in spec["containers"] + spec.get("initContainers", []):
                assert container["image"].split(":")[0] in images


def test_kustomize_build_validates() -> None:
    """What `kubectl apply -k` would send: kustomize's output, validated object by object."""
    kubectl = require_tool("kubectl")
    result = run_tool([kubectl, "kustomize", str(K8S)])
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(docs) == sum(len(read_yaml_docs(p)) for p in k8s_manifests())
    for doc in docs:
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "fused"
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def _monitored(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    wanted = monitor["spec"]["selector"]["matchLabels"]
    return [
        doc
        for (kind, _), doc in k8s_objects().items()
        if kind == "Service" and wanted.items() <= doc["metadata"]["labels"].items()
    ]


def test_servicemonitor_structure() -> None:
    """ServiceMonitor is a CRD that kubernetes_validate has no schema for: checked by hand."""
    monitors = read_yaml_docs(K8S / "servicemonitor.yaml")
    assert [m["metadata"]["name"] for m in monitors] == ["fused", "fused-coordinator-participants"]
    for monitor in monitors:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(monitor, K8S_VERSIONS[-1], strict=True)
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["kind"] == "ServiceMonitor"
        assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
        spec = monitor["spec"]
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
        assert spec["namespaceSelector"]["matchNames"] == ["fused"]
        assert spec["endpoints"], "no endpoints"
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
            assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
            for service in _monitored(monitor):
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # The coordinator's ClusterIP service and the participants' service; not the coordinator's
    # headless service too, or its pod would be scraped twice.
    everything, per_participant = monitors
    names = sorted(s["metadata"]["name"] for s in _monitored(everything))
    assert names == ["fused-coordinator", "fused-participant"]
    assert [e["path"] for e in everything["spec"]["endpoints"]] == ["/metrics"]
    # Each participant's bytes: the coordinator alone, under the job prometheus.yml names.
    (coordinator,) = _monitored(per_participant)
    assert coordinator["metadata"]["name"] == "fused-coordinator"
    job = coordinator["metadata"]["labels"][per_participant["spec"]["jobLabel"]]
    assert job == "fused-coordinator-participants"
    assert [e["path"] for e in per_participant["spec"]["endpoints"]] == ["/metrics/participants"]


def test_per_participant_metrics_are_on_where_they_are_scraped() -> None:
    config = tomllib.loads(k8s_objects()[("ConfigMap", "fused-config")]["data"]["coordinator.toml"])
    assert config["coordinator"]["per_participant_metrics"] is True


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for (kind, name), doc in k8s_objects().items():
        if kind == "StatefulSet":
            yield name, doc["spec"]["template"]


def test_k8s_pods_are_locked_down() -> None:
    pods = dict(_pod_specs())
    assert set(pods) == {"fused-coordinator", "fused-participant"}
    for name, template in pods.items():
        spec = template["spec"]
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True, name
        assert pod_ctx["runAsUser"] != 0, name
        assert pod_ctx["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name  # FUSED_* is the config prefix
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            where = f"{name}/{container['name']}"
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in ctx["capabilities"], where
            assert "limits" in container["resources"], where
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"


def _configmap_toml(key: str) -> str:
    text: str = k8s_objects()[("ConfigMap", "fused-config")]["data"][key]
    return text


def _k8s_config(cls: type[Any], section: str, tmp_path: Path, env: Mapping[str, str]) -> Any:
    path = tmp_path / f"{section}.toml"
    path.write_text(_configmap_toml(f"{section}.toml"))
    return load_daemon_config(cls, section, path, env)


def _container(statefulset: str) -> dict[str, Any]:
    template = k8s_objects()[("StatefulSet", statefulset)]["spec"]["template"]
    container: dict[str, Any] = template["spec"]["containers"][0]
    return container


def _mount(container: Mapping[str, Any], name: str) -> str:
    (path,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == name]
    return str(path)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _secret_keys(name: str) -> set[str]:
    secret = k8s_objects()[("Secret", name)]
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def _certified_hosts() -> list[str]:
    """The coordinator certificate's names, from secret.yaml's `fusedctl certs init` recipe."""
    text = (K8S / "secret.yaml").read_text(encoding="utf-8")
    text = re.sub(r"\\\n#\s*", " ", text)  # continued command lines in the comment
    match = re.search(r"fusedctl certs init .*--hosts ([\w.,-]+)", text)
    assert match is not None, "secret.yaml shows no `fusedctl certs init --hosts ...`"
    return match.group(1).split(",")


def test_k8s_coordinator(tmp_path: Path) -> None:
    objects = k8s_objects()
    sts = objects[("StatefulSet", "fused-coordinator")]
    assert sts["spec"]["replicas"] == 1  # SQLite: one writer
    container = _container("fused-coordinator")
    assert container["command"][0] == "fused-coordinator"
    check_flags("fused-coordinator", container["command"][1:])
    cfg = _k8s_config(CoordinatorConfig, "coordinator", tmp_path, {})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": _port(cfg.listen),
        "bulk": _port(cfg.bulk_listen),
        "metrics": cfg.metrics_port,
        "health": _port(cfg.health_listen),
    }
    assert ports == {"grpc": 50051, "bulk": 50052, "metrics": 9464, "health": 8081}
    assert cfg.listen.startswith("0.0.0.0:") and cfg.metrics_address == "0.0.0.0"
    # The kubelet dials the pod IP, so the health port listens on every interface.
    assert cfg.health_listen.startswith("0.0.0.0:")
    # Mutual TLS on the gRPC port: server certificate, key, and the CA for client certificates.
    assert cfg.tls_cert is not None and cfg.tls_key is not None and cfg.tls_ca is not None
    # The kubelet's native grpc probes present no client certificate: they dial the plaintext
    # health port (health_listen), never the mutual-TLS gRPC port.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == ports["health"], probe
    assert container["readinessProbe"]["grpc"]["service"] == "fused.v1.ParticipantService"
    # state_dir lives on the PersistentVolumeClaim template.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert _mount(container, claim["metadata"]["name"]) == str(cfg.state_dir)
    # Every credential file is a key of the coordinator's Secret, mounted where the config says.
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["credentials"]["secret"]["secretName"] == "fused-coordinator-credentials"
    keys = _secret_keys("fused-coordinator-credentials")
    for path in (cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.auth_file):
        if path is not None:
            assert str(path.parent) == _mount(container, "credentials"), path
            assert path.name in keys, f"{path.name} is not in the coordinator's Secret"
    assert "ca.key" not in keys
    # The certificate names the Service that participants dial, and localhost for operators
    # who reach it through `kubectl port-forward`.
    hosts = _certified_hosts()
    assert "fused-coordinator" in hosts and "localhost" in hosts
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(cfg.metrics_port)
    # The Service carries gRPC, the bulk port and metrics; the health port is for the kubelet.
    service = objects[("Service", "fused-coordinator")]
    served = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert served == {name: port for name, port in ports.items() if name != "health"}
    assert (
        service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    )
    assert objects[("Service", sts["spec"]["serviceName"])]["spec"]["clusterIP"] == "None"


def _policy_for(component: str) -> dict[str, Any]:
    (policy,) = [
        doc
        for (kind, _), doc in k8s_objects().items()
        if kind == "NetworkPolicy"
        and doc["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
        == component
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    return policy


def _allowed_sources(policy: Mapping[str, Any], port: int) -> list[list[dict[str, Any]] | None]:
    """The `from` lists of the ingress rules that open `port` (None: every source)."""
    return [
        rule.get("from")
        for rule in policy["spec"]["ingress"]
        if any(p["port"] == port and p.get("protocol", "TCP") == "TCP" for p in rule["ports"])
    ]


def test_k8s_network_policy(tmp_path: Path) -> None:
    cfg = _k8s_config(CoordinatorConfig, "coordinator", tmp_path, {})
    coordinator = _policy_for("coordinator")
    opened = {p["port"] for rule in coordinator["spec"]["ingress"] for p in rule["ports"]}
    grpc_ports = {_port(cfg.listen), _port(cfg.bulk_listen)}
    assert opened == {*grpc_ports, cfg.metrics_port, _port(cfg.health_listen)}
    # gRPC and the bulk port: only this application's pods (participants, fusedctl's pod).
    for port in grpc_ports:
        (grpc_from,) = _allowed_sources(coordinator, port)
        assert grpc_from == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "fused"}}}]
    # Health: the kubelet probes from the node, which no pod or namespace selector names, so
    # the rule admits every source (or an ipBlock of the nodes' addresses).
    health_from = _allowed_sources(coordinator, _port(cfg.health_listen))
    assert health_from, "no ingress rule opens the health port to the kubelet"
    for sources in health_from:
        assert sources is None or all("ipBlock" in s for s in sources), sources
    assert "kubelet" in (K8S / "networkpolicy.yaml").read_text(encoding="utf-8")
    # Participants serve nothing but metrics (they dial out).
    participant = _policy_for("participant")
    pcfg = _k8s_config(ParticipantConfig, "participant", tmp_path, {})
    assert {p["port"] for rule in participant["spec"]["ingress"] for p in rule["ports"]} == {
        pcfg.metrics_port
    }


def test_k8s_participants(tmp_path: Path) -> None:
    objects = k8s_objects()
    sts = objects[("StatefulSet", "fused-participant")]
    replicas = sts["spec"]["replicas"]
    assert replicas == 3
    container = _container("fused-participant")
    assert container["command"][0] == "fused-participant"
    check_flags("fused-participant", container["command"][1:])
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    check_env("fused-participant", env)
    index = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "valueFrom" in e
    }
    assert index == {"POD_INDEX": "metadata.labels['apps.kubernetes.io/pod-index']"}
    # The init container partitions into exactly as many shards as there are pods.
    (init,) = sts["spec"]["template"]["spec"]["initContainers"]
    script = init["command"][-1]
    assert f"--participants {replicas}" in script and "${POD_INDEX}" in script
    assert _mount(init, "shard") == _mount(container, "shard") == env["FUSED_DATA_DIR"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["credentials"]["secret"]["secretName"] == "fused-participant-credentials"
    keys = _secret_keys("fused-participant-credentials")
    assert not any(k.endswith(".key") and not k.startswith("participant-") for k in keys)
    coordinator = _k8s_config(CoordinatorConfig, "coordinator", tmp_path, {})
    service = objects[("Service", "fused-coordinator")]
    for ordinal in range(replicas):
        resolved = {k: v.replace("$(POD_INDEX)", str(ordinal)) for k, v in env.items()}
        cfg = _k8s_config(ParticipantConfig, "participant", tmp_path, resolved)
        pid = cfg.participant_id
        assert pid == f"p{ordinal}"
        # Mutual TLS: the CA, and this pod's own certificate and key, picked by ordinal.
        assert cfg.tls_ca is not None and cfg.tls_cert is not None and cfg.tls_key is not None
        assert (cfg.tls_cert.name, cfg.tls_key.name) == (
            f"participant-{pid}.pem",
            f"participant-{pid}.key",
        )
        for path in (cfg.tls_ca, cfg.tls_cert, cfg.tls_key, cfg.token_file):
            if path is not None:
                assert str(path.parent) == _mount(container, "credentials"), path
                assert path.name in keys, f"{path.name} is not in the participants' Secret"
        # The coordinator runs mutual TLS: a participant without a certificate cannot connect.
        assert coordinator.tls_ca is not None
        host, port = cfg.coordinator.rsplit(":", 1)
        assert host == service["metadata"]["name"] and host in _certified_hosts()
        assert int(port) == _port(coordinator.listen)  # the TLS port, not the health port
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "metrics": cfg.metrics_port
    }
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(cfg.metrics_port)
