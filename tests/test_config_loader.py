"""Loading files and `gateway check`: the shipped examples, unreadable files, TLS files."""

import os

import pytest

from gateway.config import ConfigError, check_file, load, presets

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "docs", "examples")


def test_sample_config_validates_and_every_source_preset_resolves():
    path = os.path.join(EXAMPLES, "gateway.toml")
    assert check_file(path, environ={}) == []
    config = load(path, environ={"GATEWAY_ID": "lab-pi-09", "MQTT_PASSWORD": "pw"})
    assert config["gateway"]["id"] == "lab-pi-09"
    assert config["sinks"]["mqtt"]["password"] == "pw"
    for source in config["sources"]:
        assert presets.resolve(config, source["preset"])["routes"]


def test_demo_config_validates_with_three_simulated_sources():
    path = os.path.join(os.path.dirname(__file__), "..", "gateway", "demo.toml")
    assert check_file(path, environ={}) == []
    config = load(path, environ={})
    assert config["gateway"] == {"id": "demo", "data_dir": "./var/demo"}
    assert config["api"]["listen"] == "127.0.0.1:8080"
    profiles = [source["simulate"]["profile"] for source in config["sources"]]
    assert profiles == ["env", "kv", "nmea"]
    # The GPS writes its seven sentences once a second.
    assert [source["simulate"]["rate"] for source in config["sources"]] == [10, 10, 7]
    assert {name: sink["type"] for name, sink in config["sinks"].items()} == {
        "mqtt": "mqtt",
        "udp": "udp",
        "live": "websocket",
    }
    assert config["sinks"]["udp"]["targets"] == ["127.0.0.1:9999"]
    demo = presets.resolve(config, "demo")
    assert {"sink": "mqtt", "qos": 1} in demo["routes"]
    assert demo["extends"] == ["realtime"]


def test_missing_file_is_one_clear_error(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load(missing)
    assert caught.value.errors == [f"{missing}: cannot read: No such file or directory"]
    assert check_file(missing) == caught.value.errors


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[gateway]\nid = "caf\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.errors == ["byte 19: expected UTF-8 text, got byte 0xe9"]
    assert caught.value.source == str(path)


def test_check_file_returns_every_error(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[sinks.mqtt]\ntype = "mqtt"\nqos = 7\n[api]\nlisten = "x"\n')
    errors = check_file(path)
    assert [error.split(":")[0] for error in errors] == ["sinks.mqtt.qos", "api.listen"]


def test_check_file_wants_tls_files_to_exist(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[sinks.mqtt]\ntype = "mqtt"\nurl = "mqtts://broker:8883"\nca = "{ca}"\n'
        f'cert = "{tmp_path}/client.pem"\nkey = "{tmp_path}/client.key"\n'
    )
    assert load(path)["sinks"]["mqtt"]["ca"] == str(ca)
    assert check_file(path) == [
        f'sinks.mqtt.cert: expected an existing file, got "{tmp_path}/client.pem" (not found)',
        f'sinks.mqtt.key: expected an existing file, got "{tmp_path}/client.key" (not found)',
    ]


def test_substitution_errors_come_from_files_too(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nid = "${GW_ID:?set GW_ID to this gateway\'s name}"\n')
    errors = check_file(path, environ={})
    assert errors == [
        "line 2: ${GW_ID:?set GW_ID to this gateway's name}: GW_ID is not set:"
        " set GW_ID to this gateway's name"
    ]
    assert load(path, environ={"GW_ID": "pi-3"})["gateway"]["id"] == "pi-3"
