"""Edge gateway: serial devices in, presets from TOML, MQTT/UDP/WebSocket out."""

__version__ = "0.1.0"
