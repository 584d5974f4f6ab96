"""The compiled descriptors carry the wire surface (annotations are code: both wires read them)."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2, client_pb2, field_behavior_pb2, resource_pb2

from agentspace_grpc import _proto as p

PATTERN = "projects/*/locations/*/collections/*/dataConnector"
WIRE_TABLE = {
    "AcquireAccessToken": ("post", f"/v1alpha/{{name={PATTERN}}}:acquireAccessToken", "*"),
    "AcquireAndStoreRefreshToken": (
        "post",
        f"/v1alpha/{{name={PATTERN}}}:acquireAndStoreRefreshToken",
        "*",
    ),
    "CheckRefreshToken": ("get", f"/v1alpha/{{name={PATTERN}}}:checkRefreshToken", ""),
}

FIELDS = {
    "AcquireAccessTokenRequest": {"name": 1, "scope": 2, "action": 3},
    "RefreshTokenInfo": {"name": 1, "scopes": 2},
    "AcquireAccessTokenResponse": {"refresh_token_info": 1, "access_token": 2},
    "AcquireAndStoreRefreshTokenRequest": {
        "name": 1,
        "scopes": 2,
        "full_redirect_uri": 3,
        "instance_uri": 4,
    },
    "AdditionalOAuthResponse": {"key": 1, "string_value": 2, "int_value": 3, "bool_value": 4},
    "AcquireAndStoreRefreshTokenResponse": {"additional_oauth_responses": 1},
    "CheckRefreshTokenRequest": {"name": 1},
    "CheckRefreshTokenResponse": {"refresh_token_info": 1},
}


@pytest.mark.parametrize("method", sorted(WIRE_TABLE))
def test_http_rule_matches_wire_table(method: str) -> None:
    options = p.SERVICE.methods_by_name[method].GetOptions()
    rule = options.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    assert (verb, getattr(rule, verb), rule.body) == WIRE_TABLE[method]
    assert not rule.additional_bindings


def test_check_refresh_token_is_deprecated() -> None:
    methods = p.SERVICE.methods_by_name
    assert methods["CheckRefreshToken"].GetOptions().deprecated
    assert not methods["AcquireAccessToken"].GetOptions().deprecated


@pytest.mark.parametrize("message", sorted(FIELDS))
def test_field_numbers(message: str) -> None:
    descriptor = p.FILE.message_types_by_name[message]
    assert {f.name: f.number for f in descriptor.fields} == FIELDS[message]


def test_json_names_are_camel_case() -> None:
    fields = p.AcquireAccessTokenResponse.DESCRIPTOR.fields_by_name
    assert fields["access_token"].json_name == "accessToken"
    assert fields["refresh_token_info"].json_name == "refreshTokenInfo"
    request = p.AcquireAndStoreRefreshTokenRequest.DESCRIPTOR.fields_by_name
    assert request["full_redirect_uri"].json_name == "fullRedirectUri"


def test_service_annotations() -> None:
    options = p.SERVICE.GetOptions()
    assert options.Extensions[client_pb2.default_host] == "discoveryengine.googleapis.com"
    assert options.Extensions[client_pb2.oauth_scopes] == (
        "https://www.googleapis.com/auth/cloud-platform"
    )
    signatures = {
        m.name: list(m.GetOptions().Extensions[client_pb2.method_signature])
        for m in p.SERVICE.methods
    }
    assert signatures["AcquireAccessToken"] == ["name"]


def test_field_behaviors_and_resources() -> None:
    name = p.AcquireAccessTokenRequest.DESCRIPTOR.fields_by_name["name"]
    behavior = list(name.GetOptions().Extensions[field_behavior_pb2.field_behavior])
    assert behavior == [field_behavior_pb2.REQUIRED]
    reference = name.GetOptions().Extensions[resource_pb2.resource_reference]
    assert reference.type == "discoveryengine.googleapis.com/DataConnector"
    definitions = p.FILE.GetOptions().Extensions[resource_pb2.resource_definition]
    assert [(d.type, list(d.pattern)) for d in definitions] == [
        (
            "discoveryengine.googleapis.com/DataConnector",
            ["projects/{project}/locations/{location}/collections/{collection}/dataConnector"],
        )
    ]
    uri = p.AcquireAndStoreRefreshTokenRequest.DESCRIPTOR.fields_by_name["full_redirect_uri"]
    assert list(uri.GetOptions().Extensions[field_behavior_pb2.field_behavior]) == [
        field_behavior_pb2.REQUIRED
    ]


# ---- AuthorizationService --------------------------------------------------------------

AUTHORIZATION = "projects/*/locations/*/authorizations/*"
AUTHORIZATION_RULES = {
    "AcquireUserAuthorization": (
        "post",
        f"/v1alpha/{{name={AUTHORIZATION}}}:acquireUserAuthorization",
        "*",
    ),
    "StoreUserAuthorization": (
        "post",
        f"/v1alpha/{{name={AUTHORIZATION}}}:storeUserAuthorization",
        "*",
    ),
}
AUTHORIZATION_FIELDS = {
    "AcquireUserAuthorizationRequest": {"name": 1},
    "AcquireUserAuthorizationResponse": {
        "refresh_token_info": 1,
        "access_token": 2,
        "authorization_uri": 3,
    },
    "AcquireUserAuthorizationResponse.RefreshTokenInfo": {"scopes": 1},
    "StoreUserAuthorizationRequest": {"name": 1, "full_redirect_uri": 2},
    "StoreUserAuthorizationResponse": {},
}


@pytest.mark.parametrize("method", sorted(AUTHORIZATION_RULES))
def test_authorization_http_rules(method: str) -> None:
    options = p.AUTHORIZATION_SERVICE.methods_by_name[method].GetOptions()
    rule = options.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    assert (verb, getattr(rule, verb), rule.body) == AUTHORIZATION_RULES[method]
    assert not rule.additional_bindings


@pytest.mark.parametrize("message", sorted(AUTHORIZATION_FIELDS))
def test_authorization_field_numbers(message: str) -> None:
    full_name = f"google.cloud.discoveryengine.v1alpha.{message}"
    descriptor = p.AUTHORIZATION_FILE.pool.FindMessageTypeByName(full_name)
    assert {f.name: f.number for f in descriptor.fields} == AUTHORIZATION_FIELDS[message]


def test_authorization_annotations() -> None:
    options = p.AUTHORIZATION_SERVICE.GetOptions()
    assert options.Extensions[client_pb2.default_host] == "discoveryengine.googleapis.com"
    assert options.Extensions[client_pb2.oauth_scopes].split(",") == [
        "https://www.googleapis.com/auth/cloud-platform",
        "https://www.googleapis.com/auth/discoveryengine.readwrite",
    ]
    definitions = p.AUTHORIZATION_FILE.GetOptions().Extensions[resource_pb2.resource_definition]
    assert [(d.type, list(d.pattern)) for d in definitions] == [
        (
            "discoveryengine.googleapis.com/Authorization",
            ["projects/{project}/locations/{location}/authorizations/{authorization}"],
        )
    ]
    for message, field in (
        ("AcquireUserAuthorizationRequest", "name"),
        ("StoreUserAuthorizationRequest", "name"),
        ("StoreUserAuthorizationRequest", "full_redirect_uri"),
    ):
        descriptor = p.AUTHORIZATION_FILE.message_types_by_name[message].fields_by_name[field]
        behavior = list(descriptor.GetOptions().Extensions[field_behavior_pb2.field_behavior])
        assert behavior == [field_behavior_pb2.REQUIRED]
    name = p.AUTHORIZATION_FILE.message_types_by_name["AcquireUserAuthorizationRequest"]
    reference = name.fields_by_name["name"].GetOptions().Extensions[resource_pb2.resource_reference]
    assert reference.type == "discoveryengine.googleapis.com/Authorization"
    signatures = {
        m.name: list(m.GetOptions().Extensions[client_pb2.method_signature])
        for m in p.AUTHORIZATION_SERVICE.methods
    }
    assert signatures == {
        "AcquireUserAuthorization": ["name"],
        "StoreUserAuthorization": ["name,full_redirect_uri"],
    }
