"""docs/config.md documents every key the schema accepts, and its key tables name no other."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config.api_schema import API_KEYS, LIMIT_KEYS, RATE_LIMIT_KEYS, TLS_KEYS, TOKEN_KEYS
from gateway.config.presets_schema import PRESET_KEYS, ROUTE_KEYS
from gateway.config.schema import GATEWAY_KEYS, TOP_KEYS
from gateway.config.sinks_schema import (
    BATCH_KEYS,
    BREAKER_KEYS,
    BUFFER_KEYS,
    COMMON_SINK_KEYS,
    RETRY_KEYS,
    SINK_KEYS,
    SINK_TYPES,
)
from gateway.config.sources_schema import MATCH_KEYS, SIMULATE_KEYS, SOURCE_KEYS
from gateway.core.pipeline import STEP_PARAMETERS
from gateway.core.steps import FIELD_RULE_KEYS

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"

# Where each table's keys are documented: the section under a heading starting with this.
SECTIONS = {
    "## `[gateway]`": GATEWAY_KEYS,
    "## `[api]`": API_KEYS + RATE_LIMIT_KEYS + LIMIT_KEYS + TOKEN_KEYS + TLS_KEYS,
    "## `[[sources]]`": SOURCE_KEYS + MATCH_KEYS + SIMULATE_KEYS,
    "## `[presets.NAME]`": PRESET_KEYS,
    "### Routes": ROUTE_KEYS + BATCH_KEYS,
    "## `[sinks.NAME]`": ("type",),
    "### Keys of every sink": tuple(key for key in COMMON_SINK_KEYS if key != "type")
    + BUFFER_KEYS
    + BREAKER_KEYS
    + RETRY_KEYS,
}
for _type in SINK_TYPES:
    # websocket and sse share a section.
    _heading = "### `websocket` and `sse`" if _type in ("websocket", "sse") else f"### `{_type}`"
    _keys = SINK_KEYS[_type] + (BATCH_KEYS if "batch" in SINK_KEYS[_type] else ())
    SECTIONS[_heading] = tuple(dict.fromkeys(SECTIONS.get(_heading, ()) + _keys))

_HEADING = re.compile(r"^#{2,3} .*$", re.MULTILINE)
_CODE = re.compile(r"`([^`\n]+)`")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def sections(text: str) -> dict[str, str]:
    """Each `##`/`###` heading line and the text up to the next heading."""
    starts = [match.start() for match in _HEADING.finditer(text)] + [len(text)]
    return {
        text[start:end].split("\n", 1)[0]: text[start:end] for start, end in zip(starts, starts[1:])
    }


def section(text: str, prefix: str) -> str:
    found = [body for heading, body in sections(text).items() if heading.startswith(prefix)]
    assert len(found) == 1, f"docs/config.md: expected one section {prefix!r}, found {len(found)}"
    return found[0]


def code_words(text: str) -> set[str]:
    """The names inside `code` spans, quoted strings left out ("auto" is a value, not a key)."""
    words: set[str] = set()
    for span in _CODE.findall(text):
        words.update(_WORD.findall(re.sub(r'"[^"]*"', "", span)))
    return words


def key_column(text: str) -> set[str]:
    """The names in the first column of the section's key tables (| Key | ... |)."""
    names: set[str] = set()
    in_table = False
    for line in text.splitlines():
        if line.startswith("| Key |"):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and not line.startswith("|---"):
            names |= code_words(line.split("|")[1])
    return names


TEXT = DOC.read_text()
PAIRS = [(heading, key) for heading, keys in SECTIONS.items() for key in keys]


@pytest.mark.parametrize(("heading", "key"), PAIRS, ids=[f"{h[3:]}-{k}" for h, k in PAIRS])
def test_every_key_is_documented_in_its_section(heading, key):
    assert key in code_words(section(TEXT, heading))


@pytest.mark.parametrize("heading", list(SECTIONS))
def test_key_tables_name_only_keys_the_schema_accepts(heading):
    assert sorted(key_column(section(TEXT, heading)) - set(SECTIONS[heading])) == []


def test_every_top_level_table_has_a_section():
    headings = " ".join(heading for heading in sections(TEXT) if heading.startswith("## "))
    assert [
        key for key in TOP_KEYS if f"[{key}" not in headings and f"[[{key}" not in headings
    ] == []


def test_every_step_and_its_parameters_are_documented():
    rows = {}
    for line in section(TEXT, "### Steps").splitlines():
        cells = line.split("|")
        if len(cells) > 3 and _CODE.fullmatch(cells[1].strip()):
            rows[cells[1].strip().strip("`")] = code_words(line)
    assert sorted(rows) == sorted(STEP_PARAMETERS)
    missing = [
        f"{op}.{name}" for op, parameters in STEP_PARAMETERS.items() for name in parameters
    ] + [f"validate.fields.{key}" for key in FIELD_RULE_KEYS]
    documented = [f"{op}.{name}" for op, words in rows.items() for name in words]
    documented += [f"validate.fields.{name}" for name in rows.get("validate", ())]
    assert [name for name in missing if name not in documented] == []


def test_the_checks_can_fail():
    # A key table that lists a key the schema does not accept, and a section without a key.
    doc = "## `[gateway]`\n\n| Key | Type |\n|---|---|\n| `id` | name |\n| `max_delay` | d |\n"
    assert key_column(section(doc, "## `[gateway]`")) == {"id", "max_delay"}
    assert "data_dir" not in code_words(section(doc, "## `[gateway]`"))
    assert "auto" not in code_words('`broadcast = "auto"`')
