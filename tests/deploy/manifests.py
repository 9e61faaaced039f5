"""Read the deployment files as a container runtime would: the image's ENV and CMD
(deploy/Dockerfile), a StatefulSet pod's environment (deploy/kubernetes, with ConfigMaps,
Secrets, the downward API and ``$(VAR)`` expansion), a compose service's environment (the
real ``docker-compose config``, with deploy/compose.env.example as the ``.env``)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
K8S_DIR = REPO / "deploy" / "kubernetes"
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_ENV = REPO / "deploy" / "compose.env.example"
VENV_BIN = REPO / ".venv" / "bin"

Doc = dict[str, Any]


# --- Dockerfile ------------------------------------------------------------------------------


def _instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def image_env(path: Path = DOCKERFILE) -> dict[str, str]:
    """Every ``ENV key=value`` of the Dockerfile, in order."""
    env: dict[str, str] = {}
    for word, rest in _instructions(path):
        if word == "ENV":
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {rest!r}: use the key=value form"
                env[key] = value
    return env


def image_command(path: Path = DOCKERFILE) -> tuple[list[str], list[str]]:
    """(ENTRYPOINT, CMD) in exec form."""
    entry: list[str] = []
    cmd: list[str] = []
    for word, rest in _instructions(path):
        if word == "ENTRYPOINT":
            entry = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
    return entry, cmd


# --- Kubernetes ------------------------------------------------------------------------------


def k8s_resources(directory: Path = K8S_DIR) -> dict[tuple[str, str], Doc]:
    """(kind, name) → resource, for every resource the kustomization lists."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    out: dict[tuple[str, str], Doc] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((directory / name).read_text()):
            if doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def kustomized_image(directory: Path = K8S_DIR) -> dict[str, str]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return {i["name"]: i.get("newTag", "latest") for i in kustomization.get("images", [])}


def _secret_data(secret: Doc) -> dict[str, str]:
    import base64

    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables are replaced, ``$$`` is a literal
    ``$``, references to undefined variables are left as they are."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


def statefulset(resources: dict[tuple[str, str], Doc]) -> Doc:
    (sts,) = [d for (kind, _), d in resources.items() if kind == "StatefulSet"]
    return sts


def pod_env(ordinal: int, pod_ip: str, namespace: str = "default",
            resources: dict[tuple[str, str], Doc] | None = None) -> dict[str, str]:
    """The environment of pod ``<statefulset>-<ordinal>``'s RaftMQ container, as the kubelet
    builds it: image ENV, then envFrom, then env (in order, with ``$(VAR)`` expansion), plus
    the HOSTNAME Kubernetes sets to the pod's name."""
    resources = resources or k8s_resources()
    sts = statefulset(resources)
    pod_name = f"{sts['metadata']['name']}-{ordinal}"
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = dict(image_env())
    env["HOSTNAME"] = pod_name
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = resources[("ConfigMap", source["configMapRef"]["name"])].get("data", {})
        else:
            data = _secret_data(resources[("Secret", source["secretRef"]["name"])])
        env.update({prefix + k: str(v) for k, v in data.items()})
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace, "status.podIP": pod_ip,
              "status.podIPs": pod_ip}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
            continue
        ref = item["valueFrom"]
        if "fieldRef" in ref:
            path = ref["fieldRef"]["fieldPath"]
            assert path in fields, f"pod field {path} is not simulated by this test"
            env[item["name"]] = fields[path]
        elif "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            env[item["name"]] = _secret_data(resources[("Secret", key["name"])])[key["key"]]
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[item["name"]] = str(resources[("ConfigMap", key["name"])]["data"][key["key"]])
        else:
            raise AssertionError(f"env {item['name']}: valueFrom {ref} is not simulated")
    return env


def pod_argv(resources: dict[tuple[str, str], Doc] | None = None) -> list[str]:
    """The container's command line: ``command`` (else ENTRYPOINT) + ``args`` (else CMD)."""
    resources = resources or k8s_resources()
    (container,) = statefulset(resources)["spec"]["template"]["spec"]["containers"]
    entry, cmd = image_command()
    return list(container.get("command", entry)) + list(container.get("args", cmd))


# --- docker compose --------------------------------------------------------------------------


def compose_config() -> Doc:
    """``docker-compose config`` as JSON: the model Compose itself builds from
    docker-compose.yml (anchors merged, ``${VAR}`` interpolated from the example env file)."""
    out = subprocess.run(
        [str(VENV_BIN / "docker-compose"), "--project-directory", str(REPO), "-f",
         str(COMPOSE_FILE), "--env-file", str(COMPOSE_ENV), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    return json.loads(out)


def service_env(config: Doc, service: str) -> dict[str, str]:
    """A compose service's container environment: image ENV, then ``environment``; HOSTNAME is
    the service's ``hostname``."""
    svc = config["services"][service]
    env = dict(image_env())
    env["HOSTNAME"] = svc.get("hostname", service)
    env.update({k: "" if v is None else str(v) for k, v in (svc.get("environment") or {}).items()})
    return env


def service_argv(config: Doc, service: str) -> list[str]:
    svc = config["services"][service]
    entry, cmd = image_command()
    return list(svc.get("entrypoint") or entry) + list(svc.get("command") or cmd)
