"""What the linters cannot see: the deployment files agree with each other and with RaftMQ's
options (a misspelt RAFTMQ_ variable would be ignored silently), and the pinned
requirements satisfy pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
from packaging.requirements import Requirement

from node import config
from tests.deploy import manifests

OPTION_VARS = {config.env_name(o.name) for o in config.OPTIONS}
# Read by `raftmq cluster …` and the image's HEALTHCHECK, not by `raftmq serve`.
# read by the admin CLI and the image's HEALTHCHECK, not by the node
OTHER_VARS = {"RAFTMQ_ADMIN_URL", "RAFTMQ_ADMIN_USER", "RAFTMQ_ADMIN_PASSWORD",
              "RAFTMQ_METRICS_URL"}


def _raftmq_vars(env: dict[str, Any]) -> set[str]:
    return {k for k in env if k.startswith("RAFTMQ_")}


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return manifests.k8s_resources()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return manifests.compose_config()


def _container(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (c,) = manifests.statefulset(k8s)["spec"]["template"]["spec"]["containers"]
    return c


def test_every_raftmq_variable_is_an_option(k8s: dict[tuple[str, str], dict[str, Any]],
                                           compose: dict[str, Any]) -> None:
    sources: dict[str, set[str]] = {
        "deploy/Dockerfile": _raftmq_vars(manifests.image_env()),
        "configmap": _raftmq_vars(k8s[("ConfigMap", "raftmq-config")]["data"]),
        "statefulset env": {e["name"] for e in _container(k8s)["env"]} - {"POD_IP"},
        "deploy/compose.env.example": {
            line.split("=", 1)[0] for line in manifests.COMPOSE_ENV.read_text().splitlines()
            if line and not line.startswith("#")},
    }
    for svc in compose["services"]:
        sources[f"compose {svc}"] = _raftmq_vars(compose["services"][svc]["environment"])
    for where, names in sources.items():
        assert names, where
        unknown = names - OPTION_VARS - OTHER_VARS
        assert not unknown, f"{where}: not RaftMQ options: {sorted(unknown)}"


def test_statefulset_services_and_budget_agree(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    sts = manifests.statefulset(k8s)
    spec = sts["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["podManagementPolicy"] == "Parallel"
    headless = k8s[("Service", spec["serviceName"])]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    cm = k8s[("ConfigMap", "raftmq-config")]["data"]
    assert cm["RAFTMQ_HEADLESS_SERVICE"] == spec["serviceName"]
    assert cm["RAFTMQ_PEER_DISCOVERY"] == "statefulset"
    assert int(cm["RAFTMQ_REPLICAS"]) == spec["replicas"]

    container = _container(k8s)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"amqp": int(cm["RAFTMQ_AMQP_PORT"]), "http": int(cm["RAFTMQ_METRICS_PORT"]),
                     "management": int(cm["RAFTMQ_MANAGEMENT_PORT"]), "amqps": 5671,
                     "raft": int(cm["RAFTMQ_RAFT_PORT"])}
    for (kind, _), doc in k8s.items():
        if kind == "Service":
            assert doc["spec"]["selector"].items() <= labels.items()
            for p in doc["spec"]["ports"]:
                assert ports[p["targetPort"]] == p["port"]
        if kind == "PodDisruptionBudget":
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
            assert doc["spec"]["maxUnavailable"] == 1
    assert "raft" in {p["name"] for p in k8s[("Service", spec["serviceName"])]["spec"]["ports"]}
    assert "raft" not in {p["name"] for p in k8s[("Service", "raftmq")]["spec"]["ports"]}

    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "readinessProbe",
                                                   "livenessProbe")}
    assert {k: (v["path"], v["port"]) for k, v in probes.items()} == {
        "startupProbe": ("/healthz", "http"), "readinessProbe": ("/healthz", "http"),
        "livenessProbe": ("/livez", "http")}
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["raftmq", "node", "drain"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == manifests.image_env()["RAFTMQ_DATA_DIR"]
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["data"]
    pod_sc = spec["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    # Every Secret / ConfigMap key the pod reads exists.
    for item in container["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secret = k8s[("Secret", ref["name"])]
            assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}


def test_every_pod_configuration_loads(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    replicas = manifests.statefulset(k8s)["spec"]["replicas"]
    seen = set()
    for i in range(replicas):
        env = manifests.pod_env(i, f"10.0.0.{10 + i}", "prod", k8s)
        cfg = config.load(None, env)
        assert cfg.node_id == f"raftmq-{i}"
        assert cfg.raft_bind == f"10.0.0.{10 + i}:25672"
        assert cfg.metrics_host == f"10.0.0.{10 + i}"
        assert cfg.amqp_host == "0.0.0.0"
        assert cfg.cluster_secret and cfg.default_user != "guest"
        assert len(cfg.peers) == replicas - 1 and cfg.raft_address not in cfg.peers
        seen.add(cfg.raft_address)
    assert seen == {f"raftmq-{i}.raftmq-headless.prod.svc.cluster.local:25672"
                    for i in range(replicas)}


def test_every_compose_service_configuration_loads(compose: dict[str, Any]) -> None:
    services = compose["services"]
    addresses = {}
    published: list[str] = []
    volumes: list[str] = []
    for name, svc in services.items():
        cfg = config.load(None, manifests.service_env(compose, name))
        assert cfg.node_id == name and cfg.raft_address == f"{name}:25672"
        assert cfg.cluster_secret and cfg.default_user != "guest"
        addresses[name] = (cfg.raft_address, set(cfg.peers))
        published += [p["published"] for p in svc["ports"]]
        volumes += [v["source"] for v in svc["volumes"] if v["target"] == cfg.data_dir]
        assert svc["restart"] in ("on-failure", "unless-stopped", "always")
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    everyone = {a for a, _ in addresses.values()}
    for own, peers in addresses.values():
        assert peers == everyone - {own}
    assert sorted(published) == ["15672", "15673", "15674", "15692", "15693", "15694", "5672",
                                 "5673", "5674"]
    assert len(set(volumes)) == len(services) == 3


def test_dockerfile_and_dockerignore() -> None:
    text = manifests.DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    assert re.search(r"^EXPOSE 5672 5671 15672 15692 25672$", text, re.M)
    assert "HEALTHCHECK" in text and "/livez" in text
    env = manifests.image_env()
    assert env["RAFTMQ_AMQP_HOST"] == "0.0.0.0" and env["RAFTMQ_DATA_DIR"] == "/var/lib/raftmq"
    assert manifests.image_command() == (["raftmq"], ["serve"])
    # Everything the Dockerfile copies is let through .dockerignore (which excludes all else).
    ignore = (manifests.REPO / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = re.findall(r"^COPY (.+) \S+$", text, re.M)
    for sources in copied:
        for src in sources.split():
            assert src.rstrip("/") in allowed, f"COPY {src} is excluded by .dockerignore"


def test_requirements_lock_pins_every_runtime_dependency() -> None:
    pyproject = tomllib.loads((manifests.REPO / "pyproject.toml").read_text())
    lock: dict[str, str] = {}
    for line in (manifests.REPO / "deploy" / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"requirements.lock: {line!r} is not pinned with =="
            lock[name.lower()] = version
    for spec in pyproject["project"]["dependencies"]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in lock, f"{name} is a dependency but not in deploy/requirements.lock"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"requirements.lock pins {name}=={lock[name]}, pyproject.toml wants {req.specifier}; "
            "regenerate with .venv/bin/python deploy/lock_requirements.py")
