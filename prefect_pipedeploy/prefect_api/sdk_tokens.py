"""SDK tokens and the key that signs access tokens, kept as Prefect variables.

For: the SDK tokens a team gives the reference platform's client (`CraftAiSdk(sdk_token=...)`),
each stored as its hash with its name and creation time in a variable
`pipedeploy_sdk_token_<name>` (`create_sdk_token`, `list_sdk_tokens`, `revoke_sdk_token`,
`sdk_token_named`: which token a shown secret is), and the key the gateways sign access tokens
with (`access_token_key`, one variable `pipedeploy_access_token_key`, made by the first gateway
that needs it, so every gateway of the server accepts the tokens of the others). Both are as
readable as anything else through the Prefect API, which is the boundary: whoever reaches that
API can make tokens anyway. Not for: the access tokens themselves (`gateway.platform`), or
endpoint tokens (`tokens`, stored on their deployment).
"""

from __future__ import annotations

import contextlib
import datetime
import re
import secrets
from typing import Any

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from prefect_pipedeploy._compat import read_variables_by_prefix
from prefect_pipedeploy.exceptions import PipeDeployError
from prefect_pipedeploy.tokens import hash_token, token_matches

SDK_TOKEN_PREFIX = "pipedeploy_sdk_token_"
KEY_VARIABLE = "pipedeploy_access_token_key"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_SECRET_PREFIX = "pds_"  # an SDK token; an endpoint token starts with pdt_


class SdkTokenError(PipeDeployError):
    """An SDK token that cannot be made or revoked as asked."""


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise SdkTokenError(
            f"SDK token name {name!r} is not usable: use 1 to 63 lowercase letters, digits, "
            "'-' or '_', starting with a letter or digit (e.g. 'ci-pipeline')"
        )
    return name


async def create_sdk_token(client: PrefectClient, name: str) -> str:
    """A new SDK token named `name`, stored as its hash; the token itself (shown once)."""
    token = _SECRET_PREFIX + secrets.token_urlsafe(32)
    value = {
        "name": _check_name(name),
        "hash": hash_token(token),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        await client.create_variable(VariableCreate(name=SDK_TOKEN_PREFIX + name, value=value))
    except (ObjectAlreadyExists, httpx.HTTPStatusError) as exc:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code != 409:
            raise
        raise SdkTokenError(
            f"an SDK token named {name!r} exists already; revoke it first "
            f"(`pipedeploy sdk-token revoke {name}`) or choose another name"
        ) from None
    return token


async def list_sdk_tokens(client: PrefectClient) -> list[dict[str, Any]]:
    """Every SDK token's name and creation time (never its hash), by name."""
    variables = await read_variables_by_prefix(client, SDK_TOKEN_PREFIX, limit=200)
    tokens = [
        {"name": v.value.get("name"), "created": v.value.get("created")}
        for v in variables
        if isinstance(v.value, dict)
    ]
    return sorted(tokens, key=lambda t: str(t["name"]))


async def revoke_sdk_token(client: PrefectClient, name: str) -> None:
    """Delete the SDK token `name`: it is refused from now on (access tokens already given for
    it last until they expire)."""
    try:
        await client.delete_variable_by_name(SDK_TOKEN_PREFIX + _check_name(name))
    except ObjectNotFound:
        raise SdkTokenError(
            f"no SDK token named {name!r}; list them with `pipedeploy sdk-token ls`"
        ) from None


async def sdk_token_named(client: PrefectClient, token: str | None) -> str | None:
    """The name of the SDK token `token` is, or None (an endpoint token is never one)."""
    if not token or not token.startswith(_SECRET_PREFIX):
        return None
    for variable in await read_variables_by_prefix(client, SDK_TOKEN_PREFIX, limit=200):
        value = variable.value if isinstance(variable.value, dict) else {}
        if token_matches(token, value.get("hash")):
            return str(value.get("name"))
    return None


async def access_token_key(client: PrefectClient) -> str:
    """The key access tokens are signed with: the server's, made on first use."""
    with contextlib.suppress(ObjectNotFound):
        found = await client.read_variable_by_name(KEY_VARIABLE)
        if found is not None and isinstance(found.value, str) and found.value:
            return found.value
    key = secrets.token_urlsafe(48)
    try:
        await client.create_variable(VariableCreate(name=KEY_VARIABLE, value=key))
    except (ObjectAlreadyExists, httpx.HTTPStatusError) as exc:  # another gateway made it first
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code != 409:
            raise
        found = await client.read_variable_by_name(KEY_VARIABLE)
        assert found is not None and isinstance(found.value, str)
        return found.value
    return key
