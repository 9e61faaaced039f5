"""Configuration: every option from flags or RAFTMQ_* variables; bad values name the option."""

from __future__ import annotations

import subprocess
import sys

import pytest

from node import cli, config


def load(argv: list[str] = (), env: dict[str, str] | None = None) -> config.Config:  # type: ignore[assignment]
    parser = cli._parser()
    args = parser.parse_args(["serve", *argv])
    return config.load(args, env or {})


def test_defaults() -> None:
    cfg = load()
    assert (cfg.amqp_host, cfg.amqp_port) == ("127.0.0.1", 5672)
    assert cfg.raft_address == "127.0.0.1:25672"
    assert (cfg.default_user, cfg.default_pass) == ("guest", "guest")
    assert cfg.data_dir == "./data"


def test_consumers_per_channel_are_limited_by_default() -> None:
    """RabbitMQ's consumer_max_per_channel defaults to unlimited; ours to 1,000 (Amazon
    MQ's), so a leaking or hostile client cannot grow one channel without bound. 0 lifts it."""
    assert load().max_consumers_per_channel == 1000
    assert config.Config().max_consumers_per_channel == 1000
    assert load(["--max-consumers-per-channel", "0"]).max_consumers_per_channel == 0
    assert load(env={"RAFTMQ_MAX_CONSUMERS_PER_CHANNEL": "5"}).max_consumers_per_channel == 5


def test_environment_then_flags() -> None:
    cfg = load(env={"RAFTMQ_AMQP_PORT": "5999", "RAFTMQ_NODE_ID": "a"})
    assert cfg.amqp_port == 5999 and cfg.node_id == "a"
    cfg = load(["--amqp-port", "6000"], env={"RAFTMQ_AMQP_PORT": "5999"})
    assert cfg.amqp_port == 6000


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--amqp-port", "70000"], {}, "--amqp-port"),
        ([], {"RAFTMQ_AMQP_PORT": "x"}, "RAFTMQ_AMQP_PORT"),
        (["--frame-max", "100"], {}, "--frame-max"),
        (["--raft-address", "nohost"], {}, "--raft-address"),
        (["--log-level", "loud"], {}, "--log-level"),
        (["--fsync", "maybe"], {}, "--fsync"),
        (["--peers", "127.0.0.1:1"], {}, "--cluster-secret"),
        (["--raft-address", "0.0.0.0:4000"], {}, "--raft-address"),
    ],
)
def test_bad_values_name_the_option(argv: list[str], env: dict[str, str], named: str) -> None:
    with pytest.raises(config.ConfigError, match=named):
        load(argv, env)


def test_bad_value_stops_startup_with_message() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "node", "serve", "--amqp-port", "notaport"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "--amqp-port" in proc.stderr and "notaport" in proc.stderr


def test_help_lists_every_option() -> None:
    proc = subprocess.run([sys.executable, "-m", "node", "serve", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for opt in config.OPTIONS:
        assert "--" + opt.name.replace("_", "-") in proc.stdout
        assert config.env_name(opt.name) in proc.stdout
