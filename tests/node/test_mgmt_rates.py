"""Message rates from the replicated counters (node/mgmt_rates.py), on a fake clock."""

from __future__ import annotations

from types import SimpleNamespace

from node.mgmt.rates import Rates


def test_rates_over_the_window_and_chart() -> None:
    q = SimpleNamespace(qid=1, vhost="/", n_published=0, n_delivered=0, n_redelivered=0,
                        n_acked=0)
    state = SimpleNamespace(queues={1: q}, vhosts={"/": None}, n_published=0, n_confirmed=0,
                            n_unroutable=0)
    now = [100.0]
    rates = Rates(lambda: state, clock=lambda: now[0])
    for _ in range(10):  # 100 published and 50 delivered and acked a second
        rates.sample()
        now[0] += 1.0
        state.n_published += 100
        q.n_published += 100
        q.n_delivered += 50
        q.n_acked += 50
    overview = rates.overview()
    assert overview["publish"] == 1000 and overview["publish_details"] == {"rate": 100.0}
    assert overview["ack_details"] == {"rate": 50.0}
    assert overview["return_unroutable_details"] == {"rate": 0.0}
    assert rates.queue(q)["deliver_get_details"] == {"rate": 50.0}
    chart = rates.chart()
    assert len(chart) == 9 and all(p["publish"] == 100.0 for p in chart)
    state.queues.clear()  # a deleted queue's samples go
    rates.sample()
    assert rates.queues == {}


def test_no_samples_yet_is_a_zero_rate() -> None:
    state = SimpleNamespace(queues={}, n_published=5, n_confirmed=0, n_unroutable=0)
    assert Rates(lambda: state).overview()["publish_details"] == {"rate": 0.0}


def test_samples_for_charts() -> None:
    state = SimpleNamespace(queues={}, vhosts={}, n_published=0, n_confirmed=0,
                            n_unroutable=0)
    now = [0.0]
    rates = Rates(lambda: state, clock=lambda: now[0])
    for _ in range(20):
        rates.sample()
        now[0] += 1.0
        state.n_published += 10
    samples = rates.overview(age=11, incr=5)["publish_details"]["samples"]
    assert [s["sample"] for s in samples] == [190, 140, 90]  # newest first, every 5 s
    assert samples[0]["timestamp"] > samples[1]["timestamp"]


def test_a_users_rates_are_those_of_its_vhosts() -> None:
    """A user who is not a monitor sees the rates of its vhosts' queues only; a vhost made
    later counted 0 before it existed; a deleted one's samples go."""
    qa = SimpleNamespace(qid=1, vhost="a", n_published=0, n_delivered=0, n_redelivered=0,
                         n_acked=0)
    qb = SimpleNamespace(qid=2, vhost="b", n_published=0, n_delivered=0, n_redelivered=0,
                         n_acked=0)
    state = SimpleNamespace(queues={1: qa}, vhosts={"a": None}, n_published=0, n_confirmed=0,
                            n_unroutable=0)
    now = [0.0]
    rates = Rates(lambda: state, clock=lambda: now[0])
    for second in range(20):
        if second == 10:
            state.queues[2], state.vhosts["b"] = qb, None
        rates.sample()
        now[0] += 1.0
        qa.n_published += 10
        qb.n_published += 3 if second >= 10 else 0
        state.n_published = qa.n_published + qb.n_published
    only_b = rates.overview(age=30, incr=1, vhosts={"b"})
    assert only_b["publish"] == 30 and only_b["publish_details"]["rate"] == 3.0
    assert set(only_b) == {"publish", "publish_details", "deliver_get", "deliver_get_details",
                           "redeliver", "redeliver_details", "ack", "ack_details"}
    samples = only_b["publish_details"]["samples"]
    assert len(samples) == 20 and samples[-1]["sample"] == 0 and samples[0]["sample"] == 27
    assert rates.overview(vhosts={"a", "b"})["publish_details"]["rate"] == 13.0
    assert rates.overview(vhosts=set())["publish"] == 0
    assert rates.overview()["publish"] == 230
    del state.vhosts["b"], state.queues[2]
    rates.sample()
    assert set(rates.vhosts) == {"a"}


def test_a_slow_sample_spaces_the_next_ones_out() -> None:
    """A sample walks every queue; when that is slow (a tenant's 100,000 queues), the
    next comes after SAMPLE_SHARE times its cost, never every second regardless."""
    import time

    from node.mgmt import rates as mgmt_rates

    state = SimpleNamespace(queues={}, vhosts={}, n_published=0, n_confirmed=0,
                            n_unroutable=0)
    rates = Rates(lambda: state)
    assert rates.sample() == mgmt_rates.SAMPLE_S  # quick: once a second
    real = rates._sample

    def slow() -> None:
        time.sleep(0.1)
        real()

    rates._sample = slow  # type: ignore[method-assign]
    assert rates.sample() >= mgmt_rates.SAMPLE_SHARE * 0.1
