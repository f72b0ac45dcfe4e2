"""Endpoint mappings that several test modules deploy the support pipelines with.

For: `FILE_STATS_INPUTS` / `FILE_STATS_OUTPUTS`, `tests/support/pipelines.py:file_stats` as an
endpoint: a file input `doc`, a string input `label` (default "stats"), and its report stored
in the data store under the execution's id. Not for: the pipelines themselves (`pipelines`).
"""

from __future__ import annotations

from prefect_pipedeploy import InputSource, OutputDestination

FILE_STATS_INPUTS = [
    InputSource(pipeline_input_name="document", endpoint_input_name="doc", data_type="file"),
    InputSource(
        pipeline_input_name="label",
        endpoint_input_name="label",
        data_type="string",
        default_value="stats",
    ),
]
FILE_STATS_OUTPUTS = [
    OutputDestination(
        pipeline_output_name="report", datastore_path="reports/{execution_id}/report.txt"
    )
]
