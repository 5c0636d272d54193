"""Host-side tools for sensor nodes: the `host-tools` command (host_tools.cli)."""
