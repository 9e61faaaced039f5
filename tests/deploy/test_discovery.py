"""Peer discovery (node/services/discovery.py): pure functions, and config.load with discovery settings."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from node import cli, config
from node.services import discovery


def load(env: dict[str, str], argv: list[str] = ()) -> config.Config:  # type: ignore[assignment]
    args = cli._parser().parse_args(["serve", *argv])
    return config.load(args, env)


STS = {
    "RAFTMQ_PEER_DISCOVERY": "statefulset",
    "RAFTMQ_HEADLESS_SERVICE": "raftmq-headless",
    "RAFTMQ_REPLICAS": "3",
    "RAFTMQ_CLUSTER_SECRET": "s",
    "POD_IP": "10.1.2.3",
}


@pytest.fixture(autouse=True)
def _no_static_hosts() -> object:
    """Tests that install a static host map leave the process's resolver as they found it."""
    yield
    discovery.install_static_hosts({})


@pytest.mark.parametrize(
    ("hostname", "statefulset", "expected"),
    [
        ("raftmq-0", "", ("raftmq", 0)),
        ("raftmq-12", "", ("raftmq", 12)),
        ("my-broker-2", "", ("my-broker", 2)),
        ("my-broker-2.my-svc.ns.svc.cluster.local", "", ("my-broker", 2)),
        ("my-broker-2", "my-broker", ("my-broker", 2)),
        ("RAFTMQ-1", "", ("raftmq", 1)),
    ],
)
def test_pod_ordinal(hostname: str, statefulset: str, expected: tuple[str, int]) -> None:
    assert discovery.pod_ordinal(hostname, statefulset) == expected


@pytest.mark.parametrize(
    ("hostname", "statefulset", "named"),
    [
        ("raftmq", "", "HOSTNAME"),
        ("raftmq-", "", "HOSTNAME"),
        ("raftmq-01", "", "HOSTNAME"),
        ("raftmq-x", "", "HOSTNAME"),
        ("-1", "", "HOSTNAME"),
        ("other-1", "raftmq", "RAFTMQ_STATEFULSET_NAME"),
        ("raftmq-a-1", "raftmq", "RAFTMQ_STATEFULSET_NAME"),
    ],
)
def test_pod_ordinal_errors_name_the_setting(hostname: str, statefulset: str, named: str) -> None:
    with pytest.raises(discovery.DiscoveryError, match=named):
        discovery.pod_ordinal(hostname, statefulset)


def test_identity_short_names() -> None:
    ident = discovery.statefulset_identity("raftmq-1", service="raftmq-headless", replicas=3)
    assert ident.node_id == "raftmq-1"
    assert ident.ordinal == 1
    assert ident.raft_address == "raftmq-1.raftmq-headless:25672"
    assert ident.peers == ("raftmq-0.raftmq-headless:25672", "raftmq-2.raftmq-headless:25672")


def test_identity_fully_qualified_with_namespace() -> None:
    ident = discovery.statefulset_identity(
        "mq-0", service="mq", replicas=2, port=4000, namespace="prod", cluster_domain="k8s.example"
    )
    assert ident.raft_address == "mq-0.mq.prod.svc.k8s.example:4000"
    assert ident.peers == ("mq-1.mq.prod.svc.k8s.example:4000",)


def test_identity_of_a_pod_added_by_scaling_up_lists_every_seed_member() -> None:
    ident = discovery.statefulset_identity("raftmq-3", service="h", replicas=3)
    assert ident.peers == ("raftmq-0.h:25672", "raftmq-1.h:25672", "raftmq-2.h:25672")


def test_single_replica_has_no_peers() -> None:
    assert discovery.statefulset_identity("raftmq-0", service="h", replicas=1).peers == ()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"service": "", "replicas": 3}, "RAFTMQ_HEADLESS_SERVICE"),
        ({"service": "h", "replicas": 0}, "RAFTMQ_REPLICAS"),
        ({"service": "h", "replicas": 3, "port": 0}, "RAFTMQ_RAFT_PORT"),
    ],
)
def test_identity_errors(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(discovery.DiscoveryError, match=named):
        discovery.statefulset_identity("raftmq-0", **kwargs)  # type: ignore[arg-type]


def test_parse_static_hosts() -> None:
    assert discovery.parse_static_hosts(" a=127.0.0.2, B.example.=::1 ,") == (
        ("a", "127.0.0.2"), ("b.example", "::1"))
    for bad in ("a", "=1.2.3.4", "a=notanip"):
        with pytest.raises(ValueError):
            discovery.parse_static_hosts(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10.0.0.7", ("10.0.0.7", None)), ("h:25672", ("h", 25672)), ("fd00::7", ("fd00::7", None)),
     ("host", ("host", None))],
)
def test_split_host_port(value: str, expected: tuple[str, int | None]) -> None:
    assert discovery.split_host_port(value) == expected


def test_static_hosts_resolve_inside_the_process_only_for_listed_names() -> None:
    discovery.install_static_hosts({"raftmq-0.raftmq-headless": "127.0.0.9"})
    infos = socket.getaddrinfo("raftmq-0.raftmq-headless", 25672, type=socket.SOCK_STREAM)
    assert {i[4] for i in infos} == {("127.0.0.9", 25672)}
    assert socket.getaddrinfo("RAFTMQ-0.raftmq-headless.", None)[0][4][0] == "127.0.0.9"
    # Other names still go to the system resolver.
    assert socket.getaddrinfo("127.0.0.1", 1)[0][4][0] == "127.0.0.1"
    discovery.install_static_hosts({})
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("raftmq-0.raftmq-headless.invalid", None)


# --- config.load with discovery ------------------------------------------------------------


def test_statefulset_config_from_environment() -> None:
    cfg = load({**STS, "HOSTNAME": "raftmq-2", "RAFTMQ_NAMESPACE": "mq"})
    assert cfg.node_id == "raftmq-2"
    assert cfg.raft_address == "raftmq-2.raftmq-headless.mq.svc.cluster.local:25672"
    assert cfg.peers == ("raftmq-0.raftmq-headless.mq.svc.cluster.local:25672",
                         "raftmq-1.raftmq-headless.mq.svc.cluster.local:25672")
    assert cfg.raft_bind == "10.1.2.3:25672"


def test_statefulset_bind_explicit_wins_over_pod_ip() -> None:
    cfg = load({**STS, "HOSTNAME": "raftmq-0", "RAFTMQ_RAFT_BIND": "10.9.9.9"})
    assert cfg.raft_bind == "10.9.9.9:25672"
    cfg = load({**STS, "HOSTNAME": "raftmq-0", "RAFTMQ_RAFT_BIND": "10.9.9.9:4000"})
    assert cfg.raft_bind == "10.9.9.9:4000"


def test_statefulset_bind_falls_back_to_resolving_the_hostname() -> None:
    env = {k: v for k, v in STS.items() if k != "POD_IP"}
    cfg = load({**env, "HOSTNAME": "raftmq-1", "RAFTMQ_STATIC_HOSTS": "raftmq-1=127.0.0.3"})
    assert cfg.raft_bind == "127.0.0.3:25672"


def test_statefulset_bind_unresolvable_names_raft_bind() -> None:
    cfg = config.Config(peer_discovery="statefulset", headless_service="h", replicas=3)
    with pytest.raises(discovery.DiscoveryError, match="RAFTMQ_RAFT_BIND"):
        discovery.configure(vars(cfg), {}, set(), resolve=lambda _h: None, hostname="raftmq-1")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HOSTNAME": "raftmq"}, "HOSTNAME"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_STATEFULSET_NAME": "other"}, "RAFTMQ_STATEFULSET_NAME"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_HEADLESS_SERVICE": ""}, "RAFTMQ_HEADLESS_SERVICE"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_HEADLESS_SERVICE": "Bad_Name"}, "RAFTMQ_HEADLESS_SERVICE"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_REPLICAS": "0"}, "RAFTMQ_REPLICAS"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_REPLICAS": "three"}, "RAFTMQ_REPLICAS"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_PEER_DISCOVERY": "dns"}, "RAFTMQ_PEER_DISCOVERY"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_PEERS": "a:1"}, "RAFTMQ_PEERS"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_NODE_ID": "x"}, "RAFTMQ_NODE_ID"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_RAFT_ADDRESS": "a:1"}, "RAFTMQ_RAFT_ADDRESS"),
        ({"HOSTNAME": "raftmq-0", "POD_IP": "0.0.0.0"}, "RAFTMQ_RAFT_BIND"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_RAFT_BIND": "0.0.0.0"}, "RAFTMQ_RAFT_BIND"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_RAFT_BIND": "::"}, "RAFTMQ_RAFT_BIND"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_RAFT_PORT": "0"}, "RAFTMQ_RAFT_PORT"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_CLUSTER_SECRET": ""}, "RAFTMQ_CLUSTER_SECRET"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_STATIC_HOSTS": "a=b"}, "RAFTMQ_STATIC_HOSTS"),
        ({"HOSTNAME": "raftmq-0", "RAFTMQ_CLUSTER_DOMAIN": ".."}, "RAFTMQ_CLUSTER_DOMAIN"),
    ],
)
def test_bad_discovery_settings_stop_startup_naming_the_option(env: dict[str, str],
                                                               named: str) -> None:
    with pytest.raises(config.ConfigError, match=named):
        load({**STS, **env})


def test_bad_discovery_setting_stops_the_process() -> None:
    env = {"PATH": "/usr/bin:/bin", **STS, "HOSTNAME": "not-a-pod"}
    proc = subprocess.run([sys.executable, "-m", "node", "serve"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=str(Path(__file__).parents[2]))
    assert proc.returncode == 2, proc.stderr
    assert "HOSTNAME" in proc.stderr and "not-a-pod" in proc.stderr


def test_without_discovery_nothing_changes() -> None:
    cfg = load({"RAFTMQ_RAFT_ADDRESS": "n1:25672", "RAFTMQ_PEERS": "n2:25672,n3:25672",
                "RAFTMQ_CLUSTER_SECRET": "s", "RAFTMQ_NODE_ID": "n1"})
    assert (cfg.node_id, cfg.raft_address, cfg.peers, cfg.raft_bind) == (
        "n1", "n1:25672", ("n2:25672", "n3:25672"), "")


def test_container_defaults_give_a_single_node_a_loopback_raft_address() -> None:
    cfg = load({"RAFTMQ_AMQP_HOST": "0.0.0.0"})
    assert cfg.raft_address == "127.0.0.1:25672"
    # With peers the Raft address must be one they can dial: still refused.
    with pytest.raises(config.ConfigError, match="--raft-address"):
        load({"RAFTMQ_AMQP_HOST": "0.0.0.0", "RAFTMQ_PEERS": "a:1", "RAFTMQ_CLUSTER_SECRET": "s"})


def test_static_hosts_rewrite_listener_hosts() -> None:
    cfg = load({"RAFTMQ_STATIC_HOSTS": "n1=127.0.0.5", "RAFTMQ_AMQP_HOST": "n1",
                "RAFTMQ_METRICS_HOST": "n1", "RAFTMQ_RAFT_ADDRESS": "n1:25672",
                "RAFTMQ_RAFT_BIND": "n1"})
    assert (cfg.amqp_host, cfg.metrics_host) == ("127.0.0.5", "127.0.0.5")
    assert cfg.raft_address == "n1:25672"  # the member id stays the name
    assert cfg.raft_bind == "127.0.0.5:25672"
