"""The io mapping through moto's S3 server: an input downloaded from S3 and an output stored there
(the decisions and the local store are tests/unit/test_iomapping.py).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect_pipedeploy.datastore import S3DataStore
from prefect_pipedeploy.iomapping import resolve_inputs, route_outputs
from prefect_pipedeploy.spec import build_spec

EXECUTION = "0b7d3a5e-1111-4222-8333-444455556666"
NOW = datetime(2024, 3, 9, 7, 5, 2, tzinfo=timezone.utc)


def test_inputs_and_outputs_through_s3(s3_store: S3DataStore, tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    s3_store.upload(model, "models/model.bin")
    spec = build_spec(
        execution_rule="endpoint",
        inputs_mapping=[{"pipeline_input_name": "model", "datastore_path": "models/model.bin"}],
        outputs_mapping=[
            {"pipeline_output_name": "y", "datastore_path": "results/{execution_id}.json"}
        ],
    )
    resolved = resolve_inputs(
        spec, {}, ["model"], ["model"], EXECUTION, tmp_path / "work", s3_store, {}
    )
    assert Path(resolved.parameters["model"]["path"]).read_bytes() == b"weights"

    routed = route_outputs(spec, {"y": {"ok": True}}, EXECUTION, NOW, s3_store)
    assert routed.stored == {"y": f"results/{EXECUTION}.json"}
    info = s3_store.info(f"results/{EXECUTION}.json")
    assert info.size == len(b'{"ok": true}')
    assert info.sha256 is not None
