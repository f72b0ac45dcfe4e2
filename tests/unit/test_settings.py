"""prefect-pipedeploy's settings: defaults, every source Prefect reads, precedence, errors, names.

Each test runs in an empty temporary working directory (where `.env`, prefect.toml and
pyproject.toml are read), with no PREFECT_INTEGRATIONS_PIPEDEPLOY_* variable set and
PREFECT_PROFILES_PATH pointing at a temporary profiles.toml.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from prefect_pipedeploy.exceptions import InvalidSettings, PipeDeployError
from prefect_pipedeploy.settings import (
    WORKER_TYPE,
    PipeDeploySettings,
    env_name,
    get_settings,
    temporary_settings,
)

PREFIX = "PREFECT_INTEGRATIONS_PIPEDEPLOY_"

DEFAULTS: dict[str, Any] = {
    "default_pool": "pipedeploy",
    "home": Path(".pipedeploy"),
    "poll_seconds": 2.0,
    "pending_recovery_s": 60.0,
    "pod_start_timeout_s": 120.0,
    "ram_reserve": "1GiB",
    "ram_capacity": None,
    "data_store": None,
    "code_max_mib": 100.0,
    "code_cache_retention_s": 604800.0,
    "gateway_url": None,
    "gateway_wait_s": 25.0,
    "gateway_access_token_ttl_s": 900,
    "gateway_max_body_bytes": 10 * 1024 * 1024,
    "gateway_max_waiting": 100,
    "gateway_max_queued": 10,
    "gateway_max_creating": 1,
    "gateway_direct_dispatch": True,
    "gateway_upload_retention_s": 86400.0,
    "gateway_bad_token_limit": 20,
    "gateway_max_fields": 1000,
    "gateway_max_files": 100,
    "gateway_max_part_bytes": 1024 * 1024,
    "flush_logs_before_final": True,
    "retry_grace_s": 10.0,
    "drain_grace_s": 30.0,
    "pod_heartbeat_timeout_s": 10.0,
    "pod_write_gate": "auto",
}


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working directory, no pipedeploy variables, a profiles.toml of our own."""
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    # Prefect ignores profiles in its test mode; these tests read them as a user's process does.
    for name in (
        "PREFECT_TEST_MODE",
        "PREFECT_UNIT_TEST_MODE",
        "PREFECT_TESTING_TEST_MODE",
        "PREFECT_TESTING_UNIT_TEST_MODE",
        "PREFECT_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "profiles.toml"))
    workdir = tmp_path / "project"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


def write_profile(tmp_path: Path, **settings: str) -> None:
    lines = [f'{name} = "{value}"' for name, value in settings.items()]
    (tmp_path / "profiles.toml").write_text(
        'active = "test"\n\n[profiles.test]\n' + "\n".join(lines) + "\n"
    )


# -- defaults and fields -----------------------------------------------------------------------


def test_defaults() -> None:
    assert get_settings().model_dump() == DEFAULTS


def test_every_field_has_a_description() -> None:
    assert set(PipeDeploySettings.model_fields) == set(DEFAULTS)
    for name, field in PipeDeploySettings.model_fields.items():
        assert field.description, name


def test_the_worker_type_is_the_worker_class_type() -> None:
    from prefect_pipedeploy.worker.worker import PipeDeployWorker

    assert WORKER_TYPE == "pipedeploy"
    assert PipeDeployWorker.type == WORKER_TYPE


# -- env_name ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "variable"),
    [
        ("data_store", "PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE"),
        ("gateway_url", "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_URL"),
        ("ram_capacity", "PREFECT_INTEGRATIONS_PIPEDEPLOY_RAM_CAPACITY"),
        ("poll_seconds", "PREFECT_INTEGRATIONS_PIPEDEPLOY_POLL_SECONDS"),
    ],
)
def test_env_name(setting: str, variable: str) -> None:
    assert env_name(setting) == variable


def test_env_name_is_the_variable_prefect_documents_for_each_field() -> None:
    schema = PipeDeploySettings.model_json_schema()["properties"]
    for name in PipeDeploySettings.model_fields:
        assert schema[name]["supported_environment_variables"] == [env_name(name)]


def test_env_name_refuses_an_unknown_setting() -> None:
    with pytest.raises(ValueError, match="no prefect-pipedeploy setting 'data_stor'.*data_store"):
        env_name("data_stor")


# -- each source -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "raw", "expected"),
    [
        ("poll_seconds", "0.5", 0.5),
        ("gateway_max_body_bytes", "1024", 1024),
        ("home", "/srv/pipedeploy", Path("/srv/pipedeploy")),
        ("data_store", "pipedeploy-s3-data-store/prod", "pipedeploy-s3-data-store/prod"),
        ("ram_capacity", "8GiB", "8GiB"),
    ],
)
def test_environment_variables(
    monkeypatch: pytest.MonkeyPatch, setting: str, raw: str, expected: Any
) -> None:
    monkeypatch.setenv(env_name(setting), raw)
    assert getattr(get_settings(), setting) == expected


def test_settings_are_read_anew_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_settings().poll_seconds == 2.0
    monkeypatch.setenv(env_name("poll_seconds"), "7")
    assert get_settings().poll_seconds == 7.0
    monkeypatch.delenv(env_name("poll_seconds"))
    assert get_settings().poll_seconds == 2.0


SOURCE_FILES = {
    ".env": lambda pool: f"PREFECT_INTEGRATIONS_PIPEDEPLOY_DEFAULT_POOL={pool}\n",
    "prefect.toml": lambda pool: f'[integrations.pipedeploy]\ndefault_pool = "{pool}"\n',
    "pyproject.toml": lambda pool: (
        f'[tool.prefect.integrations.pipedeploy]\ndefault_pool = "{pool}"\n'
    ),
    "profiles.toml": lambda pool: (
        f'active = "test"\n\n[profiles.test]\nPREFECT_INTEGRATIONS_PIPEDEPLOY_DEFAULT_POOL = "{pool}"\n'
    ),
}


@pytest.mark.parametrize("source", sorted(SOURCE_FILES))
def test_a_settings_file_rewritten_is_read_again_and_nothing_else_is(
    isolated: Path, source: str
) -> None:
    """Settings are kept between calls (reading every source took ~1.5 ms, several times per
    gateway call) but never past a change of a source: each file, rewritten, is read again."""
    path = isolated.parent / source if source == "profiles.toml" else isolated / source
    path.write_text(SOURCE_FILES[source]("first"))
    assert get_settings().default_pool == "first"
    path.write_text(SOURCE_FILES[source]("again"))  # same size, same clock tick: seen
    assert get_settings().default_pool == "again"
    settled = time.time() - 60
    os.utime(path, (settled, settled))
    kept = get_settings()
    assert kept.default_pool == "again"
    assert get_settings() is kept  # nothing changed: nothing read again
    path.write_text(SOURCE_FILES[source]("the-second-one"))
    assert get_settings().default_pool == "the-second-one"
    path.unlink()
    assert get_settings().default_pool == "pipedeploy"  # the default


def test_a_change_of_working_directory_or_override_is_read_again(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated / "prefect.toml").write_text('[integrations.pipedeploy]\ndefault_pool = "here"\n')
    assert get_settings().default_pool == "here"
    with temporary_settings(default_pool="overridden"):
        assert get_settings().default_pool == "overridden"
    assert get_settings().default_pool == "here"
    monkeypatch.chdir(isolated.parent)
    assert get_settings().default_pool == "pipedeploy"  # the default


def test_dotenv_file(isolated: Path) -> None:
    (isolated / ".env").write_text(f"{env_name('default_pool')}=from-dotenv\n")
    assert get_settings().default_pool == "from-dotenv"


def test_prefect_toml(isolated: Path) -> None:
    (isolated / "prefect.toml").write_text(
        '[integrations.pipedeploy]\ngateway_wait_s = 4\ndata_store = "pipedeploy-local-data-store/x"\n'
    )
    settings = get_settings()
    assert (settings.gateway_wait_s, settings.data_store) == (4.0, "pipedeploy-local-data-store/x")


def test_pyproject_toml(isolated: Path) -> None:
    (isolated / "pyproject.toml").write_text(
        '[project]\nname = "mine"\n\n[tool.prefect.integrations.pipedeploy]\npoll_seconds = 3\n'
    )
    assert get_settings().poll_seconds == 3.0


def test_prefect_profile(tmp_path: Path) -> None:
    write_profile(tmp_path, PREFECT_INTEGRATIONS_PIPEDEPLOY_POLL_SECONDS="1")
    assert get_settings().poll_seconds == 1.0


def test_the_active_profile_is_the_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "profiles.toml").write_text(
        'active = "a"\n\n[profiles.a]\nPREFECT_INTEGRATIONS_PIPEDEPLOY_DEFAULT_POOL = "pool-a"\n\n'
        '[profiles.b]\nPREFECT_INTEGRATIONS_PIPEDEPLOY_DEFAULT_POOL = "pool-b"\n'
    )
    assert get_settings().default_pool == "pool-a"
    monkeypatch.setenv("PREFECT_PROFILE", "b")
    assert get_settings().default_pool == "pool-b"


# -- precedence: code > environment > .env > prefect.toml > pyproject.toml > profile > default --

SOURCES = ["init", "environment", "dotenv", "prefect.toml", "pyproject.toml", "profile"]


def put(source: str, value: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    variable = env_name("default_pool")
    if source == "environment":
        monkeypatch.setenv(variable, value)
    elif source == "dotenv":
        (workdir / ".env").write_text(f"{variable}={value}\n")
    elif source == "prefect.toml":
        (workdir / "prefect.toml").write_text(
            f'[integrations.pipedeploy]\ndefault_pool = "{value}"\n'
        )
    elif source == "pyproject.toml":
        (workdir / "pyproject.toml").write_text(
            f'[tool.prefect.integrations.pipedeploy]\ndefault_pool = "{value}"\n'
        )
    elif source == "profile":
        write_profile(workdir.parent, **{variable: value})


@pytest.mark.parametrize("highest", range(len(SOURCES) + 1))
def test_precedence(isolated: Path, monkeypatch: pytest.MonkeyPatch, highest: int) -> None:
    """Every source from `highest` down holds a value named after it; the highest one wins."""
    present = SOURCES[highest:]
    for source in present:
        put(source, f"from-{source}", isolated, monkeypatch)
    init = {"default_pool": "from-init"} if "init" in present else {}
    expected = f"from-{present[0]}" if present else "pipedeploy"
    assert PipeDeploySettings(**init).default_pool == expected


def test_environment_wins_over_toml_per_setting(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated / "prefect.toml").write_text(
        "[integrations.pipedeploy]\npoll_seconds = 3\ngateway_wait_s = 4\n"
    )
    monkeypatch.setenv(env_name("poll_seconds"), "5")
    settings = get_settings()
    assert (settings.poll_seconds, settings.gateway_wait_s) == (5.0, 4.0)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "raw", "rule"),
    [
        ("poll_seconds", "0", "greater than 0"),
        ("poll_seconds", "soon", "valid number"),
        ("pending_recovery_s", "-1", "greater than 0"),
        ("gateway_wait_s", "-0.5", "greater than or equal to 0"),
        ("gateway_max_body_bytes", "10MiB", "valid integer"),
        ("gateway_max_waiting", "0", "greater than 0"),
    ],
)
def test_validation_errors_name_the_setting_and_its_variable(
    monkeypatch: pytest.MonkeyPatch, setting: str, raw: str, rule: str
) -> None:
    monkeypatch.setenv(env_name(setting), raw)
    with pytest.raises(InvalidSettings) as caught:
        get_settings()
    message = str(caught.value)
    assert f"{setting} ({env_name(setting)}) is {raw!r}" in message
    assert rule in message
    assert "prefect.toml [integrations.pipedeploy]" in message
    assert isinstance(caught.value, PipeDeployError) and isinstance(caught.value, ValueError)


def test_a_bad_value_in_prefect_toml_is_named(isolated: Path) -> None:
    (isolated / "prefect.toml").write_text("[integrations.pipedeploy]\npoll_seconds = 0\n")
    with pytest.raises(InvalidSettings, match="poll_seconds"):
        get_settings()


def test_every_bad_setting_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name("poll_seconds"), "0")
    monkeypatch.setenv(env_name("gateway_max_waiting"), "none")
    with pytest.raises(InvalidSettings) as caught:
        get_settings()
    assert "poll_seconds" in str(caught.value) and "gateway_max_waiting" in str(caught.value)


# -- handing settings to a child process -------------------------------------------------------


def test_environment_variables_carry_the_settings_to_a_child(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What `pipedeploy up` gives its children: the settings it has, as variables."""
    (isolated / "prefect.toml").write_text(
        '[integrations.pipedeploy]\npoll_seconds = 3\nhome = "/srv/stack"\n'
    )
    parent = get_settings().model_copy(update={"data_store": "pipedeploy-local-data-store/x"})
    variables = parent.to_environment_variables(exclude_unset=True)
    assert variables == {
        env_name("poll_seconds"): "3.0",
        env_name("home"): "/srv/stack",
        env_name("data_store"): "pipedeploy-local-data-store/x",
    }

    elsewhere = tmp_path / "child-cwd"  # the child reads them without the parent's files
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert get_settings() == parent


# -- the worker's RAM capacity: argument, then setting -----------------------------------------


@pytest.mark.parametrize(
    ("argument", "variable", "expected_mib"),
    [("1GiB", "2GiB", 1024), (None, "2GiB", 2048), ("512MiB", None, 512)],
)
def test_ram_capacity_argument_wins_over_the_setting(
    monkeypatch: pytest.MonkeyPatch, argument: str | None, variable: str | None, expected_mib: int
) -> None:
    """`pipedeploy worker --ram-capacity` hands its value over without touching os.environ."""
    from prefect_pipedeploy.worker.ram import worker_ram_capacity_mib

    if variable:
        monkeypatch.setenv(env_name("ram_capacity"), variable)
    environ = dict(os.environ)
    assert worker_ram_capacity_mib(argument) == expected_mib
    assert dict(os.environ) == environ
