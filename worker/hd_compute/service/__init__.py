"""The HDC worker service: HTTP API (aiohttp) over the functional API, micro-batching, state snapshots."""
