"""RejectNul: a NUL character in a path or query parameter is a 400, not a database error.

PostgreSQL text cannot hold NUL (psycopg2 refuses such a parameter with ValueError), so a
request carrying one would otherwise fail as a 500 wherever the value reaches a query.
"""

from __future__ import annotations

from typing import Any

import falcon

from api.reads import BadQuery


class RejectNul:
    """Falcon middleware refusing NUL in the path and in query parameters.

    A resource with a true `nul_safe` attribute is passed over: it keeps no URL value from
    reaching a query unclean (the webhook resource must store an authenticated body whatever
    its URL carries).
    """

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict[str, Any]
    ) -> None:
        if getattr(resource, "nul_safe", False):
            return
        values = [req.path, *params.values()]
        for value in req.params.values():
            values += value if isinstance(value, list) else [value]
        if any("\x00" in str(value) for value in values):
            raise BadQuery("NUL characters are not allowed in paths or parameters")
