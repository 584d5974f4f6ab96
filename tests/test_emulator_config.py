"""The emulator's TOML configuration: the documented example parses, mistakes are named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentspace_grpc.emulator._config import (
    DEFAULT_AUTHORIZATION,
    DEFAULT_CONNECTOR,
    ConfigError,
    load_config,
)

EXAMPLE = """
[identity]
token_lifetime = 600

[store]
lease_seconds = 20
memory_cache_seconds = 0.5

[provider]
access_token_lifetime = 5
send_expires_in = true
grace_seconds = 30

[provider.faults]
latency_ms = 50
rate_429 = 0.1
rate_5xx = 0.05
retry_after = 2
invalid_grant_rate = 0.0
grants = ["refresh_token"]

[[connectors]]
name = "projects/acme/locations/global/collections/jira/dataConnector"
authorize_url = "https://auth.example.com/authorize"
token_url = "https://auth.example.com/oauth/token"
client_id = "acme-jira"
client_secret_env = "ACME_JIRA_SECRET"
auth_method = "client_secret_post"
default_scopes = ["read:jira-work", "offline_access"]
timeout_seconds = 5
[connectors.actions]
create_issue = ["write:jira-work"]

[[connectors]]
name = "projects/acme/locations/global/collections/builtin/dataConnector"
default_scopes = ["read"]

[[authorizations]]
name = "projects/acme/locations/global/authorizations/jira"
display_name = "Jira for agents"
authorize_url = "https://auth.example.com/authorize"
token_url = "https://auth.example.com/oauth/token"
client_id = "acme-jira-agents"
client_secret_env = "ACME_JIRA_SECRET"
default_scopes = ["read:jira-work", "offline_access"]
"""

JIRA_AGENTS = "projects/acme/locations/global/authorizations/jira"


def test_the_documented_example_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_JIRA_SECRET", "from-the-environment")
    path = tmp_path / "emulator.toml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert set(config.connectors) == {
        DEFAULT_CONNECTOR,
        "projects/acme/locations/global/collections/jira/dataConnector",
        "projects/acme/locations/global/collections/builtin/dataConnector",
    }
    jira = config.connectors["projects/acme/locations/global/collections/jira/dataConnector"]
    assert jira.client_secret == "from-the-environment"
    assert "from-the-environment" not in repr(jira)
    assert jira.actions == {"create_issue": ("write:jira-work",)}
    assert not jira.builtin
    assert config.connectors[
        "projects/acme/locations/global/collections/builtin/dataConnector"
    ].builtin
    assert config.provider.faults.rate_429 == 0.1
    assert config.lease_seconds == 20
    assert set(config.authorizations) == {DEFAULT_AUTHORIZATION, JIRA_AGENTS}
    agents = config.authorizations[JIRA_AGENTS]
    assert (agents.kind, agents.display_name) == ("authorization", "Jira for agents")
    assert agents.client_secret == "from-the-environment"
    assert "from-the-environment" not in repr(agents)
    assert not agents.builtin
    assert config.authorizations[DEFAULT_AUTHORIZATION].builtin


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"provider": {"lifetime": 1}}, "provider.lifetime"),
        ({"provider": {"access_token_lifetime": 0.5}}, "at least 1"),
        ({"provider": {"faults": {"rate_429": 2}}}, "probability"),
        ({"provider": {"faults": {"grants": ["password"]}}}, "grants"),
        ({"connectors": [{"name": "projects/x"}]}, "does not match"),
        ({"connectors": {"name": "x"}}, "array of tables"),
        (
            {"connectors": [{"name": DEFAULT_CONNECTOR, "token_url": "https://t"}]},
            "authorize_url and token_url",
        ),
        (
            {
                "connectors": [
                    {
                        "name": DEFAULT_CONNECTOR,
                        "authorize_url": "https://a",
                        "token_url": "https://t",
                        "client_id": "c",
                    }
                ]
            },
            "client secret",
        ),
        (
            {
                "connectors": [
                    {
                        "name": DEFAULT_CONNECTOR,
                        "authorize_url": "https://a",
                        "token_url": "https://svc:S3CRET@t/token",
                        "client_id": "c",
                        "client_secret": "s",
                    }
                ]
            },
            r"token_url must not carry credentials",
        ),
        ({"store": {"lease_seconds": 5}}, "shorter than store.lease_seconds"),
        ({"authorizations": [{"name": DEFAULT_CONNECTOR, "display_name": "x"}]}, "authorizations/"),
        (
            {"authorizations": [{"name": JIRA_AGENTS}]},
            r"authorizations\[0\].display_name is required",
        ),
        (
            {"authorizations": [{"name": JIRA_AGENTS, "display_name": "J", "actions": {}}]},
            "unknown config key authorizations\\[0\\].actions",
        ),
        (
            {
                "authorizations": [
                    {
                        "name": JIRA_AGENTS,
                        "display_name": "J",
                        "authorize_url": "{instance_uri}/authorize",
                        "token_url": "{instance_uri}/token",
                        "client_id": "c",
                        "client_secret": "s",
                    }
                ]
            },
            "an authorization's URLs are fixed",
        ),
        (
            {
                "store": {"lease_seconds": 5},
                "connectors": [{"name": DEFAULT_CONNECTOR, "timeout_seconds": 1}],
            },
            "authorization projects/demo/.* must be shorter",
        ),
        ({"authorizations": {"name": JIRA_AGENTS}}, r"array of tables \(\[\[authorizations"),
    ],
)
def test_mistakes_are_named(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(data)


def test_a_missing_or_malformed_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[provider\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
