"""The data store's rules without a store: key validation, the block types and their fields,
object info in UTC. Pure, tested with tables.

The backends themselves (a directory, moto's S3 server) are tests/integration/test_datastore.py.
"""

from __future__ import annotations

import inspect
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from prefect_pipedeploy.datastore import (
    DataStore,
    LocalDataStore,
    ObjectInfo,
    S3DataStore,
    aregister_datastore_blocks,
    register_datastore_blocks,
    validate_key,
)
from prefect_pipedeploy.exceptions import InvalidDataStoreKey, PipeDeployError

# -- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "normalized"),
    [
        ("data.csv", "data.csv"),
        ("inputs/2024/data.csv", "inputs/2024/data.csv"),
        ("./inputs/data.csv", "inputs/data.csv"),
        ("a/./b", "a/b"),
        ("runs/2024-05-01T12:30:00/out.json", "runs/2024-05-01T12:30:00/out.json"),
        ("données/été.csv", "données/été.csv"),
        ("with space/x y.txt", "with space/x y.txt"),
        ("..hidden/.env", "..hidden/.env"),
        ("k" * 1024, "k" * 1024),
    ],
)
def test_validate_key_accepts_relative_keys(key: str, normalized: str) -> None:
    assert validate_key(key) == normalized


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "is empty"),
        (".", "is empty"),
        ("/etc/passwd", "is absolute"),
        ("../x", "`..` segment"),
        ("a/../../x", "`..` segment"),
        ("a/..", "`..` segment"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("a\\b", "backslash"),
        ("..\\x", "backslash"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("x/.pipedeploy-partial-1", "reserved for the store"),
        ("k" * 1025, "longer than 1024 bytes"),
        ("é" * 513, "longer than 1024 bytes"),
        (123, "not a string"),
    ],
)
def test_validate_key_refuses_unsafe_keys(key: Any, reason: str) -> None:
    with pytest.raises(InvalidDataStoreKey) as caught:
        validate_key(key)
    message = str(caught.value)
    assert repr(key) in message
    assert reason in message
    assert "use a relative key" in message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, PipeDeployError)


# -- blocks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "slug", "fields"),
    [
        (LocalDataStore, "pipedeploy-local-data-store", {"root"}),
        (
            S3DataStore,
            "pipedeploy-s3-data-store",
            {
                "bucket",
                "prefix",
                "endpoint_url",
                "region_name",
                "aws_access_key_id",
                "aws_secret_access_key",
                "aws_session_token",
                "addressing_style",
                "multipart_threshold_mib",
                "multipart_part_size_mib",
            },
        ),
    ],
)
def test_block_type_and_schema_build_without_a_server(
    block: type[DataStore], slug: str, fields: set[str]
) -> None:
    block_type = block._to_block_type()
    assert (block_type.slug, block_type.description) == (slug, block.get_description())
    assert block_type.description and block_type.code_example
    properties = block._to_block_schema().fields["properties"]
    assert set(properties) == fields
    assert all(properties[name].get("description") for name in fields)


def test_s3_block_keeps_credentials_secret() -> None:
    store = S3DataStore(
        bucket="ml-data",
        aws_access_key_id=SecretStr("AKIDEXAMPLE"),
        aws_secret_access_key=SecretStr("very-secret"),
    )
    schema = S3DataStore._to_block_schema().fields
    assert set(schema["secret_fields"]) == {
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
    }
    assert "very-secret" not in repr(store)
    assert "very-secret" not in store.model_dump_json()


def test_local_block_dumps_its_root(tmp_path: Path) -> None:
    assert LocalDataStore(root=str(tmp_path)).model_dump()["root"] == str(tmp_path)


def test_data_store_is_an_interface() -> None:
    with pytest.raises(TypeError):
        DataStore()  # type: ignore[abstract]


def test_block_delete_is_not_shadowed() -> None:
    # `delete`/`adelete` stay Prefect's (delete a saved block document); objects have their own.
    from prefect.blocks.core import Block

    for store_type in (LocalDataStore, S3DataStore):
        assert store_type.delete.__func__ is Block.delete.__func__  # type: ignore[attr-defined]
        assert store_type.adelete.__func__ is Block.adelete.__func__  # type: ignore[attr-defined]


def test_registration_has_sync_and_async_forms() -> None:
    assert callable(register_datastore_blocks)
    assert inspect.iscoroutinefunction(aregister_datastore_blocks)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bucket": "s3://ml-data"}, "bucket 's3://ml-data' is not a bucket name"),
        ({"bucket": "ml-data/folder"}, "put folders in `prefix`"),
        ({"prefix": "../other"}, "prefix '../other' is not a safe folder"),
        ({"endpoint_url": "127.0.0.1:9000"}, "endpoint_url '127.0.0.1:9000' is not an http(s)"),
        ({"aws_access_key_id": "AKID"}, "aws_access_key_id and aws_secret_access_key go together"),
        ({"aws_session_token": "token"}, "aws_session_token needs aws_access_key_id"),
        ({"multipart_part_size_mib": 1}, "multipart_part_size_mib"),
    ],
)
def test_s3_block_fields_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        S3DataStore(**{"bucket": "ml-data", **fields})
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("prefix", "normalized"), [("", ""), ("/team/ml/", "team/ml"), ("./a/b", "a/b")]
)
def test_s3_prefix_is_normalized(prefix: str, normalized: str) -> None:
    assert S3DataStore(bucket="ml-data", prefix=prefix).prefix == normalized


def test_object_info_is_kept_in_utc() -> None:
    local_time = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    info = ObjectInfo(key="k", size=1, last_modified=local_time)
    assert info.last_modified == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert info.last_modified.tzinfo == timezone.utc
    with pytest.raises(ValidationError, match="time zone"):
        ObjectInfo(key="k", size=1, last_modified=datetime(2024, 5, 1))
