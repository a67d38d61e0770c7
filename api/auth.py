"""Who may post webhooks: the shared token in one of three places, or Evolution's HS256 JWT."""

from __future__ import annotations

import hashlib
import hmac

import falcon
import jwt

from events.errors import ZaplineError


class Unauthorized(ZaplineError):
    """Missing or wrong credentials."""


class WebhookAuth:
    """Checks a webhook request's credentials in constant time."""

    def __init__(self, token: str | None, jwt_secret: str | None) -> None:
        self._digest = digest(token) if token else None
        self._jwt_secret = jwt_secret

    def verify(self, req: falcon.Request) -> None:
        """Accept `Authorization: Bearer`, `X-Webhook-Token`, `?token=` or a valid JWT.

        Raises:
            Unauthorized: none of them holds valid credentials.
        """
        token = bearer(req)
        offered = [token, req.get_header("X-Webhook-Token"), req.get_param("token")]
        if self._digest is not None:
            matches = [hmac.compare_digest(digest(v), self._digest) for v in offered if v]
            if any(matches):
                return
        if self._jwt_secret and token and token.count(".") == 2:
            try:
                # Evolution signs {iat, exp: +600 s, app, action} with the instance's jwt_key.
                jwt.decode(
                    token,
                    self._jwt_secret,
                    algorithms=["HS256"],
                    options={"require": ["exp"]},
                    leeway=30,
                )
                return
            except jwt.PyJWTError:
                pass
        raise Unauthorized("missing or invalid webhook credentials")


def bearer(req: falcon.Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    header = req.get_header("Authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def digest(token: str) -> bytes:
    """A fixed-length digest of a token, so comparing two leaks neither's length."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
