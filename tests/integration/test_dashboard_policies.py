"""The dashboard's policies page in a real browser (the fixtures of test_dashboard.py):
set a policy through its form, see it listed and on the queue it applies to, delete it."""

from __future__ import annotations

from typing import Any

import pika
import pytest

from harness.raftmq import RaftMQNode
from tests.harness.api import Api
from tests.integration.helpers import wait_until
from tests.integration.test_dashboard import node, page, shot  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(240)]


def test_policies_page(page: Any, node: RaftMQNode) -> None:  # noqa: F811
    page.fill("#login input[name=user]", "guest")
    page.fill("#login input[name=password]", "guest")
    page.click("#login button")
    page.wait_for_selector("#nav >> text=Policies")
    client = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqp_port))
    client.channel().queue_declare("dash-limited")
    client.close()
    page.click("#nav >> text=Policies")
    page.wait_for_selector("#set-policy")
    page.fill("#set-policy input[name=name]", "dash-limit")
    page.fill("#set-policy input[name=pattern]", "^dash-")
    page.select_option("#set-policy select[name=apply]", "queues")
    page.fill("#set-policy input[name=definition]", '{"max-length": 5}')
    page.click("#set-policy button")
    page.wait_for_selector("#policies >> text=dash-limit")
    shot(page, "11-policies")
    api = Api(node.management_port)
    wait_until(lambda: api.ok("GET", "/api/queues/%2F/dash-limited")["policy"] == "dash-limit")
    page.click("#nav >> text=Queues")
    page.wait_for_selector("#queues td:text-is('dash-limit')")
    page.click("#nav >> text=Policies")
    page.click("#policies button:text-is('Delete')")
    wait_until(lambda: api.ok("GET", "/api/policies") == [])
