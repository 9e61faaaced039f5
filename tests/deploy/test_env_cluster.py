"""Three node processes on loopback, configured ONLY by the environment the deployment files
give a container: the Kubernetes StatefulSet (deploy/kubernetes) and docker-compose.yml.

Each "pod" or "container" gets an address of its own, 127.<a>.<b>.1..3, standing in for its
network namespace, and the DNS names (pod names under the headless service; compose service
names) are mapped to those addresses with RAFTMQ_STATIC_HOSTS, which the node resolves inside
its own process (no /etc/hosts). The only other changes to the files' environment are what a
shared machine forces, listed in ``_simulate``: listeners on 0.0.0.0 bind the pod's own
address, the data directory is a temporary one, and a port is moved only if something on this
machine already holds it on every address.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest

from harness.procs import log_tail, start_group, stop_group
from tests.deploy import manifests

pytestmark = pytest.mark.timeout(120)

FORM_TIMEOUT_S = 25.0
PORT_VARS = {"RAFTMQ_AMQP_PORT": 5672, "RAFTMQ_METRICS_PORT": 15692,
             "RAFTMQ_MANAGEMENT_PORT": 15672}


@dataclass
class Pod:
    name: str
    ip: str
    env: dict[str, str]
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def amqp_port(self) -> int:
        return int(self.env.get("RAFTMQ_AMQP_PORT", PORT_VARS["RAFTMQ_AMQP_PORT"]))

    @property
    def http(self) -> str:
        return f"http://{self.ip}:{self.env.get('RAFTMQ_MANAGEMENT_PORT', 15672)}"

    def start(self) -> None:
        assert self.argv[0] == "raftmq", self.argv
        argv = [sys.executable, "-m", "node", *self.argv[1:]]
        # Nothing from this shell's environment but PATH and where the code is.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(manifests.REPO),
               **self.env}
        self.proc = start_group(argv, env, self.log, cwd=manifests.REPO)

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout=timeout)

    def status(self) -> dict[str, Any] | None:
        req = urllib.request.Request(self.http + "/api/status")
        user = self.env.get("RAFTMQ_ADMIN_USER", self.env.get("RAFTMQ_DEFAULT_USER", "guest"))
        password = self.env.get("RAFTMQ_ADMIN_PASSWORD",
                                self.env.get("RAFTMQ_DEFAULT_PASS", "guest"))
        req.add_header("Authorization", "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None


def _ip_block(n: int = 3) -> list[str]:
    a, b = random.randrange(64, 250), random.randrange(1, 250)
    return [f"127.{a}.{b}.{i}" for i in range(1, n + 1)]


def _free_on_all(ips: list[str], port: int) -> bool:
    socks = []
    try:
        for ip in ips:
            s = socket.socket()
            socks.append(s)
            s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def _port_for(ips: list[str], wanted: int) -> int:
    if _free_on_all(ips, wanted):
        return wanted
    for _ in range(200):
        with socket.socket() as s:
            s.bind((ips[0], 0))
            port = int(s.getsockname()[1])
        if _free_on_all(ips, port):
            return port
    raise RuntimeError("no port free on every test address")


def _simulate(env: dict[str, str], ip: str, data_dir: Path, static_hosts: dict[str, str],
              ports: dict[int, int]) -> dict[str, str]:
    """The container's environment as this machine can run it (see the module docstring)."""
    out = dict(env)
    for key, value in env.items():
        if key.startswith("RAFTMQ_") and key.endswith("_HOST") and value in ("0.0.0.0", "::"):
            out[key] = ip
    out["RAFTMQ_DATA_DIR"] = str(data_dir)
    out["RAFTMQ_STATIC_HOSTS"] = ",".join(f"{n}={a}" for n, a in static_hosts.items())
    for old, new in ports.items():
        if old == new:
            continue
        for key, value in out.items():
            if key in PORT_VARS or key == "RAFTMQ_RAFT_PORT":
                out[key] = str(new) if value == str(old) else value
            elif key.startswith("RAFTMQ_"):
                out[key] = re.sub(rf":{old}\b", f":{new}", value)
        for key, default in PORT_VARS.items():
            if key not in env and default == old:
                out[key] = str(new)
    return out


def _wait_one_cluster(pods: list[Pod], members: list[str]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + FORM_TIMEOUT_S
    views: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for pod in pods:
            assert pod.proc is not None
            if pod.proc.poll() is not None:
                pytest.fail(f"{pod.name} exited with {pod.proc.returncode}:\n{log_tail(pod.log)}")
        views = {pod.name: pod.status() for pod in pods}
        ok = all(v and v["ready"] and not v["isolated"] for v in views.values())
        leaders = {v["raft"]["leader"] for v in views.values() if v}
        if ok and len(leaders) == 1 and None not in leaders and all(
                sorted(v["raft"]["members"]) == sorted(members) for v in views.values() if v):
            return views
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{log_tail(p.log, 25)}" for p in pods)
    pytest.fail(f"no single 3-member cluster after {FORM_TIMEOUT_S}s: {views}\n{logs}")


def _amqp(pod: Pod, env: dict[str, str]) -> pika.BlockingConnection:
    creds = pika.PlainCredentials(env["RAFTMQ_DEFAULT_USER"], env["RAFTMQ_DEFAULT_PASS"])
    return pika.BlockingConnection(pika.ConnectionParameters(
        pod.ip, pod.amqp_port, credentials=creds, socket_timeout=5, connection_attempts=3,
        retry_delay=0.5, blocked_connection_timeout=10))


def _publish_and_get(pods: list[Pod]) -> None:
    """Publish (confirmed) through one node, get the message through another."""
    queue = f"deploy-test-{random.randrange(1 << 30)}"
    with _amqp(pods[1], pods[1].env) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"hello from the deployment test",
                         pika.BasicProperties(delivery_mode=2))
    with _amqp(pods[2], pods[2].env) as conn:
        ch = conn.channel()
        for _ in range(50):
            method, _props, body = ch.basic_get(queue, auto_ack=True)
            if method is not None:
                break
            time.sleep(0.1)
        assert body == b"hello from the deployment test"


@pytest.fixture
def pods_cleanup() -> Iterator[list[Pod]]:
    started: list[Pod] = []
    yield started
    for pod in started:
        if pod.proc is not None and pod.proc.poll() is None:
            os.killpg(pod.proc.pid, signal.SIGTERM)
    for pod in started:
        pod.stop(timeout=5)


def _admin(pod: Pod, *args: str) -> str:
    """``kubectl exec <pod> -- raftmq cluster …``: the CLI with the pod's environment (its
    RAFTMQ_ADMIN_URL names the pod's HTTP listener)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(manifests.REPO),
           **pod.env}
    proc = subprocess.run([sys.executable, "-m", "node", "cluster", *args], env=env,
                          cwd=manifests.REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"raftmq cluster {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def test_statefulset_environment_forms_a_cluster_and_scales(tmp_path: Path,
                                                            pods_cleanup: list[Pod]) -> None:
    resources = manifests.k8s_resources()
    sts = manifests.statefulset(resources)
    replicas = int(sts["spec"]["replicas"])
    assert replicas == 3
    name, service, namespace = sts["metadata"]["name"], sts["spec"]["serviceName"], "mq-test"
    ips = _ip_block(replicas + 1)  # one more for scaling up
    base = manifests.pod_env(0, ips[0], namespace, resources)
    ports = {p: _port_for(ips, p) for p in (
        int(base.get("RAFTMQ_AMQP_PORT", 5672)), int(base.get("RAFTMQ_METRICS_PORT", 15692)),
        int(base.get("RAFTMQ_MANAGEMENT_PORT", 15672)),
        int(base.get("RAFTMQ_RAFT_PORT", 25672)))}
    # The cluster's DNS: pod names and their names under the headless service.
    hosts: dict[str, str] = {}
    for i, ip in enumerate(ips):
        hosts[f"{name}-{i}"] = ip
        hosts[f"{name}-{i}.{service}.{namespace}.svc.cluster.local"] = ip
    for i, ip in enumerate(ips):
        env = manifests.pod_env(i, ip, namespace, resources)  # the same env for every pod...
        pods_cleanup.append(Pod(
            f"{name}-{i}", ip, _simulate(env, ip, tmp_path / f"{name}-{i}", hosts, ports),
            manifests.pod_argv(resources), tmp_path / f"{name}-{i}.log"))
    extra = pods_cleanup.pop()  # ...but only `replicas` of them run for now
    for pod in pods_cleanup:
        pod.start()

    raft_port = ports[int(base.get("RAFTMQ_RAFT_PORT", 25672))]
    members = [f"{name}-{i}.{service}.{namespace}.svc.cluster.local:{raft_port}"
               for i in range(replicas)]
    views = _wait_one_cluster(pods_cleanup, members)
    for pod in pods_cleanup:
        view = views[pod.name]
        assert view is not None
        assert view["node"] == pod.name  # node id = the pod's hostname
        assert view["raft_address"] == f"{pod.name}.{service}.{namespace}.svc.cluster.local:{raft_port}"
    # Raft listens on the pod's own address only, not on 0.0.0.0: the address of the pod not
    # started yet refuses the connection.
    with socket.create_connection((ips[0], raft_port), timeout=2):
        pass
    with pytest.raises(OSError), socket.create_connection((ips[-1], raft_port), timeout=2):
        pass
    _publish_and_get(pods_cleanup)

    # deploy/kubernetes/README.md: scale up (kubectl scale --replicas=4, then add the new pod)...
    pods = list(pods_cleanup)
    pods_cleanup.append(extra)
    extra.start()
    new_member = f"{extra.name}.{service}.{namespace}.svc.cluster.local:{raft_port}"
    assert "added" in _admin(pods[0], "add", new_member)
    _wait_one_cluster([*pods, extra], [*members, new_member])
    assert "leader:" in _admin(extra, "status")
    # ...and down again (remove the highest ordinal first, then kubectl scale --replicas=3).
    assert "removed" in _admin(pods[1], "remove", new_member)
    _wait_one_cluster(pods, members)
    extra.stop()


def test_compose_environment_forms_a_cluster_and_keeps_confirmed_messages(
        tmp_path: Path, pods_cleanup: list[Pod]) -> None:
    config = manifests.compose_config()
    services = sorted(config["services"])
    assert services == ["n1", "n2", "n3"]
    ips = _ip_block()
    base = manifests.service_env(config, "n1")
    raft_port = int(base["RAFTMQ_RAFT_ADDRESS"].rpartition(":")[2])
    ports = {p: _port_for(ips, p) for p in (int(base.get("RAFTMQ_AMQP_PORT", 5672)),
                                            int(base.get("RAFTMQ_METRICS_PORT", 15692)),
                                            int(base.get("RAFTMQ_MANAGEMENT_PORT", 15672)),
                                            raft_port)}
    hosts = dict(zip(services, ips, strict=True))  # Docker's DNS: service name → container
    for svc, ip in hosts.items():
        env = manifests.service_env(config, svc)
        pods_cleanup.append(Pod(svc, ip, _simulate(env, ip, tmp_path / svc, hosts, ports),
                                manifests.service_argv(config, svc), tmp_path / f"{svc}.log"))
    for pod in pods_cleanup:
        pod.start()
    members = [f"{svc}:{ports[raft_port]}" for svc in services]
    views = _wait_one_cluster(pods_cleanup, members)
    for pod in pods_cleanup:
        assert views[pod.name]["node"] == pod.name
        # The HTTP address each node advertises is reachable by the others (its service name
        # resolved to its address), so `raftmq cluster status` works from any container.
        nodes = views[pod.name]["nodes"]
        assert nodes[pod.name]["http_address"].startswith(pod.ip + ":"), nodes
    _publish_and_get(pods_cleanup)

    # The README's demonstration: publish with confirms, kill n1 hard in the middle, read back.
    user, password = base["RAFTMQ_DEFAULT_USER"], base["RAFTMQ_DEFAULT_PASS"]
    urls = [f"amqp://{user}:{password}@{p.ip}:{p.amqp_port}/" for p in pods_cleanup]
    check = subprocess.Popen(
        [sys.executable, str(manifests.REPO / "deploy" / "confirm_check.py"), "--count", "1500",
         "--timeout", "40", *urls],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert check.stdout is not None
        out = []
        for line in check.stdout:
            out.append(line)
            if line.startswith("confirmed 500"):
                n1 = pods_cleanup[0].proc
                assert n1 is not None
                os.killpg(n1.pid, signal.SIGKILL)  # like `docker compose kill n1`
                break
        rest, _ = check.communicate(timeout=60)
        out.append(rest)
    finally:
        if check.poll() is None:
            check.kill()
    text = "".join(out)
    print(text)  # shown with -s or on failure
    assert check.returncode == 0, text
    assert "OK: every confirmed message is there" in text, text
    assert "confirmed 500" in text and "reconnecting" in text, text
