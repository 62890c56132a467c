"""Offline checks of the deployment files under deploy/.

Kubernetes manifests against the API schemas (kubernetes_validate, strict) and their wiring
(mutual TLS from the Secrets, probes on the plaintext health port, NetworkPolicy), Prometheus
config, rules and rule unit tests with promtool, the metric names in the Grafana dashboard and the
alerts against the metrics the code registers, the example TOML files against the config
dataclasses, the Dockerfile's and compose file's structure, and the systemd units with
`systemd-analyze verify`. Tools that are not installed (promtool, kubectl, docker-compose,
systemd-analyze) skip their checks with a reason; nothing here builds or starts anything.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped, unused-ignore]
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from prometheus_client import CollectorRegistry

from common.config import load_config
from coordinator.metrics import CoordinatorMetrics
from coordinator.server import CoordinatorConfig
from participant.agent import ParticipantMetrics
from participant.main import ParticipantConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
SYSTEMD = DEPLOY / "systemd"

# The oldest Kubernetes the manifests target (StatefulSet pods carry the
# apps.kubernetes.io/pod-index label from 1.28) and the newest schema kubernetes_validate has.
K8S_VERSIONS = ("1.28", kubernetes_validate.latest_version())
NOT_IN_KUSTOMIZATION = {"kustomization.yaml", "servicemonitor.yaml"}
# Series Prometheus makes itself, not exported by any FUSED process.
PROMETHEUS_SYNTHETIC = {"up"}

DAEMONS: dict[str, tuple[type[Any], str]] = {
    "fused-coordinator": (CoordinatorConfig, "coordinator"),
    "fused-participant": (ParticipantConfig, "participant"),
}


# --- helpers ---------------------------------------------------------------------------------


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def _yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in NOT_IN_KUSTOMIZATION)


def _k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, over every manifest the kustomization applies."""
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path in _manifests()
        for doc in _yaml_docs(path)
    }


def _fields(cls: type[Any]) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _is_optional(cls: type[Any], name: str) -> bool:
    hint = typing.get_type_hints(cls)[name]
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def _load(
    cls: type[Any], section: str, toml: Path, environ: Mapping[str, str] | None = None
) -> Any:
    return load_config(
        cls, ["--config", str(toml)], prog=section, section=section, environ=dict(environ or {})
    )


def _check_flags(program: str, args: list[str]) -> None:
    """Every --flag given to a daemon is --config or one of its config fields."""
    cls, _ = DAEMONS[program]
    fields = _fields(cls)
    for arg in args:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            assert name == "config" or name in fields, f"{program}: unknown flag {arg}"


def _check_env(program: str, env: Mapping[str, str]) -> None:
    cls, _ = DAEMONS[program]
    fields = _fields(cls)
    for key in env:
        if key.startswith("FUSED_") and key != "FUSED_CONFIG":
            name = key.removeprefix("FUSED_").lower()
            assert name in fields, f"{program}: {key} names no config field"


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_k8s_manifest_validates_against_api_schema(path: Path, version: str) -> None:
    docs = _yaml_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']} {where}: {exc}")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in _manifests()]
    images = {image["name"] for image in kustomization["images"]}
    for doc in _k8s_objects().values():
        if doc["kind"] == "StatefulSet":
            spec = doc["spec"]["template"]["spec"]
            for container in spec["containers"] + spec.get("initContainers", []):
                assert container["image"].split(":")[0] in images


def test_kustomize_build_validates() -> None:
    """What `kubectl apply -k` would send: kustomize's output, validated object by object."""
    kubectl = _require("kubectl")
    result = _run([kubectl, "kustomize", str(K8S)])
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(docs) == sum(len(_yaml_docs(p)) for p in _manifests())
    for doc in docs:
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "fused"
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_servicemonitor_structure() -> None:
    """ServiceMonitor is a CRD that kubernetes_validate has no schema for: checked by hand."""
    (monitor,) = _yaml_docs(K8S / "servicemonitor.yaml")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, K8S_VERSIONS[-1], strict=True)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert spec["namespaceSelector"]["matchNames"] == ["fused"]
    wanted = spec["selector"]["matchLabels"]
    services = [
        doc
        for (kind, _), doc in _k8s_objects().items()
        if kind == "Service" and wanted.items() <= doc["metadata"]["labels"].items()
    ]
    # The coordinator's ClusterIP service and the participants' service; not the coordinator's
    # headless service too, or its pod would be scraped twice.
    assert sorted(s["metadata"]["name"] for s in services) == [
        "fused-coordinator",
        "fused-participant",
    ]
    assert spec["endpoints"], "no endpoints"
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
        for service in services:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for (kind, name), doc in _k8s_objects().items():
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
    text: str = _k8s_objects()[("ConfigMap", "fused-config")]["data"][key]
    return text


def _k8s_config(cls: type[Any], section: str, tmp_path: Path, env: Mapping[str, str]) -> Any:
    path = tmp_path / f"{section}.toml"
    path.write_text(_configmap_toml(f"{section}.toml"))
    return _load(cls, section, path, env)


def _container(statefulset: str) -> dict[str, Any]:
    template = _k8s_objects()[("StatefulSet", statefulset)]["spec"]["template"]
    container: dict[str, Any] = template["spec"]["containers"][0]
    return container


def _mount(container: Mapping[str, Any], name: str) -> str:
    (path,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == name]
    return str(path)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _secret_keys(name: str) -> set[str]:
    secret = _k8s_objects()[("Secret", name)]
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def _certified_hosts() -> list[str]:
    """The coordinator certificate's names, from secret.yaml's `fusedctl certs init` recipe."""
    text = (K8S / "secret.yaml").read_text(encoding="utf-8")
    text = re.sub(r"\\\n#\s*", " ", text)  # continued command lines in the comment
    match = re.search(r"fusedctl certs init .*--hosts ([\w.,-]+)", text)
    assert match is not None, "secret.yaml shows no `fusedctl certs init --hosts ...`"
    return match.group(1).split(",")


def test_k8s_coordinator(tmp_path: Path) -> None:
    objects = _k8s_objects()
    sts = objects[("StatefulSet", "fused-coordinator")]
    assert sts["spec"]["replicas"] == 1  # SQLite: one writer
    container = _container("fused-coordinator")
    assert container["command"][0] == "fused-coordinator"
    _check_flags("fused-coordinator", container["command"][1:])
    cfg = _k8s_config(CoordinatorConfig, "coordinator", tmp_path, {})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": _port(cfg.listen),
        "metrics": cfg.metrics_port,
        "health": _port(cfg.health_listen),
    }
    assert ports == {"grpc": 50051, "metrics": 9464, "health": 8081}
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
    # The Service carries gRPC and metrics; the health port is for the kubelet only.
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
        for (kind, _), doc in _k8s_objects().items()
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
    assert opened == {_port(cfg.listen), cfg.metrics_port, _port(cfg.health_listen)}
    # gRPC: only this application's pods (participants, an operator's fusedctl pod).
    (grpc_from,) = _allowed_sources(coordinator, _port(cfg.listen))
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
    objects = _k8s_objects()
    sts = objects[("StatefulSet", "fused-participant")]
    replicas = sts["spec"]["replicas"]
    assert replicas == 3
    container = _container("fused-participant")
    assert container["command"][0] == "fused-participant"
    _check_flags("fused-participant", container["command"][1:])
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    _check_env("fused-participant", env)
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


# --- Prometheus ------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    promtool = _require("promtool")
    result = _run([promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    promtool = _require("promtool")
    result = _run([promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests() -> None:
    """deploy/prometheus/alerts_test.yml: every alert fires on a synthetic series."""
    promtool = _require("promtool")
    result = _run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]


def test_every_alert_has_a_unit_test() -> None:
    alerts = {rule["alert"] for rule in _alert_rules()}
    tested = {
        case["alertname"]
        for test in _yaml(PROMETHEUS / "alerts_test.yml")["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]  # a case where it fires, not only one where it stays silent
    }
    assert alerts == tested
    required = {
        "FusedParticipantMarkedOffline",
        "FusedRoundStalled",
        "FusedRejectedUploads",
        "FusedRoundBytesAboveExpected",
    }
    assert required <= alerts
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])


def test_prometheus_scrapes_the_compose_services() -> None:
    config = _yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    services = _yaml(DEPLOY / "compose.yaml")["services"]
    participants = sorted(name for name in services if name.startswith("participant-"))
    assert jobs["fused-coordinator"] == [
        f"coordinator:{_compose_config('coordinator').metrics_port}"
    ]
    assert sorted(jobs["fused-participant"]) == [
        f"{name}:{_compose_config(name).metrics_port}" for name in participants
    ]


# --- metric names in PromQL ------------------------------------------------------------------

_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (Grafana variables allowed)."""
    match = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,.*\)\s*", expr)
    if match:
        return {match.group(1)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers (after strings and ${var})
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping label lists
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    text = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][\w:]*", text):
        following = text[m.end() :].lstrip()
        if following.startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue  # a function call or an operator
        names.add(m.group(0))
    return names


def test_promql_metric_names_helper() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, phase) (rate(fused_x_bucket{instance=~"$c",'
        ' a="b(c)"}[$__rate_interval]))) / on (job) group_left fused_y > 2 * fused_z offset 5m'
        " unless up == bool 1e3"
    )
    assert promql_metric_names(expr) == {"fused_x_bucket", "fused_y", "fused_z", "up"}
    assert promql_metric_names("label_values(fused_a, instance)") == {"fused_a"}


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}


def exported_metric_names() -> set[str]:
    """Every series name the coordinator and the participant agent can export.

    Labelled metrics have no samples until a label set is used, so names come from each
    family's name and type (a counter `x` is exported as x_total, a histogram as x_bucket...).
    """
    names: set[str] = set()
    coordinator, participant = CollectorRegistry(), CollectorRegistry()
    CoordinatorMetrics(coordinator)
    ParticipantMetrics(participant)
    for registry in (coordinator, participant):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
            names.update(sample.name for sample in family.samples)
    return names


def _dashboard() -> dict[str, Any]:
    with (GRAFANA / "dashboards" / "fused.json").open(encoding="utf-8") as f:
        dashboard: dict[str, Any] = json.load(f)
    return dashboard


def _all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def _dashboard_exprs() -> list[str]:
    dashboard = _dashboard()
    exprs = [
        target["expr"]
        for panel in _all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def _alert_exprs() -> list[str]:
    return [str(rule["expr"]) for rule in _alert_rules()]


def _alert_test_series() -> list[str]:
    """The metric names the rule unit tests feed in: they must be real ones too."""
    return [
        series["series"].split("{", 1)[0]
        for test in _yaml(PROMETHEUS / "alerts_test.yml")["tests"]
        for series in test["input_series"]
    ]


@pytest.mark.parametrize(
    "source", ["grafana dashboard", "alert rules", "alert unit tests"], ids=lambda s: s
)
def test_promql_uses_only_exported_metrics(source: str) -> None:
    if source == "grafana dashboard":
        exprs = _dashboard_exprs()
    elif source == "alert rules":
        exprs = _alert_exprs()
    else:
        exprs = _alert_test_series()
    assert exprs
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert used, f"no metric names found in the {source}"
    unknown = sorted(used - exported_metric_names() - PROMETHEUS_SYNTHETIC)
    assert not unknown, f"{source} use metrics that no FUSED process exports: {unknown}"


def test_grafana_dashboard_covers_the_brief() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in _all_panels(dashboard["panels"]) if p["type"] != "row"]
    ids = [p["id"] for p in _all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
    used = set().union(*(promql_metric_names(e) for e in _dashboard_exprs()))
    assert {
        "fused_wire_bytes_total",
        "fused_round_duration_seconds_bucket",
        "fused_participants_online",
        "fused_job_accuracy",
        "fused_job_forget_accuracy",
        "fused_last_round_bytes",
        "fused_expected_round_bytes",
    } <= used
    grouped = " ".join(_dashboard_exprs())
    assert "by (phase" in grouped and "by (participant" in grouped


def test_grafana_provisioning_matches_compose() -> None:
    (source,) = _yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = _yaml(GRAFANA / "provisioning" / "dashboards" / "fused.yml")["providers"]
    grafana = _yaml(DEPLOY / "compose.yaml")["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert "prometheus" in _yaml(DEPLOY / "compose.yaml")["services"]


# --- example configuration -------------------------------------------------------------------

_COMMENTED_KEY = re.compile(r"#([a-z][a-z0-9_]*) = (.+)$")
_ACTIVE_KEY = re.compile(r"([a-z][a-z0-9_]*) = (.+)$")


@pytest.mark.parametrize(
    ("cls", "section"), [(CoordinatorConfig, "coordinator"), (ParticipantConfig, "participant")]
)
def test_example_toml_covers_every_field(cls: type[Any], section: str, tmp_path: Path) -> None:
    example = DEPLOY / f"{section}.example.toml"
    lines = example.read_text(encoding="utf-8").splitlines()
    active = {m.group(1) for line in lines if (m := _ACTIVE_KEY.match(line))}
    commented = {m.group(1) for line in lines if (m := _COMMENTED_KEY.match(line))}
    fields = _fields(cls)
    assert not active & commented
    missing = sorted(set(fields) - active - commented)
    assert not missing, f"{example.name} lacks fields {missing}"
    assert not sorted((active | commented) - set(fields)), "keys that are no fields"
    # TOML has no null: only fields that default to None may be left commented out.
    for name in commented:
        assert _is_optional(cls, name) and fields[name].default is None, name
    # Each key is explained: the lines above it (past other keys) include a comment.
    for i, line in enumerate(lines):
        if _ACTIVE_KEY.match(line) or _COMMENTED_KEY.match(line):
            j = i - 1
            while j >= 0 and (_ACTIVE_KEY.match(lines[j]) or _COMMENTED_KEY.match(lines[j])):
                j -= 1
            assert j >= 0 and lines[j].startswith("# "), f"{example.name}: {line} unexplained"
    # It loads, as it is and with the commented-out keys switched on, and the values arrive.
    for variant, text in (
        ("as-is", "\n".join(lines)),
        ("all-on", "\n".join(_COMMENTED_KEY.sub(r"\1 = \2", line) for line in lines)),
    ):
        path = tmp_path / f"{variant}.toml"
        path.write_text(text + "\n", encoding="utf-8")
        cfg = _load(cls, section, path)
        with path.open("rb") as f:
            table = tomllib.load(f)[section]
        hints = typing.get_type_hints(cls)
        for name, value in table.items():
            kind = hints[name]
            if isinstance(kind, types.UnionType):
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            assert getattr(cfg, name) == kind(value), f"{variant}: {name}"
        if variant == "all-on":
            assert set(table) == set(fields)


# --- Dockerfile ------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)  # line continuations
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_structure() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build and a runtime stage"
    stages = [rest.split()[-1] for rest in froms if " AS " in rest.upper()]
    assert len(stages) == len(froms), "every stage is named"
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    final = instructions[last_from:]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert any(k == "COPY" and rest.startswith(f"--from={stages[0]}") for k, rest in final)
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    for program in ("fused-coordinator", "fused-participant", "fusedctl"):
        assert program in runs, f"the build smoke-tests {program}"
        assert program in text
    assert not any(k == "ENTRYPOINT" for k, _ in final), "the command picks the program"
    (cmd,) = [json.loads(rest) for k, rest in final if k == "CMD"]
    assert cmd[0] in DAEMONS
    _check_flags(cmd[0], cmd[1:])
    env = " ".join(rest for k, rest in final if k == "ENV")
    assert "FUSED_" not in env, "image-wide FUSED_* variables would override mounted TOML"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    assert ignore[ignore.index("**") + 1 :], "everything ignored but an allow-list"
    assert not any(line.startswith("!.venv") or line == "!runs/" for line in ignore)


# --- compose ---------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = _yaml(DEPLOY / "compose.yaml")
    return compose


def _compose_config(service: str) -> Any:
    """The config a compose service's daemon would load: its TOML plus its environment."""
    spec = _compose()["services"][service]
    program = spec["command"][0]
    cls, section = DAEMONS[program]
    env = spec.get("environment", {})
    _check_env(program, env)
    _check_flags(program, spec["command"][1:])
    config = spec["command"][spec["command"].index("--config") + 1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in spec["volumes"]}
    return _load(cls, section, DEPLOY / mounts[config], env)


def test_compose_services() -> None:
    services = _compose()["services"]
    assert {
        "init",
        "coordinator",
        "participant-0",
        "participant-1",
        "participant-2",
        "prometheus",
        "grafana",
    } <= set(services)
    fused = {name: s for name, s in services.items() if s.get("image", "").startswith("fused")}
    assert len({s["image"] for s in fused.values()}) == 1
    for name, spec in fused.items():
        assert spec["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert (DEPLOY / spec["build"]["context"] / spec["build"]["dockerfile"]).is_file()
        assert spec["user"].split(":")[0] not in {"0", "root"}, name
        assert spec["read_only"] is True, name
        assert spec["cap_drop"] == ["ALL"], name
    for name, spec in services.items():
        # Only the init service sees the CA key (it could mint any identity).
        sources = [v.split(":")[0] for v in spec.get("volumes", [])]
        assert ("ca" in sources) == (name == "init"), name
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
            else:
                assert source in _compose()["volumes"], f"{name}: undeclared volume {source}"


def test_compose_configs_load_and_agree() -> None:
    services = _compose()["services"]
    coordinator = _compose_config("coordinator")
    assert coordinator.tls_ca is not None and coordinator.auth_file is not None  # mTLS + tokens
    init = services["init"]["command"][-1]
    participants = sorted(name for name in services if name.startswith("participant-"))
    assert f"--participants {len(participants)}" in init
    for name in participants:
        cfg = _compose_config(name)
        pid = cfg.participant_id
        assert name == f"participant-{pid.removeprefix('p')}"
        assert cfg.coordinator == f"coordinator:{coordinator.listen.rsplit(':', 1)[1]}"
        assert cfg.data_dir.name == pid and f"--out {cfg.data_dir.parent}" in init
        assert cfg.tls_ca is not None and cfg.tls_cert is not None and cfg.token_file is not None
        assert cfg.tls_cert.name == f"participant-{pid}.pem"
        assert cfg.token_file.name == f"participant-{pid}.token"
        certified = re.search(r"certs init .*--participants ([\w,]+)", init)
        assert certified is not None and pid in certified.group(1).split(",")
    assert "--hosts coordinator," in init, "the server certificate must name `coordinator`"
    assert "mv /var/lib/fused/certs/ca.key /var/lib/fused/ca/" in init


def test_compose_health_check_uses_the_health_port() -> None:
    """The gRPC port requires a client certificate; the health check dials the plaintext
    health port instead, which stays on the container's loopback, unpublished."""
    coordinator = _compose_config("coordinator")
    assert coordinator.tls_ca is not None
    host, port = coordinator.health_listen.rsplit(":", 1)
    assert host == "127.0.0.1"
    spec = _compose()["services"]["coordinator"]
    script = " ".join(spec["healthcheck"]["test"])
    assert f"127.0.0.1:{port}" in script and "insecure_channel" in script
    assert ".key" not in script, "the health check needs no private key"
    published = [str(p).rsplit(":", 1)[-1] for p in spec.get("ports", [])]
    assert port not in published


def test_docker_compose_config() -> None:
    """Schema check by Compose itself, where a client is installed (no daemon needed)."""
    if shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"]
    elif shutil.which("docker") and _run(["docker", "compose", "version"]).returncode == 0:
        cmd = ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"]
    else:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    result = _run(cmd, cwd=DEPLOY)
    assert result.returncode == 0, result.stderr


# --- systemd ---------------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists; keys may repeat, continuations joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


UNITS = {
    "fused-coordinator.service": "fused-coordinator",
    "fused-participant@.service": "fused-participant",
}


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit_hardening(name: str) -> None:
    unit = _unit(SYSTEMD / name)
    service = unit["Service"]
    values: dict[str, list[str]] = {}
    for key, value in service:
        values.setdefault(key, []).append(value)

    def one(key: str) -> str:
        assert key in values, f"{name}: {key}= missing"
        return values[key][-1]

    assert one("Restart") == "on-failure"
    assert values.get("DynamicUser") == ["yes"] or one("User") not in {"root", "0"}
    assert one("StateDirectory").startswith("fused/")
    assert one("ConfigurationDirectory") == "fused"
    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "ProtectHome",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert one(key) == "yes", f"{name}: {key}"
    assert one("ProtectSystem") == "strict"
    assert set(one("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in values["SystemCallFilter"]
    assert one("CapabilityBoundingSet") == ""
    assert unit["Install"] == [("WantedBy", "multi-user.target")]
    # The command: a real program, its TOML in /etc/fused, and only flags it knows.
    argv = shlex.split(one("ExecStart"))
    assert Path(argv[0]).name == UNITS[name]
    _check_flags(UNITS[name], argv[1:])
    assert argv[argv.index("--config") + 1].startswith("/etc/fused/")
    for credential in values.get("LoadCredential", []):
        assert credential.split(":", 1)[1].startswith("/etc/fused/"), credential


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser; the programs are stubbed (they are not installed here)."""
    analyze = _require("systemd-analyze")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for program in DAEMONS:
        stub = stubs / program
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    for name in UNITS:
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        assert "/opt/fused/bin/" in text
        (tmp_path / name).write_text(text.replace("/opt/fused/bin/", f"{stubs}/"))
    for target in ("fused-coordinator.service", "fused-participant@p0.service"):
        result = _run([analyze, "verify", "--man=no", str(tmp_path / target)], cwd=tmp_path)
        output = result.stdout + result.stderr
        # verify exits 0 on many warnings ("Unknown key", "Failed to parse"): none allowed.
        ours = [line for line in output.splitlines() if "fused-" in line]
        assert result.returncode == 0 and not ours, output
        result = _run([analyze, "security", "--offline=yes", str(tmp_path / target)])
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        if match is None:
            continue  # an older systemd-analyze without --offline
        assert float(match.group(1)) <= 2.0, result.stdout
