"""deploy/monitoring: the Grafana dashboard is valid JSON whose every query reads only
metrics a RaftMQ node exports, and the Prometheus scrape configuration finds the
StatefulSet's pods on the port their annotations name."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.replica import RaftStatus
from node.services.alarms import Alarms, Limit, Monitor
from node.services.metrics import DETAILED_FAMILIES, Metrics, detailed
from tests.deploy import manifests

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
PROMQL_WORDS = {"sum", "max", "min", "avg", "rate", "irate", "by", "on", "group_right",
                "group_left", "without", "label_values", "increase", "count"}


class _Source:
    """Enough of a node for the collectors to run (one queue, one node)."""

    def __init__(self) -> None:
        monitor = Monitor(Limit(0.4, True), Limit(50e6, False), "/")
        self.alarms = Alarms(monitor, "n1", lambda cmd: None, lambda: {}, lambda reason: None)

    def connection_count(self) -> int:
        return 1

    def channel_count(self) -> int:
        return 1

    def output_buffered(self) -> list[int]:
        return [0]

    def queue_stats(self) -> list[tuple[str, str, int, int, int]]:
        return [("/", "q", 1, 0, 0)]

    def raft_status(self) -> RaftStatus:
        return RaftStatus("n1", "leader", "n1", 1, 1, 1, 0, True)


@pytest.fixture(scope="module")
def exported() -> set[str]:
    source = _Source()
    text = Metrics(source).render().decode() + \
        detailed(source, set(DETAILED_FAMILIES), set()).decode()
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    out += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return out


def test_grafana_dashboard_reads_only_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert {"Overview", "Per queue", "Raft health"} <= {p["title"] for p in dashboard["panels"]
                                                         if p["type"] == "row"}
    for expr in _exprs(dashboard):
        without_strings = re.sub(r'"[^"]*"|\[[^\]]*\]', "", expr)
        names = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", without_strings)) - PROMQL_WORDS
        names -= {"job", "vhost", "queue", "instance"}
        unknown = names - exported
        assert not unknown, f"{expr}: {unknown} are not exported by RaftMQ"


def test_prometheus_config_finds_the_statefulset() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert {"raftmq", "raftmq-detailed"} <= set(jobs)
    pod = manifests.statefulset(manifests.k8s_resources())["spec"]["template"]
    labels, notes = pod["metadata"]["labels"], pod["metadata"]["annotations"]
    keep = [r for r in jobs["raftmq"]["relabel_configs"] if r.get("action") == "keep"]
    assert any(r["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
               and re.fullmatch(r["regex"], labels["app.kubernetes.io/name"]) for r in keep)
    ports = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    assert int(notes["prometheus.io/port"]) in ports and notes["prometheus.io/scrape"] == "true"
    assert jobs["raftmq-detailed"]["params"]["family"] == list(DETAILED_FAMILIES)
