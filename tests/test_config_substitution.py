"""${VAR} substitution before TOML parsing: every form, its errors, and where it applies."""

import pytest

from gateway.config import ConfigError, loads
from gateway.config.substitution import substitute


def test_plain_reference_is_replaced():
    text, errors = substitute('id = "${GW}"', {"GW": "pi-7"})
    assert (text, errors) == ('id = "pi-7"', [])


def test_default_applies_when_unset_or_empty():
    assert substitute('a = "${X:-dflt}"', {})[0] == 'a = "dflt"'
    assert substitute('a = "${X:-dflt}"', {"X": ""})[0] == 'a = "dflt"'
    assert substitute('a = "${X:-dflt}"', {"X": "set"})[0] == 'a = "set"'
    assert substitute('a = "${X:-}"', {})[0] == 'a = ""'


def test_unset_reference_without_default_names_the_variable_and_line():
    _, errors = substitute('[gateway]\nid = "${GATEWAY_NAME}"\n', {})
    assert len(errors) == 1
    assert errors[0].startswith("line 2: ${GATEWAY_NAME}:")
    assert "GATEWAY_NAME is not set" in errors[0]


def test_required_reference_reports_its_message_when_unset_or_empty():
    _, unset = substitute('p = "${MQTT_PASSWORD:?set the broker password}"', {})
    _, empty = substitute('p = "${MQTT_PASSWORD:?set the broker password}"', {"MQTT_PASSWORD": ""})
    assert unset == [
        "line 1: ${MQTT_PASSWORD:?set the broker password}: MQTT_PASSWORD is not set:"
        " set the broker password"
    ]
    assert "MQTT_PASSWORD is empty: set the broker password" in empty[0]
    assert substitute('p = "${P:?x}"', {"P": "s3cret"}) == ('p = "s3cret"', [])


def test_double_dollar_is_a_literal_dollar_and_lone_dollars_stay():
    text, errors = substitute("a = \"$${HOME} costs $5\"\nb = '^end$'", {"HOME": "/root"})
    assert errors == []
    assert text == "a = \"${HOME} costs $5\"\nb = '^end$'"


def test_every_error_is_reported_at_once():
    _, errors = substitute('a = "${A}"\nb = "${B:?need b}"\nc = "${}"\n', {})
    assert [error.split(":")[0] for error in errors] == ["line 1", "line 2", "line 3"]
    assert "bad reference" in errors[2]


def test_comments_are_not_substituted():
    text, errors = substitute('# password = "${SECRET}"\na = 1 # ${OTHER}\n', {})
    assert errors == []
    assert "${SECRET}" in text and "${OTHER}" in text


def test_hash_inside_a_string_is_not_a_comment():
    text, errors = substitute('topic = "a#${X}"', {"X": "b"})
    assert (text, errors) == ('topic = "a#b"', [])


def test_values_are_escaped_for_basic_strings():
    config = loads(
        '[sinks.m]\ntype = "mqtt"\nusername = "u"\npassword = "${PW}"\n',
        environ={"PW": 'q"uo\\te\nnew'},
    )
    assert config["sinks"]["m"]["password"] == 'q"uo\\te\nnew'


def test_values_go_verbatim_outside_strings():
    config = loads('[sinks.m]\ntype = "mqtt"\nqos = ${QOS:-0}\n', environ={})
    assert config["sinks"]["m"]["qos"] == 0


def test_literal_strings_refuse_values_they_cannot_hold():
    text, errors = substitute("a = '${X}'", {"X": "it's"})
    assert len(errors) == 1 and "literal string" in errors[0]
    assert substitute("a = '${X}'", {"X": "fine"}) == ("a = 'fine'", [])


def test_loads_reports_substitution_errors_before_parsing():
    with pytest.raises(ConfigError) as caught:
        loads('[gateway]\nid = "${NOPE}"\n', environ={})
    assert len(caught.value.errors) == 1
    assert "NOPE" in caught.value.errors[0]


def test_environ_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("GW_TEST_ID", "from-env")
    assert loads('[gateway]\nid = "${GW_TEST_ID}"\n')["gateway"]["id"] == "from-env"


def test_multiline_strings_keep_line_numbers_and_string_state():
    text = 'a = """\nsay "${X}" \\\n  # not a comment ${Y}\n"""\nb = \'\'\'${Z}\'\'\'\nc = "${W}"\n'
    out, errors = substitute(text, {"X": 'x"1', "Y": "y", "Z": "z"})
    assert errors == [
        "line 6: ${W}: environment variable W is not set (give a default with ${W:-default})"
    ]
    assert 'say "x\\"1"' in out and "# not a comment y" in out and "'''z'''" in out


def test_escaped_quote_does_not_end_the_string():
    out, errors = substitute('a = "\\"${X}" # ${Y}', {"X": "v"})
    assert (out, errors) == ('a = "\\"v" # ${Y}', [])
