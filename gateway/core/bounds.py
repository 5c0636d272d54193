"""Default memory bounds shared by the config validator, the sinks and their queues."""

# Readings a sink keeps in memory: the bound for buffer "none", the spill point for "spill",
# the fallback bound while the disk store has failed. A queued reading costs about 700 bytes
# on CPython (the envelope and its data dict), so the default holds about 7 MB.
DEFAULT_QUEUE_SIZE = 10000
