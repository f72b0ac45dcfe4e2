"""The S3 data store: objects in an S3 bucket (AWS, MinIO, any S3-compatible server), via boto3.

For: `S3DataStore`: sha256 in each object's metadata, verified on download; multipart uploads
completed only when every part is in. boto3 is blocking: the base class runs it in a worker
thread. Not for: local files (`local`).
"""

from __future__ import annotations

import builtins
import hashlib
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import IO, Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from prefect.logging import get_logger
from pydantic import Field, SecretStr, field_validator, model_validator

from prefect_pipedeploy.datastore.base import DataStore, ObjectInfo
from prefect_pipedeploy.datastore.keys import MAX_KEY_BYTES, validate_key
from prefect_pipedeploy.datastore.streams import (
    BinaryReader,
    BinaryWriter,
    MiB,
    _copy_hashing,
    _read_exactly,
    _seekable,
)
from prefect_pipedeploy.exceptions import (
    DataStoreError,
    DataStoreIntegrityError,
    DataStoreObjectNotFound,
    InvalidDataStoreKey,
)

logger = get_logger("prefect_pipedeploy.datastore")


@lru_cache(maxsize=32)
def _s3_client(
    endpoint_url: str | None,
    region_name: str | None,
    addressing_style: str,
    aws_access_key_id: str | None,
    aws_secret_access_key: str | None,
    aws_session_token: str | None,
) -> Any:
    """One boto3 S3 client per connection settings, shared by threads (clients are thread-safe,
    sessions are not: each client gets its own session). Missing credentials come from the
    standard AWS environment, read when the client is first made."""
    session = boto3.session.Session(
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        aws_session_token=aws_session_token,
        region_name=region_name,
    )
    config = Config(
        connect_timeout=10,
        read_timeout=60,
        retries={"mode": "standard", "max_attempts": 3},
        s3={"addressing_style": addressing_style},
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


_DENIED_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}


MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload


class S3DataStore(DataStore):
    """A data store in an S3 bucket (AWS S3, MinIO or any S3-compatible server), via boto3.

    Each key is an object under `prefix`. Uploads record the content's sha256 in the object's
    metadata (`x-amz-meta-sha256`) and downloads verify it.
    """

    _block_type_name = "PipeDeploy S3 Data Store"
    _block_type_slug = "pipedeploy-s3-data-store"
    _code_example = """
    ```python
    from prefect_pipedeploy.datastore import S3DataStore

    store = S3DataStore(bucket="ml-data", prefix="pipedeploy/prod", region_name="eu-west-1")
    store.upload("model.pkl", "models/model.pkl")
    store.download("models/model.pkl", "/tmp/model.pkl")
    ```
    """

    bucket: str = Field(
        title="Bucket",
        description="Name of the S3 bucket holding the objects; it must exist already.",
        examples=["ml-data"],
    )
    prefix: str = Field(
        default="",
        title="Key prefix",
        description=(
            "Folder inside the bucket for this store's objects, such as 'pipedeploy/prod';"
            " empty for the whole bucket."
        ),
    )
    endpoint_url: str | None = Field(
        default=None,
        title="Endpoint URL",
        description=(
            "URL of an S3-compatible server such as MinIO ('http://127.0.0.1:9000');"
            " empty for AWS S3."
        ),
    )
    region_name: str | None = Field(
        default=None,
        title="Region",
        description="AWS region of the bucket, such as 'eu-west-1'; empty for the environment's.",
    )
    aws_access_key_id: SecretStr | None = Field(
        default=None,
        title="Access key id",
        description=(
            "Empty to take credentials from the standard AWS environment (AWS_* variables,"
            " profile, instance or pod role)."
        ),
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None,
        title="Secret access key",
        description="Secret of the access key id; set both or neither.",
    )
    aws_session_token: SecretStr | None = Field(
        default=None,
        title="Session token",
        description="Only for temporary credentials, together with the key id and secret.",
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        title="Addressing style",
        description=(
            "How the bucket appears in URLs: 'path' suits MinIO and most S3-compatible servers."
        ),
    )
    multipart_threshold_mib: int = Field(
        default=16,
        ge=5,
        le=1024,
        title="Multipart threshold (MiB)",
        description=(
            "Objects up to this size go in one PUT, held in memory meanwhile; larger ones in parts."
        ),
    )
    multipart_part_size_mib: int = Field(
        default=16,
        ge=5,
        le=1024,
        title="Part size (MiB)",
        description=(
            "Size of each part of a multipart upload, one held in memory at a time; raised"
            " automatically for objects that would need more than 10,000 parts."
        ),
    )

    @field_validator("bucket")
    @classmethod
    def _bucket_is_a_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}", value):
            raise ValueError(
                f"bucket {value!r} is not a bucket name: give the name only, 3 or more letters,"
                " digits, '.', '-' or '_' such as 'ml-data' (no 's3://'), and put folders in"
                " `prefix`"
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_folder(cls, value: str) -> str:
        value = value.strip("/")
        if value == "":
            return value
        try:
            return validate_key(value)
        except InvalidDataStoreKey as exc:
            raise ValueError(f"prefix {value!r} is not a safe folder: {exc}") from exc

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"endpoint_url {value!r} is not an http(s) URL; give one such as"
                " 'http://127.0.0.1:9000', or leave it empty for AWS S3"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _credentials_are_complete(self) -> S3DataStore:
        has_id = self.aws_access_key_id is not None
        has_secret = self.aws_secret_access_key is not None
        if has_id != has_secret:
            raise ValueError(
                "aws_access_key_id and aws_secret_access_key go together: set both, or neither"
                " to use the AWS environment's credentials"
            )
        if self.aws_session_token is not None and not has_id:
            raise ValueError(
                "aws_session_token needs aws_access_key_id and aws_secret_access_key as well"
            )
        return self

    def location(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    # -- helpers

    def _client(self) -> Any:
        def reveal(secret: SecretStr | None) -> str | None:
            return secret.get_secret_value() if secret is not None else None

        return _s3_client(
            self.endpoint_url,
            self.region_name,
            self.addressing_style,
            reveal(self.aws_access_key_id),
            reveal(self.aws_secret_access_key),
            reveal(self.aws_session_token),
        )

    def _key_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _full_key(self, key: str) -> str:
        full_key = self._key_prefix() + key
        if len(full_key.encode()) > MAX_KEY_BYTES:
            raise InvalidDataStoreKey(
                f"data store key {key!r} is too long: with the prefix {self.prefix!r} it exceeds"
                f" S3's {MAX_KEY_BYTES} bytes; use a shorter key"
            )
        return full_key

    @contextmanager
    def _boto_errors(self, action: str, key: str | None) -> Iterator[None]:
        """Translate botocore errors into the data store's, naming the object and the fix."""
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, action, key) from exc

    def _translate(
        self, exc: ClientError | BotoCoreError, action: str, key: str | None
    ) -> DataStoreError:
        target = f"object {key!r} in {self.location()}" if key is not None else self.location()
        failed = f"cannot {action} {target}"
        endpoint = self.endpoint_url or f"AWS S3 ({self.region_name or 'default region'})"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in _NOT_FOUND_CODES and key is not None:
                return self._not_found(key)
            if code == "NoSuchBucket":
                return DataStoreError(
                    f"{failed}: the bucket {self.bucket!r} does not exist at {endpoint}; create"
                    " it, or fix `bucket` on the block"
                )
            if code in _DENIED_CODES:
                return DataStoreError(
                    f"{failed}: access denied ({code}); check the block's credentials (or the"
                    " AWS environment's) and the bucket's policy"
                )
            return DataStoreError(f"{failed}: S3 answered {code}: {error.get('Message', exc)}")
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return DataStoreError(
                f"{failed}: no AWS credentials found; set aws_access_key_id and"
                " aws_secret_access_key on the block, or AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY in the environment"
            )
        if isinstance(exc, ChecksumError):
            return DataStoreIntegrityError(
                f"{failed}: the content failed its checksum in transit ({exc}); retry, and"
                " upload the object again if it persists"
            )
        if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
            return DataStoreError(
                f"{failed}: the S3 endpoint {endpoint} is unreachable or dropped the connection"
                f" ({exc}); check that the server is running and that endpoint_url and"
                " region_name on the block are right"
            )
        return DataStoreError(f"{failed}: {exc}")

    def _source_changed(self, key: str) -> DataStoreError:
        return DataStoreError(
            f"cannot upload {key!r} to {self.location()}: the source changed while it was being"
            " uploaded (two reads of it differ); nothing was stored, upload it once it is complete"
        )

    def _object_info_from(self, key: str, response: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=response["ContentLength"],
            last_modified=response["LastModified"],
            sha256=response.get("Metadata", {}).get("sha256"),
        )

    # -- the operations

    def _write_object(self, key: str, source: BinaryReader) -> ObjectInfo:
        full_key = self._full_key(key)
        with _seekable(source, key) as stream, self._boto_errors("upload", key):
            start = stream.tell()
            sha256, size = _copy_hashing(
                stream, None, reading=f"the source of {key!r}", writing="nothing"
            )
            stream.seek(start)
            if size <= self.multipart_threshold_mib * MiB:
                self._put_whole(key, full_key, stream, size, sha256)
            else:
                self._put_in_parts(key, full_key, stream, size, sha256)
            head = self._client().head_object(Bucket=self.bucket, Key=full_key)
        return self._object_info_from(key, head)

    def _put_whole(
        self, key: str, full_key: str, stream: IO[bytes], size: int, sha256: str
    ) -> None:
        body = _read_exactly(stream, size + 1, f"the source of {key!r}")
        if len(body) != size or hashlib.sha256(body).hexdigest() != sha256:
            raise self._source_changed(key)
        self._client().put_object(
            Bucket=self.bucket, Key=full_key, Body=body, Metadata={"sha256": sha256}
        )

    def _put_in_parts(
        self, key: str, full_key: str, stream: IO[bytes], size: int, sha256: str
    ) -> None:
        """A multipart upload, completed only if the parts hash to `sha256`, else aborted."""
        client = self._client()
        part_size = max(self.multipart_part_size_mib * MiB, math.ceil(size / MAX_PARTS))
        upload_id = client.create_multipart_upload(
            Bucket=self.bucket, Key=full_key, Metadata={"sha256": sha256}
        )["UploadId"]
        try:
            digest = hashlib.sha256()
            parts: builtins.list[dict[str, Any]] = []
            while chunk := _read_exactly(stream, part_size, f"the source of {key!r}"):
                digest.update(chunk)
                number = len(parts) + 1
                response = client.upload_part(
                    Bucket=self.bucket,
                    Key=full_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                )
                parts.append({"PartNumber": number, "ETag": response["ETag"]})
            if digest.hexdigest() != sha256:
                raise self._source_changed(key)
            client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self._abort(full_key, upload_id)
            raise

    def _abort(self, full_key: str, upload_id: str) -> None:
        """Abort an unfinished multipart upload so that none of its parts stay behind."""
        try:
            self._client().abort_multipart_upload(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            logger.warning(
                "Could not abort the unfinished multipart upload %s of s3://%s/%s (%s); its"
                " parts stay stored until removed: abort it by hand or give the bucket an"
                " AbortIncompleteMultipartUpload lifecycle rule",
                upload_id,
                self.bucket,
                full_key,
                exc,
                extra={"action": "datastore_abort_failed"},
            )

    def _read_object(self, key: str, destination: BinaryWriter) -> ObjectInfo:
        full_key = self._full_key(key)
        with self._boto_errors("download", key):
            response = self._client().get_object(Bucket=self.bucket, Key=full_key)
            body = response["Body"]
            try:
                sha256, size = _copy_hashing(
                    body, destination, reading=f"object {key!r}", writing="the destination"
                )
            finally:
                body.close()
        recorded = response.get("Metadata", {}).get("sha256")
        if recorded is not None and recorded.lower() != sha256:
            raise DataStoreIntegrityError(
                f"object {key!r} in {self.location()} is corrupt: its content has sha256"
                f" {sha256} but {recorded} was recorded when it was uploaded; nothing was"
                " written to the destination: upload the object again"
            )
        return ObjectInfo(key=key, size=size, last_modified=response["LastModified"], sha256=sha256)

    def _list_objects(self, prefix: str, page_size: int) -> builtins.list[ObjectInfo]:
        base = self._key_prefix()
        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": base + prefix,
            "MaxKeys": page_size,
        }
        found: builtins.list[ObjectInfo] = []
        with self._boto_errors("list", None):
            while True:
                page = self._client().list_objects_v2(**request)
                for item in page.get("Contents", []):
                    key = item["Key"][len(base) :]
                    if key and not key.endswith("/"):  # skip folder markers
                        found.append(
                            ObjectInfo(
                                key=key, size=item["Size"], last_modified=item["LastModified"]
                            )
                        )
                if not page.get("IsTruncated"):
                    break
                request["ContinuationToken"] = page["NextContinuationToken"]
        return sorted(found, key=lambda info: info.key)

    def _object_info(self, key: str) -> ObjectInfo:
        with self._boto_errors("describe", key):
            head = self._client().head_object(Bucket=self.bucket, Key=self._full_key(key))
        return self._object_info_from(key, head)

    def _object_exists(self, key: str) -> bool:
        try:
            self._object_info(key)
        except DataStoreObjectNotFound:
            return False
        return True

    def _delete_object(self, key: str) -> None:
        with self._boto_errors("delete", key):
            self._client().delete_object(Bucket=self.bucket, Key=self._full_key(key))
