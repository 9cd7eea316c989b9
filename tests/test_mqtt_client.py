"""One client factory for the agent and for `edge-agent retrain`: the same [mqtt] gives the same connection.

The command tool used to enable TLS only when a CA file was configured, so with a client certificate and the
system's CA store it connected in clear text to a broker the agent reached over TLS.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import config_from_dict
from edge_agent.deliver.topics import Topics
from edge_agent.deliver.publisher import Publisher
from edge_agent.deliver.remote import send_command
from edge_agent.deliver.spool import Spool
from tests.mqtt_broker import DEVICE, PREFIX, MosquittoBroker, make_tls_files, wait_until


def test_client_certificate_with_the_system_ca_store_is_tls_for_the_agent_and_the_cli(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    tls = make_tls_files(tmp_path / "tls")
    broker = MosquittoBroker(tmp_path / "broker", tls=tls)  # TLS only: a clear-text client cannot connect
    broker.start()
    # The "system CA store" of this process is the test CA (OpenSSL's default verify paths honour SSL_CERT_FILE).
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))
    config = config_from_dict({
        "device": {"id": DEVICE, "state_dir": str(tmp_path / "state")}, "source": {"path": str(tmp_path)},
        "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX, "tls_cert": str(tls.cert),
                 "tls_key": str(tls.key), "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
    })
    agent = Publisher(config.mqtt, DEVICE, Spool(tmp_path / "spool.db"), on_command=lambda name, args: {"pong": name})
    try:
        agent.start()
        assert wait_until(lambda: agent.connected, 10), "the agent's publisher did not connect over TLS"
        reply = send_command(config, "status", {}, timeout=10)
        assert reply["ok"] and reply["result"] == {"pong": "status"}, reply
    finally:
        agent.stop(timeout=1)
        agent.spool.close()
        broker.stop()


@pytest.mark.parametrize("prefix, device", [("a/+", "cam"), ("plant", "cam/1"), ("plant", ""), ("x#", "cam")])
def test_topics_refuse_wildcards_and_extra_levels(prefix: str, device: str) -> None:
    with pytest.raises(ValueError, match="not usable in an MQTT topic"):
        Topics(prefix, device)


def test_topics_of_the_contract() -> None:
    t = Topics("plant/line-3", "cam-7")
    assert t("verdict") == "plant/line-3/cam-7/verdict"
    assert t.command("retrain") == "plant/line-3/cam-7/cmd/retrain"
    assert t.command_result("retrain") == "plant/line-3/cam-7/cmd/retrain/result"


def test_reconnect_backoff_must_be_positive_and_ordered() -> None:
    from edge_agent.config import ConfigError

    base = {"source": {"path": "."}}
    with pytest.raises(ConfigError, match="reconnect_min_s <= reconnect_max_s"):
        config_from_dict({**base, "mqtt": {"reconnect_min_s": 5.0, "reconnect_max_s": 1.0}})
    with pytest.raises(ConfigError, match="reconnect_min_s"):
        config_from_dict({**base, "mqtt": {"reconnect_min_s": 0.0}})
