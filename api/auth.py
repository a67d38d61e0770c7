"""Who may post webhooks: the shared token in one of three places, or Evolution's HS256 JWT."""

from __future__ import annotations

import hmac

import falcon
import jwt

from events.errors import ZaplineError


class Unauthorized(ZaplineError):
    """Missing or wrong credentials."""


class WebhookAuth:
    """Checks a webhook request's credentials in constant time."""

    def __init__(self, token: str | None, jwt_secret: str | None) -> None:
        self._token = token.encode() if token else None
        self._jwt_secret = jwt_secret

    def verify(self, req: falcon.Request) -> None:
        """Accept `Authorization: Bearer`, `X-Webhook-Token`, `?token=` or a valid JWT.

        Raises:
            Unauthorized: none of them holds valid credentials.
        """
        bearer = _bearer(req)
        offered = [bearer, req.get_header("X-Webhook-Token"), req.get_param("token")]
        if self._token is not None:
            matches = [hmac.compare_digest(v.encode(), self._token) for v in offered if v]
            if any(matches):
                return
        if self._jwt_secret and bearer and bearer.count(".") == 2:
            try:
                # Evolution signs {iat, exp: +600 s, app, action} with the instance's jwt_key.
                jwt.decode(
                    bearer,
                    self._jwt_secret,
                    algorithms=["HS256"],
                    options={"require": ["exp"]},
                    leeway=30,
                )
                return
            except jwt.PyJWTError:
                pass
        raise Unauthorized("missing or invalid webhook credentials")


def _bearer(req: falcon.Request) -> str | None:
    header = req.get_header("Authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None
