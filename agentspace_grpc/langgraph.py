"""LangChain tools for LangGraph that run with the end user's third-party token (extra
``langgraph``).

``connector_tool(func, ...)`` wraps an async function into a LangChain tool. The model sees the
function's own parameters and docstring; ``token`` is filled in per call from the end user's
credentials. When the user must (re)authorize, the tool interrupts the graph with
``{"type": "authorization_required", "resource": ..., "authorization_uri": ...}``; the
application sends the user to the URI and resumes with ``Command(resume=<full redirect URI>)``.
The tool then stores the redirect URI with the user's credentials and calls the function.
One resume serves every call of the step that waits for the same resource.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from langchain_core.runnables import RunnableConfig
    from langchain_core.tools import BaseTool, StructuredTool
    from langchain_core.tools.base import FILTERED_ARGS, create_schema_from_function
    from langgraph.config import get_config
    from langgraph.errors import GraphInterrupt
    from langgraph.types import interrupt
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "agentspace_grpc.langgraph needs langgraph and langchain-core: pip install "
        f"'agentspace-grpc[langgraph]' ({exc})"
    ) from exc
try:  # private to LangGraph: where a step keeps the resume value no interrupt took
    from langgraph._internal._constants import CONFIG_KEY_SCRATCHPAD
except ImportError:  # pragma: no cover - a LangGraph release that moved it
    CONFIG_KEY_SCRATCHPAD = "__pregel_scratchpad"

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

CredentialsFor = Callable[[RunnableConfig], CredentialsLike | Awaitable[CredentialsLike]]


def connector_tool(
    func: Callable[..., Awaitable[Any]],
    *,
    client: DataConnectorClient,
    resource: str,
    scope: str | None = None,
    action: str | None = None,
    credentials: CredentialsFor,
    consent_uri: ConsentUri | None = None,
) -> BaseTool:
    """A LangChain tool that calls ``func`` with the end user's token for ``resource``.

    Args:
        func: ``async def f(..., token: AccessToken)`` with a docstring; the model sees every
            other parameter and the docstring, never ``token``.
        client: The client that acquires and stores (one for all users).
        resource: A data connector or an authorization name.
        scope, action: Passed to ``acquire_access_token`` (data connectors only).
        credentials: Given the ``RunnableConfig``, the end user's credentials (or an
            awaitable).
        consent_uri: ``async (resource, credentials) -> str``, the consent URL for a data
            connector (the service gives none); authorizations carry their own.

    Raises:
        UsageError: A bad argument (a sync function, no ``token`` parameter, ...).
    """
    check_tool_function(func)
    if not callable(credentials):
        raise UsageError("credentials must be a callable that takes the RunnableConfig")
    if not (func.__doc__ or "").strip():
        raise UsageError(f"{func!r} needs a docstring: it is the tool's description")
    connection = Connection(client, resource, scope=scope, action=action, consent_uri=consent_uri)
    schema = create_schema_from_function(
        func.__name__, _model_view(func), filter_args=FILTERED_ARGS
    )

    async def run(config: RunnableConfig, **kwargs: Any) -> Any:
        user = await user_credentials(credentials, config)

        async def call(token: AccessToken) -> Any:
            return await func(**kwargs, token=token)

        redirect: str | None = None
        while True:  # each turn either returns, raises, or carries a new answer of the user
            try:
                return await connection.run(call, user, redirect)
            except ConsentNeeded as need:
                redirect = _ask(connection, need, redirect)

    return StructuredTool.from_function(
        coroutine=run,
        name=func.__name__,
        description=func.__doc__,
        args_schema=schema,
    )


def _model_view(func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``func`` as the model sees it: its parameters without ``token``.

    The schema is read from this view, so the annotation of ``token`` is never evaluated (it
    may name ``AccessToken`` imported for type checking only).
    """

    @functools.wraps(func)
    async def view(**kwargs: Any) -> Any:  # described, never called
        raise NotImplementedError

    signature = inspect.signature(func)
    kept = [p for p in signature.parameters.values() if p.name != "token"]
    view.__signature__ = signature.replace(parameters=kept)  # type: ignore[attr-defined]
    view.__annotations__ = {k: v for k, v in func.__annotations__.items() if k != "token"}
    return view


def _ask(connection: Connection, need: ConsentNeeded, previous: str | None) -> str:
    """The user's redirect URI: this call's resume value, or the step's if a sibling stores it.

    LangGraph gives a plain ``Command(resume=...)`` to the first interrupt that asks; other
    calls of the step that wait for the same resource take that value instead of
    interrupting again, once the call that received it has started storing it.
    """
    try:
        answer = interrupt(
            {
                "type": "authorization_required",
                "resource": need.resource,
                "authorization_uri": need.authorization_uri,
            }
        )
    except GraphInterrupt:
        shared = get_config()["configurable"][CONFIG_KEY_SCRATCHPAD].get_null_resume()
        if shared == previous or not connection.storing(shared):
            raise
        answer = shared
    if not isinstance(answer, str) or not answer:
        raise UsageError(
            "resume the authorization interrupt with Command(resume=<the full redirect URI>)"
        )
    return answer
