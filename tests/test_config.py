"""PHAROX_* settings: defaults, parsing, and errors that name the setting."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from scrapy.settings import BaseSettings, Settings

from crawl_support import LinkSpider, crawl
from scrapy_pharox import (
    PharoxConfig,
    PharoxSettingError,
    ProxyFilters,
    ProxyProtocol,
    SelectorStrategy,
)
from scrapy_pharox.config import CommandConfig, HealthCheckConfig


def config(**settings: Any) -> PharoxConfig:
    return PharoxConfig.from_settings(Settings(settings))


def test_defaults_match_the_documented_ones() -> None:
    defaults = config()
    assert defaults.enabled and defaults.storage_url == "memory://"
    assert defaults.pool == "default" and defaults.proxies == ()
    assert defaults.proxy_max_concurrency == 1 and defaults.consumer is None
    assert defaults.lease_seconds == 300 and defaults.acquire_timeout == 60
    assert defaults.selector is SelectorStrategy.ROUND_ROBIN
    assert defaults.filters is None and defaults.stats_interval == 60
    assert defaults.protocols == {ProxyProtocol.HTTP, ProxyProtocol.HTTPS}
    assert (defaults.session_idle_seconds, defaults.session_concurrency) == (300, 1)
    assert (defaults.session_max_uses, defaults.session_max_age) == (50, 3000)


def test_proxies_come_from_a_comma_separated_command_line_value() -> None:
    parsed = config(PHAROX_PROXIES="http://127.0.0.1:1,http://u:p@127.0.0.1:2")
    assert [proxy.port for proxy in parsed.proxies] == [1, 2]
    assert all(proxy.max_concurrency == 1 for proxy in parsed.proxies)


def test_the_proxies_file_takes_comments_blank_lines_and_fields(
    tmp_path: Path,
) -> None:
    listing = tmp_path / "proxies.txt"
    listing.write_text(
        "# our pool\n\nhttp://127.0.0.1:1 country=de city=Kiel  # north\n"
        "socks5://127.0.0.1:2 max_concurrency=3\n"
    )
    parsed = config(PHAROX_PROXIES_FILE=str(listing), PHAROX_PROXIES=["http://h:3"])
    assert [(p.host, p.port) for p in parsed.proxies] == [
        ("h", 3),
        ("127.0.0.1", 1),
        ("127.0.0.1", 2),
    ]
    assert (parsed.proxies[1].country, parsed.proxies[1].city) == ("DE", "Kiel")
    assert parsed.proxies[2].max_concurrency == 3


def test_max_concurrency_zero_means_no_limit() -> None:
    parsed = config(PHAROX_PROXY_MAX_CONCURRENCY=0, PHAROX_PROXIES=["http://h:1"])
    assert parsed.proxies[0].max_concurrency is None


def test_filters_may_be_a_dict_or_json_text() -> None:
    assert config(PHAROX_FILTERS={"country": "de"}).filters == ProxyFilters(
        country="DE"
    )
    assert config(PHAROX_FILTERS='{"asn": 3320}').filters == ProxyFilters(asn=3320)


def test_selector_is_read_case_insensitively() -> None:
    assert config(PHAROX_SELECTOR="LEAST_USED").selector is SelectorStrategy.LEAST_USED


def test_unknown_pharox_settings_are_reported() -> None:
    assert config(PHAROX_POOLS="x").unknown_settings == ("PHAROX_POOLS",)


def test_a_disabled_config_reads_nothing_else() -> None:
    assert config(PHAROX_ENABLED=False, PHAROX_SELECTOR="nonsense").enabled is False


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"PHAROX_SELECTOR": "fastest"}, "PHAROX_SELECTOR: unknown selector 'fastest'"),
        ({"PHAROX_LEASE_SECONDS": -5}, "PHAROX_LEASE_SECONDS must be a number > 0"),
        ({"PHAROX_LEASE_SECONDS": 0}, "PHAROX_LEASE_SECONDS must be a number > 0"),
        ({"PHAROX_LEASE_SECONDS": "soon"}, "PHAROX_LEASE_SECONDS: invalid value"),
        (
            {"PHAROX_ACQUIRE_TIMEOUT": -1},
            "PHAROX_ACQUIRE_TIMEOUT must be a number >= 0",
        ),
        ({"PHAROX_STATS_INTERVAL": "nan"}, "PHAROX_STATS_INTERVAL must be a number"),
        # Every span of time is at most seven days (durations.MAX_SECONDS).
        (
            {"PHAROX_LEASE_SECONDS": 1e12},
            "PHAROX_LEASE_SECONDS .* 7 days.*got 1000000000000.0",
        ),
        ({"PHAROX_LEASE_SECONDS": "inf"}, "PHAROX_LEASE_SECONDS .* 7 days.*inf"),
        ({"PHAROX_ACQUIRE_TIMEOUT": 1e9}, "PHAROX_ACQUIRE_TIMEOUT .* 7 days"),
        ({"PHAROX_STATS_INTERVAL": 1e9}, "PHAROX_STATS_INTERVAL .* 7 days"),
        ({"PHAROX_COOLDOWN_BASE": 1e9}, "PHAROX_COOLDOWN_BASE .* 7 days"),
        ({"PHAROX_COOLDOWN_MAX": 1e9}, "PHAROX_COOLDOWN_MAX .* 7 days"),
        ({"PHAROX_PROXY_MAX_CONCURRENCY": -2}, "PHAROX_PROXY_MAX_CONCURRENCY must"),
        ({"PHAROX_PROXY_MAX_CONCURRENCY": 1.5}, "PHAROX_PROXY_MAX_CONCURRENCY must"),
        ({"PHAROX_FILTERS": {"colour": "red"}}, "PHAROX_FILTERS: invalid filters"),
        ({"PHAROX_FILTERS": {"radius_km": 5}}, "PHAROX_FILTERS: invalid filters"),
        ({"PHAROX_FILTERS": "{not json"}, "PHAROX_FILTERS: filters must be a dict"),
        ({"PHAROX_FILTERS": 7}, "PHAROX_FILTERS: filters must be a dict"),
        ({"PHAROX_POOL": ""}, "PHAROX_POOL must be a non-empty string"),
        ({"PHAROX_PROTOCOLS": ["http", "gopher"]}, "PHAROX_PROTOCOLS: unknown"),
        ({"PHAROX_CONSUMER": 5}, "PHAROX_CONSUMER must be a non-empty string"),
        ({"PHAROX_PROXIES_FILE": "/nonexistent/list"}, "cannot read '/nonexistent"),
        (
            {"PHAROX_SESSION_IDLE_SECONDS": 0},
            "PHAROX_SESSION_IDLE_SECONDS must be a number > 0",
        ),
        (
            {"PHAROX_SESSION_CONCURRENCY": 0},
            "PHAROX_SESSION_CONCURRENCY must be a whole number >= 1, got 0",
        ),
        ({"PHAROX_SESSION_MAX_USES": "many"}, "PHAROX_SESSION_MAX_USES must"),
        ({"PHAROX_SESSION_MAX_AGE": 1e9}, "PHAROX_SESSION_MAX_AGE .* 7 days"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(PharoxSettingError, match=message.replace("(", r"\(")) as bad:
        config(**settings)
    assert isinstance(bad.value, ValueError)


def test_a_malformed_proxy_is_named_with_its_password_masked() -> None:
    with pytest.raises(PharoxSettingError) as bad:
        config(PHAROX_PROXIES=["http://127.0.0.1:1", "http://bob:hunter2@host:99999"])
    assert "PHAROX_PROXIES" in str(bad.value)
    assert "http://bob:***@host:99999" in str(bad.value)
    assert "hunter2" not in str(bad.value)


def test_a_malformed_line_of_the_proxies_file_is_named_by_its_number(
    tmp_path: Path,
) -> None:
    listing = tmp_path / "proxies.txt"
    listing.write_text("http://127.0.0.1:1\nftp://eve:pw@127.0.0.1:2\n")
    with pytest.raises(PharoxSettingError, match=r"proxies.txt:2: .*ftp://eve:\*\*\*@"):
        config(PHAROX_PROXIES_FILE=str(listing))


def test_an_unknown_field_in_the_proxies_file_is_refused(tmp_path: Path) -> None:
    listing = tmp_path / "proxies.txt"
    listing.write_text("http://127.0.0.1:1 colour=red\n")
    with pytest.raises(PharoxSettingError, match=r"proxies.txt:1: 'colour=red'"):
        config(PHAROX_PROXIES_FILE=str(listing))


def message_of(**settings: Any) -> str:
    """What the settings are refused with."""
    with pytest.raises(PharoxSettingError) as bad:
        config(**settings)
    return str(bad.value)


@pytest.mark.parametrize(
    "password", ["Secr/etSlash9", "Secr#etHash9", "Secr?etQuery9", "Secr@etAt9"]
)
def test_a_proxy_password_with_a_special_character_is_masked_whole_as_malformed(
    password: str,
) -> None:
    message = message_of(PHAROX_PROXIES=[f"http://alice:{password}@127.0.0.1:3128"])
    assert "malformed proxy URL 'http://alice:***@127.0.0.1:3128'" in message
    assert "must be percent-encoded" in message
    assert "Secr" not in message and "9" not in message


def test_a_proxy_url_without_a_scheme_is_shown_with_its_password_masked() -> None:
    message = message_of(PHAROX_PROXIES=["alice:s3cret-pw@127.0.0.1:3128"])
    assert "'alice:***@127.0.0.1:3128'" in message
    assert "s3cret-pw" not in message


def test_a_comma_in_a_proxy_password_does_not_split_the_command_line_value() -> None:
    parsed = config(PHAROX_PROXIES="http://127.0.0.1:1,http://alice:pa,ss@127.0.0.1:2")
    assert [proxy.port for proxy in parsed.proxies] == [1, 2]
    credentials = parsed.proxies[1].credentials
    assert credentials is not None and credentials.password == "pa,ss"


def refusal_of_file(tmp_path: Path, line: str) -> str:
    """What a proxies file of that one line is refused with."""
    listing = tmp_path / "proxies.txt"
    listing.write_text(line + "\n")
    return message_of(PHAROX_PROXIES_FILE=str(listing))


def test_a_hash_inside_a_url_of_the_proxies_file_is_not_taken_for_a_comment(
    tmp_path: Path,
) -> None:
    message = refusal_of_file(tmp_path, "http://alice:Secr#et9@127.0.0.1:3128  # ours")
    assert "txt:1: malformed proxy URL 'http://alice:***@127.0.0.1:3128'" in message
    assert "Secr" not in message


def test_a_space_in_a_password_of_the_proxies_file_shows_no_piece_of_it(
    tmp_path: Path,
) -> None:
    message = refusal_of_file(tmp_path, "http://alice:Secr et9@127.0.0.1:3128")
    assert "txt:1: malformed proxy line 'http://alice:***@127.0.0.1:3128'" in message
    assert "Secr" not in message and "et9" not in message


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1 :3128", "http://127.0.0.1:31\t28", "http://127.0.0.1<:3128"],
)
def test_a_proxy_url_holding_white_space_or_junk_is_refused_naming_its_entry(
    url: str,
) -> None:
    message = message_of(PHAROX_PROXIES=["http://127.0.0.1:1", url])
    assert f"PHAROX_PROXIES entry 2: malformed proxy URL {url!r}: it holds" in message


@pytest.mark.crawl
@pytest_twisted.inlineCallbacks
def test_a_bad_setting_stops_the_crawl_at_start() -> Any:
    with pytest.raises(PharoxSettingError, match="PHAROX_SELECTOR"):
        yield crawl(LinkSpider, {"PHAROX_SELECTOR": "fastest"}, start_url="http://x/")


@pytest.mark.crawl
@pytest_twisted.inlineCallbacks
def test_an_unknown_storage_url_stops_the_crawl_at_start() -> Any:
    with pytest.raises(PharoxSettingError, match=r"PHAROX_STORAGE_URL: .*'redis://"):
        yield crawl(
            LinkSpider,
            {"PHAROX_STORAGE_URL": "redis://127.0.0.1:6379"},
            start_url="http://x/",
        )


@pytest.mark.crawl
@pytest_twisted.inlineCallbacks
def test_a_disabled_plugin_leaves_requests_alone(
    caplog: pytest.LogCaptureFixture,
) -> Any:
    from scrapy_pharox.playground import TargetSite

    with TargetSite(pages=2) as target:
        crawler = yield crawl(
            LinkSpider, {"PHAROX_ENABLED": False}, start_url=target.url + "/"
        )
        assert len(target.requests) == 3
    assert crawler.stats.get_value("pharox/acquire/leased") is None


def test_scrapy_settings_the_keeper_needs_are_read_into_the_config() -> None:
    read = config(DOWNLOAD_TIMEOUT="30", BOT_NAME="harvester")
    assert read.download_timeout == 30.0
    assert read.bot_name == "harvester"


def test_the_config_classes_default_to_what_empty_settings_give() -> None:
    empty = BaseSettings()
    read = PharoxConfig.from_settings(empty)
    assert read == PharoxConfig(download_timeout=0.0, bot_name="None")
    assert HealthCheckConfig.from_settings(empty) == HealthCheckConfig()
    assert CommandConfig.from_settings(empty) == CommandConfig()


def test_the_readme_documents_every_setting() -> None:
    from pathlib import Path

    from scrapy_pharox.config import DEFAULTS

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    missing = [name for name in DEFAULTS if f"| `{name}` |" not in readme]
    assert missing == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "PHAROX_PROXIES_URL",
            "ftp://lister:list-pw@127.0.0.1/proxies.txt",
            "PHAROX_PROXIES_URL must be an http:// or https:// URL, got "
            "'ftp://lister:***@127.0.0.1/proxies.txt'",
        ),
        ("PHAROX_PROXIES_URL", 42, "PHAROX_PROXIES_URL must be a URL, got int"),
        ("PHAROX_PROXIES_REFRESH", -1, "PHAROX_PROXIES_REFRESH"),
        ("PHAROX_PROXIES_REFRESH", "soon", "PHAROX_PROXIES_REFRESH"),
    ],
)
def test_a_bad_live_list_setting_fails_at_start_naming_it(
    name: str, value: Any, message: str
) -> None:
    with pytest.raises(PharoxSettingError, match=re.escape(message)) as bad:
        PharoxConfig.from_settings(Settings({name: value}))
    assert "list-pw" not in str(bad.value)


def test_live_list_settings_are_read() -> None:
    config = PharoxConfig.from_settings(
        Settings(
            {
                "PHAROX_PROXIES_URL": " https://provider.example/list.txt ",
                "PHAROX_PROXIES_REFRESH": "0",
            }
        )
    )
    assert config.proxies_url == "https://provider.example/list.txt"
    assert config.proxies_refresh == 0.0
    assert PharoxConfig().proxies_refresh == 300.0
