"""GET /openapi.json: the OpenAPI 3 description of every HTTP route (contract section 3).

Written by hand, kept true by tests/api/test_openapi.py, which compares its paths and methods
with the routes the Falcon app registers and runs schemathesis against a real server.
"""

from __future__ import annotations

from typing import Any

import falcon

from api.admin import AdminAuth

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: str | None = "Error") -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {_JSON: {"schema": _ref(schema)}}}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_LIMIT = {"type": "integer", "minimum": 1}
_CURSOR = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_INSTANCE = _path_param("instance", "Evolution instance name")
_READ_ERRORS = {
    "400": _answer("Malformed query parameter"),
    "401": _answer("Missing or invalid API token"),
    "404": _answer("No such instance for this token (another tenant's is 404 too)"),
    "503": _answer("The database cannot answer now (down, or not migrated yet); retry later"),
}
_ADMIN_401 = {"401": _answer("Missing or invalid admin token")}

_WEBHOOK = {
    "summary": "Receive one Evolution API webhook",
    "description": "200 only after the event is committed; a redelivery answers 200 with the"
    " first position and duplicate=true. Auth: Bearer WEBHOOK_TOKEN, X-Webhook-Token, ?token=,"
    " or Evolution's HS256 JWT.",
    "security": [{"webhookBearer": []}, {"webhookHeader": []}, {"webhookQuery": []}],
    "requestBody": {
        "required": True,
        "content": {
            _JSON: {
                "schema": {
                    "type": "object",
                    "required": ["event"],
                    "properties": {
                        "event": {"type": "string"},
                        "instance": {"type": "string"},
                        "data": {},
                    },
                }
            }
        },
    },
    "responses": {
        "200": _answer("Stored (or already stored)", "Appended"),
        "400": _answer("Not a JSON object with a string event; kept in quarantine"),
        "401": _answer("Missing or invalid webhook credentials"),
        "413": _answer("Body over MAX_BODY_BYTES"),
        "503": _answer("The database cannot take the write; retry after Retry-After"),
    },
}

_PATHS: dict[str, dict[str, Any]] = {
    "/webhooks/evolution": {"post": {**_WEBHOOK, "operationId": "postWebhook"}},
    "/webhooks/evolution/{suffix}": {
        "post": {
            **_WEBHOOK,
            "operationId": "postWebhookByEvent",
            "parameters": [_path_param("suffix", "Evolution's per-event suffix")],
        }
    },
    "/health": {
        "get": {
            "operationId": "getHealth",
            "summary": "Liveness: the database answers within 1 s",
            "responses": {"200": _answer("Alive", "Health"), "503": _answer("Unhealthy", "Health")},
        }
    },
    "/health/ready": {
        "get": {
            "operationId": "getReady",
            "summary": "Readiness: dependencies answer, migrations at head, not draining",
            "responses": {"200": _answer("Ready", "Health"), "503": _answer("Not ready", "Health")},
        }
    },
    "/api/instances/{instance}/chats": {
        "get": {
            "operationId": "listChats",
            "summary": "An instance's chats, newest activity first, in keyset pages",
            "security": [{"apiToken": []}],
            "parameters": [
                _INSTANCE,
                _query(
                    "before", "chat_jid of the last chat of the previous page", {"type": "string"}
                ),
                _query("limit", "Items per page (at most 500)", _LIMIT),
            ],
            "responses": {"200": _answer("Chats", "Items"), **_READ_ERRORS},
        }
    },
    "/api/instances/{instance}/chats/{chat_jid}/messages": {
        "get": {
            "operationId": "listMessages",
            "summary": "A chat's messages, newest first, in keyset pages",
            "security": [{"apiToken": []}],
            "parameters": [
                _INSTANCE,
                _path_param("chat_jid", "The chat's JID"),
                _query(
                    "before", "key_id of the last message of the previous page", {"type": "string"}
                ),
                _query("limit", "Items per page (at most 500)", _LIMIT),
            ],
            "responses": {"200": _answer("Messages", "Items"), **_READ_ERRORS},
        }
    },
    "/api/instances/{instance}/feed": {
        "get": {
            "operationId": "readFeed",
            "summary": "The change feed after a cursor, in cursor order",
            "security": [{"apiToken": []}],
            "parameters": [
                _INSTANCE,
                _query("after", "Last cursor the client has", _CURSOR),
                _query("limit", "Items per page (at most 5000)", _LIMIT),
            ],
            "responses": {"200": _answer("Feed changes", "Items"), **_READ_ERRORS},
        }
    },
    "/api/media/{media_id}": {
        "get": {
            "operationId": "getMedia",
            "summary": "A message's media: a redirect to a short-lived URL, or the file",
            "security": [{"apiToken": []}],
            "parameters": [_path_param("media_id", "The media id in a message's media")],
            "responses": {
                "200": {"description": "The file (local media store)"},
                "206": {"description": "The bytes a Range header asked for (local media store)"},
                "302": {"description": "Redirect to a presigned URL"},
                **_READ_ERRORS,
                "409": _answer("The media is not stored (yet): pending or failed"),
                "416": _answer("The Range asks for no byte of the file"),
                "503": _answer("The database or the media store cannot answer now; retry later"),
            },
        }
    },
    "/ws": {
        "get": {
            "operationId": "liveFeed",
            "summary": "WebSocket: the change feed after a cursor, then live changes",
            "security": [{"apiTokenQuery": []}, {"apiToken": []}],
            "parameters": [
                {
                    **_query("instance", "Evolution instance name", {"type": "string"}),
                    "required": True,
                },
                _query("after", "Last cursor the client has", _CURSOR),
            ],
            "responses": {
                "101": {"description": "Switching protocols to a WebSocket"},
                "400": _answer("Malformed query parameter"),
                "401": _answer("Missing or invalid API token"),
                "404": _answer("No such instance for this token"),
                "426": _answer("Not a WebSocket upgrade request"),
            },
        }
    },
    "/admin/projections": {
        "get": {
            "operationId": "listProjections",
            "summary": "Checkpoint, head, lag, parked events and rebuild state per projection",
            "security": [{"adminToken": []}],
            "responses": {
                "200": _answer("Projections", "Projections"),
                **_ADMIN_401,
                "503": _answer("The database cannot answer now; retry later"),
            },
        }
    },
    "/admin/projections/{name}/rebuild": {
        "post": {
            "operationId": "rebuildProjection",
            "summary": "Start a zero-downtime rebuild (run by the worker)",
            "security": [{"adminToken": []}],
            "parameters": [_path_param("name", "Projection name (messages)")],
            "responses": {
                "202": _answer("Requested", "RebuildRequested"),
                **_ADMIN_401,
                "404": _answer("No projection of that name"),
                "409": _answer("A rebuild is already requested or running"),
                "503": _answer("The database or the broker cannot take the request"),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "getMetrics",
            "summary": "Prometheus text format",
            "security": [{"adminToken": []}],
            "responses": {
                "200": {
                    "description": "Metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_ADMIN_401,
            },
        }
    },
    "/": {
        "get": {
            "operationId": "getLivePage",
            "summary": "The live page (its user types the API token in)",
            "responses": {
                "200": {
                    "description": "HTML",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/static/{file}": {
        "get": {
            "operationId": "getStatic",
            "summary": "The browser client and the live page's assets (zapline.js)",
            "parameters": [_path_param("file", "File name, e.g. zapline.js")],
            "responses": {
                "200": {"description": "The file"},
                "404": {"description": "No such file"},
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document",
            "security": [{"adminToken": []}],
            "responses": {
                "200": {
                    "description": "OpenAPI 3",
                    "content": {_JSON: {"schema": {"type": "object"}}},
                },
                **_ADMIN_401,
            },
        }
    },
}

_SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "quarantine_id": {"type": "integer"}},
    },
    "Appended": {
        "type": "object",
        "required": ["position", "duplicate"],
        "properties": {"position": {"type": "integer"}, "duplicate": {"type": "boolean"}},
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
        "additionalProperties": True,
    },
    "Items": {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {"type": "array", "items": {"type": "object"}},
            "next_before": {"type": ["string", "null"]},
            "cursor": {"type": "integer"},
            "reset": {"type": "boolean"},
        },
    },
    "Projections": {
        "type": "object",
        "required": ["projections"],
        "properties": {"projections": {"type": "array", "items": {"type": "object"}}},
    },
    "RebuildRequested": {
        "type": "object",
        "required": ["projection", "state"],
        "properties": {"projection": {"type": "string"}, "state": {"type": "string"}},
    },
}

_SECURITY = {
    "webhookBearer": {"type": "http", "scheme": "bearer", "description": "WEBHOOK_TOKEN or JWT"},
    "webhookHeader": {"type": "apiKey", "in": "header", "name": "X-Webhook-Token"},
    "webhookQuery": {"type": "apiKey", "in": "query", "name": "token"},
    "apiToken": {"type": "http", "scheme": "bearer", "description": "A token of API_TOKENS"},
    "apiTokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
    "adminToken": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"},
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Zapline",
            "version": "1",
            "description": "Evolution API webhooks in; chats, messages and media out.",
        },
        "paths": _PATHS,
        "components": {"schemas": _SCHEMAS, "securitySchemes": _SECURITY},
    }


class OpenApiResource:
    """GET /openapi.json, an admin route (contract section 3)."""

    def __init__(self, auth: AdminAuth) -> None:
        self._auth = auth

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._auth.require(req)
        resp.media = document()
