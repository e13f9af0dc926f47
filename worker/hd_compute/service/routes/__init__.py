"""The worker's HTTP routes, one module per resource; each module's `routes` is an aiohttp RouteTableDef."""

from . import classifiers, memories, probes, vectors

ROUTE_TABLES = (vectors.routes, memories.routes, classifiers.routes, probes.routes)

__all__ = ["ROUTE_TABLES"]
