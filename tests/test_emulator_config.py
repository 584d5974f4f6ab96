"""The emulator's TOML configuration: the documented example parses, mistakes are named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentspace_grpc.emulator._config import DEFAULT_CONNECTOR, ConfigError, load_config

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
"""


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
        ({"store": {"lease_seconds": 5}}, "shorter than store.lease_seconds"),
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
