"""The dashboard in a real browser (Debian's Chromium, headless, driven by Playwright):
log in, create a queue, publish a message and see the depth change, get it back, purge,
close a client's connection, and the overview and cluster pages. Screenshots go to
build/screenshots/ (one per step)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from harness.raftmq import RaftMQNode
from tests.harness.browser import ensure_chromium

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(240)]

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftMQNode]:
    base = tmp_path_factory.mktemp("dashboard")
    with RaftMQNode(base / "data", log_path=base / "node.log") as n:
        yield n


@pytest.fixture(scope="module")
def page(node: RaftMQNode) -> Iterator[Any]:
    executable = ensure_chromium()
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            pg.on("dialog", lambda d: d.accept())  # "Delete queue ...?"
            pg.goto(node.management_url + "/")
            yield pg
        finally:
            browser.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"dashboard-{name}.png"), full_page=True)


def wait_tile(page: Any, container: str, label: str, value: str) -> None:
    """(The page's CSP allows no eval, so no wait_for_function: selectors only.)"""
    page.wait_for_selector(f"#{container} .tile:has(span:text-is('{label}')) b:text-is('{value}')",
                           timeout=10_000)


def tile(page: Any, container: str, label: str) -> str:
    value: str = page.locator(f"#{container} .tile", has_text=label).locator("b").inner_text()
    return value


def test_login_refused_then_accepted(page: Any) -> None:
    page.fill("#login input[name=user]", "guest")
    page.fill("#login input[name=password]", "wrong")
    page.click("#login button")
    page.wait_for_selector("#login-error:has-text('Login failed')")
    shot(page, "01-login-refused")
    page.fill("#login input[name=password]", "guest")
    page.click("#login button")
    page.wait_for_selector("#totals")
    assert "guest" in page.inner_text("#who")
    shot(page, "02-overview")


def test_queue_lifecycle(page: Any) -> None:
    page.click("#nav >> text=Queues")
    page.wait_for_selector("#add-queue")
    page.fill("#add-queue input[name=name]", "orders")
    page.click("#add-queue button")
    page.wait_for_selector("#queues >> text=orders")
    shot(page, "03-queues")
    page.click("#queues >> text=orders")
    page.wait_for_selector("#queue-totals")
    for i in range(3):
        page.fill("#publish input[name=payload]", f"order {i}")
        page.click("#publish button")
        wait_tile(page, "queue-totals", "Ready", str(i + 1))
    assert tile(page, "queue-totals", "Ready") == "3"
    shot(page, "04-queue-published")
    page.fill("#get input[name=count]", "2")
    page.click("#get button")
    page.wait_for_selector("#messages >> text=order 1")
    assert "order 0" in page.inner_text("#messages")
    shot(page, "05-queue-get")
    page.click("#purge")
    wait_tile(page, "queue-totals", "Ready", "0")
    shot(page, "06-queue-purged")
    page.click("#delete")
    page.wait_for_selector("#queues")
    page.wait_for_selector("#queues >> text=orders", state="detached", timeout=10_000)


def test_close_a_connection(page: Any, node: RaftMQNode) -> None:
    client = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqp_port))
    try:
        page.click("#nav >> text=Connections")
        page.wait_for_selector("#connections >> text=guest", timeout=15_000)
        shot(page, "07-connections")
        page.click("#connections button:has-text('Close')")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                client.process_data_events(0.1)
        assert closed.value.reply_code == 320
        assert "dashboard" in closed.value.reply_text
    finally:
        if client.is_open:
            client.close()


def test_admin_and_cluster_pages(page: Any, node: RaftMQNode) -> None:
    page.click("#nav >> text=Admin")
    page.wait_for_selector("#add-user")
    page.fill("#add-user input[name=name]", "ops")
    page.fill("#add-user input[name=password]", "s3cret")
    page.fill("#add-user input[name=tags]", "monitoring")
    page.click("#add-user button")
    page.wait_for_selector("#users >> text=ops")
    shot(page, "08-admin")
    page.click("#nav >> text=Cluster")
    page.wait_for_selector("#nodes >> text=leader")
    shot(page, "09-cluster")
    # some traffic, for the rates chart
    client = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqp_port))
    try:
        ch = client.channel()
        ch.queue_declare("traffic")
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            for _ in range(50):
                ch.basic_publish("", "traffic", b"x" * 100)
            client.process_data_events(0.05)
    finally:
        client.close()
    page.click("#nav >> text=Overview")
    page.wait_for_selector("#rate-chart polyline", state="attached", timeout=20_000)
    assert tile(page, "totals", "Ready") != "0"
    shot(page, "10-overview-traffic")
