"""Package data: the built-in presets as TOML files (read through gateway.config.presets)."""
