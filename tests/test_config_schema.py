"""Validation of gateway.toml: one test per error class, defaults, and collecting everything."""

import hashlib
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, loads, validate_sink
from gateway.config.schema import normalize

MQTT = '[sinks.mqtt]\ntype = "mqtt"\n'


def errors_of(text: str, environ=None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text, environ=environ or {})
    return caught.value.errors


def only_error(text: str) -> str:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


def test_toml_syntax_error_reports_line_and_column():
    error = only_error('[gateway]\nid = "x"\ndata_dir = \n')
    assert error.startswith("line 3, column 12: invalid TOML:")


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("name = bench", 'text needs quotes: name = "bench"'),
        ("port = /dev/ttyACM0  # the board", 'text needs quotes: port = "/dev/ttyACM0"'),
        (
            'port = "C:\\dev\\com3"',
            "backslashes are escapes in double quotes: port = 'C:\\dev\\com3'",
        ),
    ],
    ids=["bare-word", "bare-path", "windows-path"],
)
def test_a_toml_slip_is_named_with_what_to_write_instead(line, hint):
    error = only_error(f"[[sources]]\n{line}\n")
    assert error.startswith("line 2, column ") and error.endswith(hint), error


def test_config_error_prints_source_and_every_error():
    with pytest.raises(ConfigError) as caught:
        loads('[gateway]\nidd = 1\n[api]\nlisten = "x"\n', source="gw.toml")
    text = str(caught.value)
    assert text.startswith("gw.toml: 2 configuration errors")
    assert 'gateway.idd: unknown key (did you mean "id"?)' in text


def test_unknown_key_suggests_the_close_match():
    error = only_error(MQTT + "qso = 1\n")
    assert error == 'sinks.mqtt.qso: unknown key (did you mean "qos"?)'


def test_unknown_key_without_close_match_lists_the_keys():
    error = only_error("[api]\nzzz = 1\n")
    assert error == (
        "api.zzz: unknown key (expected one of: listen, tokens, tls, allow_insecure, rate_limit)"
    )


def test_unknown_top_level_section():
    assert only_error("[sink.mqtt]\ntype = 'mqtt'\n").startswith("sink: unknown key (did you mean")


def test_wrong_type_names_path_expected_and_got():
    error = only_error(
        '[[sources]]\nname = "a"\nport = "/dev/x"\n[[sources]]\nname = "b"\n'
        'port = "/dev/y"\nbaud = "fast"\n'
    )
    assert error == 'sources[1].baud: expected a positive integer, got "fast"'


def test_out_of_range():
    error = only_error('[sinks.u]\ntype = "udp"\ntargets = ["1.2.3.4:9"]\nmax_datagram = 70000\n')
    assert error == "sinks.u.max_datagram: expected an integer from 64 to 65507, got 70000"


def test_qos_two_is_refused_with_a_reason_and_three_plainly():
    assert only_error(MQTT + "qos = 2\n") == (
        "sinks.mqtt.qos: expected 0 or 1, got 2 (QoS 2 is not supported)"
    )
    assert only_error(MQTT + "qos = 3\n") == "sinks.mqtt.qos: expected 0 or 1, got 3"
    assert only_error(MQTT + "qos = true\n") == "sinks.mqtt.qos: expected 0 or 1, got true"


def test_an_empty_array_is_named_with_what_its_entries_must_be():
    assert only_error('[sinks.mqtt]\ntype = "mqtt"\nurls = []\n') == (
        "sinks.mqtt.urls: expected a non-empty array of mqtt:// or mqtts:// URL like "
        '"mqtt://127.0.0.1:1883", got an array'
    )


def test_bad_enum_suggests():
    error = only_error('[[sources]]\nname = "a"\nport = "/dev/x"\nframing = "cobbs"\n')
    assert error == 'sources[0].framing: expected lines or cobs, got "cobbs" (did you mean "cobs"?)'


def test_bad_duration():
    error = only_error(MQTT + 'breaker = { reset_after = "30 secs" }\n')
    assert error.startswith("sinks.mqtt.breaker.reset_after: expected a duration like")
    assert error.endswith('got "30 secs"')


def test_bad_size():
    error = only_error(MQTT + 'buffer = { max_bytes = "64 megs" }\n')
    assert error.startswith("sinks.mqtt.buffer.max_bytes: expected a size like")


def test_bad_template_placeholder():
    error = only_error(MQTT + 'topic = "gw/{gateway}/{devce}"\n')
    assert error.startswith("sinks.mqtt.topic: expected a topic template using only")
    assert error.endswith("({devce} is not one of them; did you mean {device}?)")


def test_template_wildcards_and_unbalanced_braces():
    assert "wildcards" in only_error(MQTT + 'topic = "gw/+/x"\n')
    assert "not closed" in only_error(MQTT + 'topic = "gw/{device"\n')


def test_duplicate_source_name():
    error = only_error(
        '[[sources]]\nname = "a"\nport = "/dev/x"\n[[sources]]\nname = "a"\nport = "/dev/y"\n'
    )
    assert (
        error
        == 'sources[1].name: expected a name no other source uses, got "a" (sources[0] has it)'
    )


def test_port_and_match_both_or_neither():
    both = only_error(
        '[[sources]]\nname = "a"\nport = "/dev/x"\nmatch = { vid = "2e8a", pid = "0005" }\n'
    )
    neither = only_error('[[sources]]\nname = "a"\n')
    assert both == "sources[0]: expected exactly one of port, match or simulate, got port and match"
    assert (
        neither == "sources[0]: expected exactly one of port, match or simulate, got none of them"
    )


def test_match_ids_are_4_hex_digits_and_normalised():
    config = loads('[[sources]]\nname = "a"\nmatch = { vid = "2E8A", pid = 5 }\n')
    assert config["sources"][0]["match"] == {"vid": "2e8a", "pid": "0005", "serial": None}
    error = only_error('[[sources]]\nname = "a"\nmatch = { vid = "2e8a", pid = "5" }\n')
    assert error.startswith("sources[0].match.pid: expected a USB id of 4 hex digits")


def test_csv_without_fields():
    error = only_error('[[sources]]\nname = "a"\nport = "/dev/x"\nformat = "csv"\n')
    assert error == (
        'sources[0].fields: expected an array of column names (format "csv", or header = true), '
        "got nothing"
    )


def test_line_format_options_of_csv_kv_and_nmea():
    base = '[[sources]]\nname = "a"\nport = "/dev/x"\n'
    csv = loads(base + 'format = "csv"\nheader = true\ndecimal = ","\n')["sources"][0]
    assert (csv["fields"], csv["header"], csv["decimal"], csv["delimiter"]) == (
        None,
        True,
        ",",
        None,
    )
    kv = loads(base + 'format = "kv"\ndelimiter = "|"\n')["sources"][0]
    assert (kv["delimiter"], kv["header"], kv["decimal"], kv["sentences"]) == (
        "|",
        None,
        None,
        None,
    )
    nmea = loads(base + 'format = "nmea"\nsentences = ["GGA", "rmc", "GGA"]\n')["sources"][0]
    assert nmea["sentences"] == ["GGA", "RMC"]


@pytest.mark.parametrize(
    "keys, error",
    [
        (
            'format = "nmea"\nsentences = ["GGA", "GVS"]',
            "sources[0].sentences[1]: expected a sentence type: GGA, RMC, GLL, VTG, GSA, GSV, "
            'ZDA, GST, HDT, TXT, XDR, MWV, MDA, got "GVS" (did you mean "GSV"?)',
        ),
        (
            'format = "nmea"\nsentences = []',
            "sources[0].sentences: expected a non-empty array of sentence type: GGA, RMC, GLL, "
            "VTG, GSA, GSV, ZDA, GST, HDT, TXT, XDR, MWV, MDA, got an array",
        ),
        (
            'format = "kv"\nsentences = ["GGA"]',
            'sources[0].sentences: not used with format "kv" (only "nmea")',
        ),
        (
            'format = "kv"\nheader = true',
            'sources[0].header: not used with format "kv" (only "csv")',
        ),
        (
            'format = "nmea"\ndecimal = ","',
            'sources[0].decimal: not used with format "nmea" (only "csv")',
        ),
        (
            'format = "json"\ndelimiter = ";"',
            'sources[0].delimiter: not used with format "json" (only "csv" or "kv")',
        ),
        (
            'format = "csv"\nfields = ["t"]\nheader = "yes"',
            'sources[0].header: expected true or false, got "yes"',
        ),
        (
            'format = "csv"\nheader = true\ndecimal = ";"',
            'sources[0].decimal: expected "." or ",", got ";"',
        ),
        (
            'format = "csv"\nheader = true\ndecimal = ","\ndelimiter = ","',
            'sources[0].decimal: a decimal "," needs another delimiter (the default is ";")',
        ),
        (
            'framing = "cobs"\nheader = true',
            'sources[0].header: not used with framing "cobs" (only with "lines")',
        ),
    ],
)
def test_line_format_option_errors_name_the_key(keys, error):
    assert only_error('[[sources]]\nname = "a"\nport = "/dev/x"\n' + keys + "\n") == error


def test_bad_regex_that_does_not_compile_or_has_no_named_group():
    base = '[[sources]]\nname = "a"\nport = "/dev/x"\nformat = "regex"\n'
    broken = only_error(base + "pattern = '(?P<w>\\d+'\n")
    unnamed = only_error(base + "pattern = '(\\d+)'\n")
    missing = only_error(base)
    assert broken.startswith("sources[0].pattern: expected a regular expression")
    assert "missing )" in broken
    assert unnamed.endswith("(it has no named group)")
    assert missing.startswith("sources[0].pattern: expected a regular expression")


def test_keys_that_do_not_apply_to_the_format_are_errors():
    error = only_error('[[sources]]\nname = "a"\nport = "/dev/x"\nfields = ["t"]\n')
    assert error == 'sources[0].fields: not used with format "json" (only "csv")'
    error = only_error(
        '[[sources]]\nname = "a"\nport = "/dev/x"\nframing = "cobs"\nformat = "kv"\n'
    )
    assert error == 'sources[0].format: not used with framing "cobs" (only with "lines")'


def test_unknown_preset_for_a_source():
    error = only_error('[[sources]]\nname = "a"\nport = "/dev/x"\npreset = "iott"\n')
    assert error.startswith("sources[0].preset: expected one of basic, realtime, iot,")
    assert error.endswith('got "iott" (did you mean "iot"?)')


def test_extends_cycle_is_reported_for_each_member():
    errors = errors_of(MQTT + '[presets.a]\nextends = "b"\n[presets.b]\nextends = "a"\n')
    assert errors == [
        "presets.a.extends: expected an extends chain without a cycle, got a -> b -> a",
        "presets.b.extends: expected an extends chain without a cycle, got b -> a -> b",
    ]


def test_extends_unknown_preset():
    error = only_error('[presets.lab]\nextends = "reserch"\n')
    assert error.startswith("presets.lab.extends: expected one of basic,")
    assert error.endswith('got "reserch" (did you mean "research"?)')


def test_route_to_unknown_sink():
    error = only_error(
        MQTT + '[sinks.udp]\ntype = "udp"\ntargets = ["127.0.0.1:9"]\n'
        '[presets.lab]\nroutes = [{ sink = "mqt" }]\n'
    )
    assert error == (
        "presets.lab.routes[0].sink: expected one of the configured sinks (mqtt, udp),"
        ' got "mqt" (did you mean "mqtt"?)'
    )


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ('{ sink = "udp", qos = 1 }', "qos: not used by udp sinks (only mqtt)"),
        # SSE clients read the sink's own batches: a route's batch would do nothing.
        ('{ type = "sse", batch = { max_readings = 5 } }', "batch: not used by sse sinks"),
        ('{ type = "recorder", encoding = "cbor" }', "encoding: not used by recorder sinks"),
    ],
)
def test_route_options_must_suit_the_sink_type(route, expected):
    error = only_error(
        f'[sinks.udp]\ntype = "udp"\ntargets = ["127.0.0.1:9"]\n[presets.lab]\nroutes = [{route}]\n'
    )
    assert error.startswith("presets.lab.routes[0]." + expected), error


@pytest.mark.parametrize(
    ("value", "got"), [('"192.168.1.10"', None), ('"eth0"', '"eth0"'), ("10", "10")]
)
def test_a_udp_sink_names_the_interface_multicast_leaves_through(value, got):
    text = f'[sinks.udp]\ntype = "udp"\ntargets = ["239.1.2.3:9"]\ninterface = {value}\n'
    if got is None:
        assert loads(text)["sinks"]["udp"]["interface"] == "192.168.1.10"
        return
    expected = 'the IPv4 address of a local interface, like "192.168.1.10"'
    assert only_error(text) == f"sinks.udp.interface: expected {expected}, got {got}"


def test_a_batch_waits_for_nothing():
    # max_delay was read by no sink, so it is no longer accepted.
    error = only_error(MQTT + 'batch = { max_readings = 10, max_delay = "1s" }\n')
    assert error == "sinks.mqtt.batch.max_delay: unknown key (expected one of: max_readings)"


def test_route_needs_exactly_one_of_sink_or_type():
    error = only_error(MQTT + "[presets.lab]\nroutes = [{ qos = 1 }]\n")
    assert error.startswith("presets.lab.routes[0]: expected exactly one of sink")


def test_preset_without_any_route_is_an_error():
    error = only_error("[presets.lab]\nsteps = []\n")
    assert error.startswith("presets.lab.routes: expected at least one route")


def test_user_preset_cannot_take_a_builtin_name():
    error = only_error("[presets.basic]\nsteps = []\n")
    assert error.startswith("presets.basic: expected a name that is not a built-in preset")


def test_bad_step_op():
    error = only_error(
        MQTT + '[presets.lab]\nextends = "basic"\nsteps = [\n'
        '{ op = "rename", map = { t = "temperature" } },\n'
        '{ op = "drop", fields = ["x"] },\n{ op = "scael", field = "t" },\n]\n'
    )
    assert error.startswith("presets.lab.steps[2].op: expected one of rename, scale, convert,")
    assert error.endswith('got "scael" (did you mean "scale"?)')


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            '{ op = "scale", field = "t", factor = "x" }',
            'steps[0].factor: expected a number, got "x"',
        ),
        (
            '{ op = "scale", factor = 2 }',
            "steps[0].field: expected a non-empty string, got nothing",
        ),
        (
            '{ op = "drop", feilds = ["x"] }',
            'steps[0].feilds: unknown key (did you mean "fields"?)',
        ),
        ('{ op = "downsample", every = "soon" }', "steps[0].every: expected a duration like"),
        ('{ op = "downsample", every = "0s" }', 'greater than 0, got "0s"'),
        ('{ op = "downsample" }', "steps[0]: downsample needs exactly one of every or count"),
        ('{ op = "convert", field = "p", from = "hpa", to = "kpaa" }', '(did you mean "kpa"?)'),
        ('{ op = "convert", field = "t", from = "c", to = "m" }', "steps[0].to: cannot convert"),
        ('{ op = "window", count = 5, functions = ["median"] }', '("median" is not one of them'),
        ('{ op = "hash", fields = ["a"], length = 99 }', "steps[0].length: expected an integer"),
        ('{ op = "threshold", field = "t" }', "steps[0]: threshold needs above, below or both"),
    ],
)
def test_bad_step_parameters(step, expected):
    errors = errors_of(MQTT + f'[presets.lab]\nextends = "basic"\nsteps = [{step}]\n')
    assert all(error.startswith("presets.lab.steps[0]") for error in errors), errors
    assert any(expected in error for error in errors), errors


def test_step_durations_become_seconds():
    config = loads(
        MQTT + '[presets.lab]\nextends = "basic"\nsteps = [\n'
        '{ op = "downsample", every = "250ms" },\n'
        '{ op = "window", every = "1m", functions = ["mean"] },\n]\n'
    )
    steps = config["presets"]["lab"]["steps"]
    assert steps == [
        {"op": "downsample", "every": 0.25},
        {"op": "window", "every": 60.0, "functions": ["mean"]},
    ]


def test_all_errors_are_collected_at_once():
    errors = errors_of(
        '[gateway]\nid = "bad id"\n'
        '[api]\nlisten = "nowhere"\n'
        '[[sources]]\nname = "a"\nport = "/dev/x"\nbaud = 0\npreset = "nope"\n'
        '[presets.lab]\nsteps = [{ op = "zap" }]\nroutes = [{ sink = "ghost" }]\n'
        '[sinks.mqtt]\ntype = "mqtt"\nqos = 5\nurl = "http://broker"\n'
        '[sinks.odd]\ntype = "kafka"\n'
    )
    paths = [error.split(":")[0] for error in errors]
    assert paths == [
        "gateway.id",
        "api.listen",
        "sources[0].baud",
        "presets.lab.steps[0].op",
        "presets.lab.routes[0].sink",
        "sinks.mqtt.url",
        "sinks.mqtt.qos",
        "sinks.odd.type",
        "sources[0].preset",
    ]


def test_defaults_fill_a_minimal_config():
    config = loads(
        '[[sources]]\nname = "bench-1"\nport = "/dev/ttyACM0"\n'
        + MQTT
        + '[sinks.udp]\ntype = "udp"\ntargets = ["127.0.0.1:9999"]\n'
        + '[sinks.ws]\ntype = "websocket"\n[sinks.ev]\ntype = "sse"\n'
        + '[sinks.hook]\ntype = "webhook"\nurl = "https://example.com/in"\n'
        + '[sinks.rec]\ntype = "recorder"\n'
    )
    gateway_id = config["gateway"]["id"]
    assert gateway_id.split(".")[0] == socket.gethostname().split(".")[0].replace(" ", "-")
    assert config["gateway"]["data_dir"] == "./var"
    assert config["api"] == {
        "listen": "127.0.0.1:8080",
        "tokens": [],
        "tls": None,
        "allow_insecure": False,
        "rate_limit": {
            "token": {"rate": 10.0, "burst": 20},
            "address": {"rate": 20.0, "burst": 40},
        },
    }
    assert config["presets"] == {}
    assert config["sources"][0] == {
        "name": "bench-1",
        "port": "/dev/ttyACM0",
        "match": None,
        "simulate": None,
        "baud": 115200,
        "framing": "lines",
        "format": "json",
        "fields": None,
        "pattern": None,
        "delimiter": None,
        "sentences": None,
        "header": None,
        "decimal": None,
        "stream": "default",
        "preset": "basic",
        "max_line": 4096,
        "enabled": True,
    }
    sinks = config["sinks"]
    common = {
        "enabled": True,
        "buffer": {"max_bytes": 64 * 1024**2, "max_age": 7 * 86400.0, "overflow": "drop_oldest"},
        "breaker": {"failures": 5, "reset_after": 30.0},
        "retry": {"base": 0.5, "cap": 60.0},
        "queue_size": 10000,
        "max_batch": 500,
    }
    no_batch = {"max_readings": 1}
    assert sinks["mqtt"] == {
        "type": "mqtt",
        **common,
        "url": "mqtt://127.0.0.1:1883",
        "client_id": f"gw-{gateway_id}",
        "qos": 1,
        "retain": False,
        "topic": "gw/{gateway}/{device}/{stream}",
        "username": None,
        "password": None,
        "ca": None,
        "cert": None,
        "key": None,
        "keepalive": 30.0,
        "max_inflight": 1000,
        "availability": True,
        "discovery_prefix": "homeassistant",
        "device_timeout": 60.0,
        "encoding": "json",
        "batch": no_batch,
    }
    assert sinks["udp"] == {
        "type": "udp",
        **common,
        "targets": ["127.0.0.1:9999"],
        "encoding": "json",
        "max_datagram": 1472,
        "batch": no_batch,
        "ttl": 1,
        "broadcast": None,
        "interface": None,
    }
    live = {
        "topic": "gw/{gateway}/{device}/{stream}",
        "queue": 1000,
        "slow_consumer": "drop_oldest",
        "batch": no_batch,
    }
    assert sinks["ws"] == {"type": "websocket", **common, **live, "path": "/ws"}
    assert sinks["ev"] == {
        "type": "sse",
        **common,
        **live,
        "path": "/sse",
        "replay": 10_000,
        "replay_age": 600.0,
        "replay_dir": "./var/sse",
        "replay_fsync": "always",
        "client_retry": 2.0,
        "heartbeat": 15.0,
        "cors_origins": [],
    }
    assert sinks["hook"] == {
        "type": "webhook",
        **common,
        "url": "https://example.com/in",
        "timeout": 10.0,
        "encoding": "json",
        "batch": {"max_readings": 500},  # a POST carries a batch
        "headers": {},
        "verify": True,
        "ca": None,
        "cert": None,
        "key": None,
    }
    assert sinks["rec"] == {
        "type": "recorder",
        **common,
        "path": "./var/recordings",
        "format": "jsonl",
        "rotate_bytes": 100 * 1024**2,
        "rotate_every": 0.0,
        "gzip": False,
        "fsync_every": 1.0,
        "name": None,
    }


def test_simulated_source_takes_its_format_from_the_profile():
    config = loads('[[sources]]\nname = "s"\nsimulate = { profile = "csv", rate = 5 }\n')
    source = config["sources"][0]
    assert source["simulate"] == {"profile": "csv", "rate": 5}
    assert (source["format"], source["fields"], source["port"]) == (
        "csv",
        ["temperature", "humidity", "pressure"],
        None,
    )
    error = only_error('[[sources]]\nname = "s"\nsimulate = { profile = "kv" }\nformat = "json"\n')
    assert error == 'sources[0].format: expected "kv" for simulate profile "kv", got "json"'
    error = only_error('[[sources]]\nname = "s"\nsimulate = { profile = "gps", rate = 1 }\n')
    assert error.startswith("sources[0].simulate.profile: expected one of env, csv, kv, nmea")


def test_profile_table_matches_the_simulator():
    from gateway.config.sources_schema import PROFILE_FORMATS
    from gateway.sources.simulator import PROFILE_FORMATS as SIMULATOR

    assert PROFILE_FORMATS == SIMULATOR


def test_sizes_durations_and_tokens_are_normalised():
    digest = "A" * 64
    config = loads(
        '[api]\nlisten = "[::1]:0"\ntokens = [\n'
        f'{{ name = "ops", role = "admin", sha256 = "{digest}" }},\n'
        '{ name = "view", role = "viewer", token = "s3cret" },\n]\n'
        '[[sources]]\nname = "a"\nport = "/dev/x"\nmax_line = "1KB"\n'
        + MQTT
        + 'keepalive = "1m"\nbuffer = { max_bytes = 1000, max_age = "12h" }\n'
    )
    assert config["api"]["listen"] == "[::1]:0"
    assert config["api"]["tokens"] == [
        {"name": "ops", "role": "admin", "sha256": "a" * 64},
        {"name": "view", "role": "viewer", "sha256": hashlib.sha256(b"s3cret").hexdigest()},
    ]
    assert config["sources"][0]["max_line"] == 1024
    assert config["sinks"]["mqtt"]["keepalive"] == 60.0
    assert config["sinks"]["mqtt"]["buffer"]["max_bytes"] == 1000
    assert config["sinks"]["mqtt"]["buffer"]["max_age"] == 43200.0


def test_tls_keys_need_an_mqtts_url_and_password_needs_a_user():
    errors = errors_of(MQTT + 'ca = "ca.pem"\npassword = "p"\ncert = "c.pem"\n')
    assert errors == [
        "sinks.mqtt.username: expected a user name (MQTT sends a password only with one),"
        " got nothing",
        "sinks.mqtt.key: expected a file path (cert and key go together), got nothing",
        'sinks.mqtt.ca: not used with an "mqtt://" URL (use "mqtts://")',
    ]


def test_two_live_sinks_cannot_share_a_path():
    error = only_error('[sinks.a]\ntype = "websocket"\n[sinks.b]\ntype = "sse"\npath = "/ws"\n')
    assert (
        error == 'sinks.b.path: expected a path no other sink serves, got "/ws" (sinks.a serves it)'
    )


def test_udp_targets_are_checked_one_by_one():
    errors = errors_of('[sinks.u]\ntype = "udp"\ntargets = ["1.2.3.4:9", "host", "[::1]:70000"]\n')
    assert errors == [
        'sinks.u.targets[1]: expected a "host:port" address (IPv6 as "[::1]:port"), got "host"',
        'sinks.u.targets[2]: expected a "host:port" address (IPv6 as "[::1]:port"),'
        ' got "[::1]:70000" (the port must be from 1 to 65535)',
    ]
    assert only_error('[sinks.u]\ntype = "udp"\n').startswith(
        "sinks.u.targets: expected a non-empty"
    )


def test_normalised_config_validates_again_unchanged():
    with open("docs/examples/gateway.toml", encoding="utf-8") as handle:
        config = loads(handle.read(), environ={})
    again, errors = normalize(config)
    assert errors == []
    assert again == config


GATEWAY = {"id": "gw1", "data_dir": "./var", "fsync": "batch"}


def test_validate_sink_for_runtime_reconfiguration():
    options = validate_sink("mqtt", {"type": "mqtt", "qos": 0, "retry": {"cap": "5s"}}, GATEWAY)
    assert options["qos"] == 0 and options["retry"] == {"base": 0.5, "cap": 5.0}
    assert options["client_id"] == "gw-gw1"
    with pytest.raises(ConfigError) as caught:
        validate_sink("mqtt", {"type": "mqtt", "qos": 2}, GATEWAY)
    assert caught.value.errors == [
        "sinks.mqtt.qos: expected 0 or 1, got 2 (QoS 2 is not supported)"
    ]


def test_an_mqtt_client_id_may_name_the_gateway_and_the_sink():
    from gateway import sinks

    options = validate_sink("up", {"type": "mqtt", "client_id": "{gateway}-{sink}"}, GATEWAY)
    assert sinks.create("up", options, "gw1").client_id == "gw1-up"


def test_a_runtime_sse_sink_syncs_its_window_as_the_gateway_does():
    options = validate_sink("live", {"type": "sse"}, GATEWAY)
    assert options["replay_fsync"] == "batch"
    assert options["replay_dir"] == "./var/sse"


# Keys drawn from the real schema, so random documents reach deep into the validator.
_KEYS = sorted(
    {
        "gateway",
        "api",
        "sources",
        "presets",
        "sinks",
        "id",
        "data_dir",
        "listen",
        "tokens",
        "name",
        "role",
        "sha256",
        "token",
        "port",
        "match",
        "simulate",
        "vid",
        "pid",
        "profile",
        "rate",
        "format",
        "fields",
        "pattern",
        "framing",
        "preset",
        "type",
        "url",
        "qos",
        "topic",
        "targets",
        "steps",
        "append_steps",
        "routes",
        "extends",
        "sink",
        "op",
        "every",
        "count",
        "batch",
        "buffer",
        "max_bytes",
        "path",
        "mqtt",
        "udp",
        "lab",
        "map",
        "delta",
    }
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.floats(allow_nan=True),
    st.sampled_from(
        [
            "",
            "x",
            "mqtt",
            "udp",
            "csv",
            "regex",
            "1s",
            "64MB",
            "lab",
            "basic",
            "{device}",
            "(?P<a>x)",
            "(",
            "127.0.0.1:1",
            "mqtt://h",
            "rename",
        ]
    ),
)
_DOCUMENTS = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(_KEYS), children, max_size=5),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _DOCUMENTS, max_size=5))
def test_any_document_gives_error_lines_never_a_crash(document):
    from gateway.config import presets

    config, errors = normalize(document)
    errors += presets.check_references(config)  # loads() runs both, errors or not
    assert all(isinstance(error, str) and ": " in error for error in errors)


def test_api_tls_allow_insecure_and_rate_limits_are_validated():
    text = (
        '[api]\nlisten = "0.0.0.0:8443"\ntls = { cert = "c.pem", key = "k.pem" }\n'
        'tokens = [{ name = "ops", role = "admin", token = "s3cret" }]\n'
        "rate_limit = { token = { rate = 2.5 }, address = { burst = 7 } }\n"
    )
    api = loads(text)["api"]
    assert api["tls"] == {"cert": "c.pem", "key": "k.pem"}
    assert api["allow_insecure"] is False  # not needed: tokens and TLS
    assert api["rate_limit"] == {
        "token": {"rate": 2.5, "burst": 20},
        "address": {"rate": 20.0, "burst": 7},
    }
    assert loads(text.replace('"0.0.0.0:8443"', '"127.0.0.1:8443"'))["api"]["listen"] == (
        "127.0.0.1:8443"
    )


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            'tls = { cert = "c.pem" }',
            "api.tls.key: expected a PEM private key file path, got nothing",
        ),
        ("allow_insecure = 1", "api.allow_insecure: expected true or false, got 1"),
        (
            "rate_limit = { token = { rate = 0 } }",
            "api.rate_limit.token.rate: expected a number greater than 0, got 0",
        ),
        (
            "rate_limit = { address = { burst = 0 } }",
            "api.rate_limit.address.burst: expected a positive integer, got 0",
        ),
        ("rate_limit = { user = {} }", "api.rate_limit.user: unknown key"),
    ],
)
def test_api_security_keys_name_their_errors(lines, expected):
    assert only_error(f"[api]\n{lines}\n").startswith(expected)
