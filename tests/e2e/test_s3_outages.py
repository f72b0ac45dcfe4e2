"""An S3 server that goes away: uploads and output routing against a private moto server that
a test kills or stops (its own process; the shared server of the other S3 tests stays up).

The errors must name the store, the endpoint, and what to check.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import pytest

from prefect_pipedeploy.exceptions import DataStoreError
from prefect_pipedeploy.iomapping import OutputRoutingError, route_outputs
from prefect_pipedeploy.spec import build_spec
from tests.support.s3_server import make_bucket, make_store, multipart_store, running_moto_server
from tests.support.streams import MiB, SecondPassTrap, payload

EXECUTION = "0b7d3a5e-1111-4222-8333-444455556666"
NOW = datetime(2024, 3, 9, 7, 5, 2, tzinfo=timezone.utc)


def test_s3_upload_to_a_server_that_dies(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with running_moto_server(tmp_path) as server:
        store = multipart_store(server.endpoint_url, make_bucket(server.endpoint_url))

        def kill_the_server(stream: SecondPassTrap) -> None:
            server.process.kill()
            server.process.wait()

        source = SecondPassTrap(payload(11 * MiB, seed=8), offset=6 * MiB, trap=kill_the_server)
        with caplog.at_level(logging.WARNING, logger="prefect_pipedeploy.datastore"):
            with pytest.raises(DataStoreError) as caught:
                store.upload(source, "big.bin")

    message = str(caught.value)
    assert f"cannot upload object 'big.bin' in {store.location()}" in message
    assert f"the S3 endpoint {server.endpoint_url} is unreachable" in message
    assert "check that the server is running" in message
    assert "Could not abort the unfinished multipart upload" in caplog.text


def test_an_unreachable_s3_server_fails_the_routing_clearly(tmp_path: Path) -> None:
    with running_moto_server(tmp_path) as server:
        store = make_store(server.endpoint_url, make_bucket(server.endpoint_url))
    spec = build_spec(
        execution_rule="endpoint",
        outputs_mapping=[{"pipeline_output_name": "y", "datastore_path": "y.json"}],
    )
    with pytest.raises(OutputRoutingError) as caught:
        route_outputs(spec, {"y": 1}, EXECUTION, NOW, store)
    assert "output 'y' could not be stored at data-store path 'y.json'" in str(caught.value)
    assert "unreachable" in str(caught.value)
