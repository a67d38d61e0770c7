"""ApiAuth: which instances a read or WebSocket token may see (API_TOKENS, contract section 2)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

import falcon

from api.auth import bearer, digest
from events.errors import ZaplineError

# In API_TOKENS, this instance name grants every instance.
EVERY_INSTANCE = "*"


class BadApiToken(ZaplineError):
    """A read or WebSocket request without a valid API token."""


class NotFound(ZaplineError):
    """Nothing here for this token: absent, or another tenant's (never said which)."""


class ApiAuth:
    """Resolves a request's API token to the instances it may see, in constant time."""

    def __init__(self, api_tokens: Mapping[str, frozenset[str]]) -> None:
        # Digests have one length, so comparing them leaks no token's length either.
        self._tokens = [(digest(token), names) for token, names in api_tokens.items()]

    def instances_for(self, req: falcon.Request) -> frozenset[str]:
        """The instances the request's token may see (`*` means all).

        The token comes from `Authorization: Bearer <token>` or, for WebSocket clients that
        cannot send headers, from `?token=`.

        Raises:
            BadApiToken: no token, or one that API_TOKENS does not hold.
        """
        offered = bearer(req) or req.get_param("token") or ""
        offered_digest = digest(offered)
        found: frozenset[str] | None = None
        for candidate, names in self._tokens:
            # Compare against every token, so timing tells nothing about which one matched.
            if hmac.compare_digest(offered_digest, candidate) and offered:
                found = names
        if found is None:
            raise BadApiToken("missing or invalid API token")
        return found

    def require(self, req: falcon.Request, instance: str) -> None:
        """Let the request through only if its token may see `instance`.

        Raises:
            BadApiToken: no token, or one that API_TOKENS does not hold.
            NotFound: the token may not see `instance` (404, like anything absent).
        """
        if not may_see(self.instances_for(req), instance):
            raise NotFound("not found")


def may_see(instances: frozenset[str], instance: str) -> bool:
    """Whether a token granted `instances` may see `instance`."""
    return EVERY_INSTANCE in instances or instance in instances
