"""Google ADK tools that run with the end user's third-party token (extra ``adk``).

``connector_tool(func, ...)`` wraps an async function into an ADK tool. The model sees the
function's own parameters and docstring; ``token`` is filled in per call from the end user's
credentials. When the user must (re)authorize, the tool asks through ADK's credential request
(an ``adk_request_credential`` function call whose auth config carries the consent URL as
``exchanged_auth_credential.oauth2.auth_uri``); the application sends the user there and
answers with that auth config, ``exchanged_auth_credential.oauth2.auth_response_uri`` set to
the full redirect URI. ADK then runs the tool again, which stores the redirect URI with the
user's credentials and calls the function.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

try:
    from fastapi.openapi.models import OAuth2, OAuthFlowAuthorizationCode, OAuthFlows
    from google.adk.auth.auth_credential import AuthCredential, AuthCredentialTypes, OAuth2Auth
    from google.adk.auth.auth_tool import AuthConfig
    from google.adk.tools.function_tool import FunctionTool
    from google.adk.tools.tool_context import ToolContext
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"agentspace_grpc.adk needs google-adk: pip install 'agentspace-grpc[adk]' ({exc})"
    ) from exc

from agentspace_grpc._agents import (
    Connection,
    ConsentNeeded,
    ConsentUri,
    check_tool_function,
    user_credentials,
)
from agentspace_grpc._client import DataConnectorClient
from agentspace_grpc._credentials import CredentialsLike
from agentspace_grpc._errors import UsageError
from agentspace_grpc._token import AccessToken

__all__ = ["connector_tool"]

#: The tool's answer to the model while the user is asked to authorize.
PENDING: Final = "authorization_pending"

CredentialsFor = Callable[[ToolContext], CredentialsLike | Awaitable[CredentialsLike]]


def connector_tool(
    func: Callable[..., Awaitable[Any]],
    *,
    client: DataConnectorClient,
    resource: str,
    scope: str | None = None,
    action: str | None = None,
    credentials: CredentialsFor,
    consent_uri: ConsentUri | None = None,
) -> FunctionTool:
    """An ADK tool that calls ``func`` with the end user's token for ``resource``.

    Args:
        func: ``async def f(..., token: AccessToken)``; the model sees every other parameter
            and the docstring, never ``token``.
        client: The client that acquires and stores (one for all users).
        resource: A data connector or an authorization name.
        scope, action: Passed to ``acquire_access_token`` (data connectors only).
        credentials: Given the ``ToolContext``, the end user's credentials (or an awaitable).
        consent_uri: ``async (resource, credentials) -> str``, the consent URL for a data
            connector (the service gives none); authorizations carry their own.

    Raises:
        UsageError: A bad argument (a sync function, no ``token`` parameter, ...).
    """
    check_tool_function(func)
    if not callable(credentials):
        raise UsageError("credentials must be a callable that takes the ToolContext")
    connection = Connection(client, resource, scope=scope, action=action, consent_uri=consent_uri)
    return _ConnectorTool(func, connection, credentials)


class _ConnectorTool(FunctionTool):
    """A FunctionTool whose ``token`` argument comes from the client, not the model."""

    def __init__(
        self,
        func: Callable[..., Awaitable[Any]],
        connection: Connection,
        credentials: CredentialsFor,
    ) -> None:
        super().__init__(func)
        self._ignore_params.append("token")
        self._connection = connection
        self._credentials = credentials

    async def run_async(self, *, args: dict[str, Any], tool_context: ToolContext) -> Any:
        """Runs ``func`` with the user's token, or asks the user to authorize."""
        connection = self._connection
        user = await user_credentials(self._credentials, tool_context)
        answer = tool_context.get_auth_response(_auth_config(connection.key, None))
        redirect = answer.oauth2.auth_response_uri if answer and answer.oauth2 else None

        async def call(token: AccessToken) -> Any:
            # A copy: ADK traces the model's arguments, which must not gain the token.
            return await FunctionTool.run_async(
                self, args={**args, "token": token}, tool_context=tool_context
            )

        try:
            return await connection.run(call, user, redirect)
        except ConsentNeeded as need:
            tool_context.request_credential(_auth_config(connection.key, need.authorization_uri))
            return {"status": PENDING, "resource": connection.resource}


def _auth_config(key: str, authorization_uri: str | None) -> AuthConfig:
    """The credential request for consent at ``authorization_uri``, filed under ``key``.

    No client id or secret: ADK would try to redeem the code itself, while the service holds
    the secret and redeems it when the redirect URI is stored. The key is explicit because
    ADK's default one hashes the scheme, which carries this request's own URL.
    """
    uri = authorization_uri or ""
    return AuthConfig(
        auth_scheme=OAuth2(
            flows=OAuthFlows(
                authorizationCode=OAuthFlowAuthorizationCode(authorizationUrl=uri, tokenUrl="")
            )
        ),
        raw_auth_credential=AuthCredential(
            auth_type=AuthCredentialTypes.OAUTH2, oauth2=OAuth2Auth(auth_uri=uri or None)
        ),
        credential_key=key,
    )
