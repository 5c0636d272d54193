"""Configuration: load gateway.toml, substitute ${ENV}, validate, normalise, resolve presets."""

from gateway.config.loader import check_file, load, loads, validate_sink
from gateway.config.report import ConfigError
from gateway.config.sessions_schema import validate_session
from gateway.config.units import parse_duration, parse_size

__all__ = [
    "ConfigError",
    "check_file",
    "load",
    "loads",
    "parse_duration",
    "parse_size",
    "validate_session",
    "validate_sink",
]
