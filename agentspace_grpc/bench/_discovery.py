"""A discovery document for the dataConnector token methods, as google-api-python-client reads it.

The method and schema entries follow the public Discovery Engine v1alpha discovery document;
the methods sit under ``projects.locations.collections.dataConnector`` as they do there, so
``service.projects().locations().collections().dataConnector().acquireAccessToken(...)`` is the
call people make today. ``rootUrl`` points at the server under test.
"""

from __future__ import annotations

from typing import Any

_SCOPES = [
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/discoveryengine.assist.readwrite",
    "https://www.googleapis.com/auth/discoveryengine.readwrite",
    "https://www.googleapis.com/auth/discoveryengine.serving.readwrite",
]
_PREFIX = "GoogleCloudDiscoveryengineV1alpha"
_NAME_PARAMETER = {
    "name": {
        "description": "Required. The resource name of the connector.",
        "location": "path",
        "pattern": "^projects/[^/]+/locations/[^/]+/collections/[^/]+/dataConnector$",
        "required": True,
        "type": "string",
    }
}
_FLAT = "v1alpha/projects/{projectsId}/locations/{locationsId}/collections/{collectionsId}"


def _method(verb: str, http: str, *, request: str | None, response: str) -> dict[str, Any]:
    method: dict[str, Any] = {
        "id": f"discoveryengine.projects.locations.collections.dataConnector.{verb}",
        "flatPath": f"{_FLAT}/dataConnector:{verb}",
        "path": f"v1alpha/{{+name}}:{verb}",
        "httpMethod": http,
        "parameterOrder": ["name"],
        "parameters": _NAME_PARAMETER,
        "response": {"$ref": f"{_PREFIX}{response}"},
        "scopes": _SCOPES,
    }
    if request is not None:
        method["request"] = {"$ref": f"{_PREFIX}{request}"}
    return method


def _schema(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"{_PREFIX}{name}", "type": "object", "properties": properties}


_STRING = {"type": "string"}
_TOKEN_INFO = {"$ref": f"{_PREFIX}RefreshTokenInfo"}


def discovery_document(root_url: str) -> dict[str, Any]:
    """The discovery document with ``rootUrl`` set to ``root_url`` (ending in ``/``)."""
    if not root_url.endswith("/"):
        root_url += "/"
    methods = {
        "acquireAccessToken": _method(
            "acquireAccessToken",
            "POST",
            request="AcquireAccessTokenRequest",
            response="AcquireAccessTokenResponse",
        ),
        "checkRefreshToken": {
            **_method(
                "checkRefreshToken", "GET", request=None, response="CheckRefreshTokenResponse"
            ),
            "deprecated": True,
        },
    }
    return {
        "kind": "discovery#restDescription",
        "discoveryVersion": "v1",
        "id": "discoveryengine:v1alpha",
        "name": "discoveryengine",
        "version": "v1alpha",
        "title": "Discovery Engine API",
        "protocol": "rest",
        "rootUrl": root_url,
        "mtlsRootUrl": root_url,
        "servicePath": "",
        "baseUrl": root_url,
        "batchPath": "batch",
        "parameters": {
            "alt": {
                "type": "string",
                "location": "query",
                "default": "json",
                "enum": ["json", "media", "proto"],
            },
            "fields": {"type": "string", "location": "query"},
            "key": {"type": "string", "location": "query"},
            "prettyPrint": {"type": "boolean", "location": "query", "default": "true"},
            "quotaUser": {"type": "string", "location": "query"},
        },
        "auth": {"oauth2": {"scopes": {scope: {"description": scope} for scope in _SCOPES}}},
        "resources": {
            "projects": {
                "resources": {
                    "locations": {
                        "resources": {
                            "collections": {"resources": {"dataConnector": {"methods": methods}}}
                        }
                    }
                }
            }
        },
        "schemas": {
            f"{_PREFIX}AcquireAccessTokenRequest": _schema(
                "AcquireAccessTokenRequest", {"action": _STRING, "scope": _STRING}
            ),
            f"{_PREFIX}AcquireAccessTokenResponse": _schema(
                "AcquireAccessTokenResponse",
                {"accessToken": _STRING, "refreshTokenInfo": _TOKEN_INFO},
            ),
            f"{_PREFIX}CheckRefreshTokenResponse": _schema(
                "CheckRefreshTokenResponse", {"refreshTokenInfo": _TOKEN_INFO}
            ),
            f"{_PREFIX}RefreshTokenInfo": _schema(
                "RefreshTokenInfo",
                {"name": _STRING, "scopes": {"type": "array", "items": _STRING}},
            ),
        },
    }
