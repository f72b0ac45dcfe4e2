"""`engine.loader.import_pipeline`: the one way from an entrypoint to a flow, for the SDK, an
elastic run and a pod; and `load_pipeline`, what a user passes the SDK."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prefect import Flow, flow

from prefect_pipedeploy.engine.loader import import_pipeline, load_pipeline
from prefect_pipedeploy.exceptions import PipelineLoadError

# unique to this module (imported modules stay in sys.modules), and the same in every pytest
# process: xdist workers must collect the same test ids
PACKAGE = "rules_pipes_of_test_rules_loader"

FILES = {
    "plain.py": """
        def score(text: str = "a b") -> dict:
            print("scored")
            return {"words": len(text.split())}

        async def ascore(text: str = "a b") -> dict:
            return {"words": len(text.split())}

        VALUE = 3
    """,
    "flows.py": """
        from prefect import flow

        @flow(name="named-flow")
        def named(x: int = 1) -> dict:
            return {"y": x + 1}

        @flow(log_prints=True)
        def printing() -> dict:
            return {"ok": True}

        @flow
        def quiet() -> dict:
            return {"ok": True}
    """,
    "uses_helper.py": """
        from helper import double  # a sibling module of the pipeline's file

        def run(x: int = 2) -> dict:
            return {"y": double(x)}
    """,
    "helper.py": """
        def double(x):
            return 2 * x
    """,
    "broken.py": """
        raise ZeroDivisionError("broken at import")
    """,
    f"{PACKAGE}/__init__.py": "",
    f"{PACKAGE}/mod.py": """
        def fn(a: int = 1) -> dict:
            return {"a": a}
    """,
}


@pytest.fixture
def pipelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of small pipeline files, as the working directory."""
    for name, text in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("entrypoint", "name", "log_prints", "is_async", "outputs"),
    [
        # a plain function becomes a flow that prints to the run's log, outputs = its dict
        ("plain.py:score", "score", True, False, {"words": 2}),
        ("./plain.py:score", "score", True, False, {"words": 2}),
        ("plain.py:ascore", "ascore", True, True, None),
        # a @flow comes back as it is, with its own settings
        ("flows.py:named", "named-flow", None, False, {"y": 2}),
        ("flows.py:printing", "printing", True, False, {"ok": True}),
        ("flows.py:quiet", "quiet", None, False, {"ok": True}),
        # the pipeline's file imports its siblings
        ("uses_helper.py:run", "run", True, False, {"y": 4}),
        # module paths, as `prefect deploy` may write them
        (f"{PACKAGE}.mod:fn", "fn", True, False, {"a": 1}),
        (f"{PACKAGE}.mod.fn", "fn", True, False, {"a": 1}),
    ],
)
def test_import_pipeline(
    pipelines: Path,
    entrypoint: str,
    name: str,
    log_prints: bool | None,
    is_async: bool,
    outputs: dict[str, Any] | None,
) -> None:
    loaded = import_pipeline(entrypoint)
    assert isinstance(loaded, Flow)
    assert loaded.name == name
    assert loaded.log_prints is log_prints
    assert inspect.iscoroutinefunction(loaded.fn) is is_async
    if outputs is not None:
        assert loaded.fn() == outputs


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("plain.py", "is not an entrypoint; write it as 'path/to/file.py:function'"),
        ("score", "is not an entrypoint"),
        ("plain.py:", "is not an entrypoint"),
        ("missing.py:score", "no file at"),
        ("plain.py:nope", "plain.py has no 'nope'; check the name after ':'"),
        ("plain.py:VALUE", "is a int, not a function"),
        ("broken.py:run", "could not be imported: ZeroDivisionError: broken at import"),
        (f"{PACKAGE}.missing:fn", "could not be imported: ModuleNotFoundError"),
    ],
)
def test_import_pipeline_errors_name_the_pipeline_and_the_fix(
    pipelines: Path, entrypoint: str, message: str
) -> None:
    with pytest.raises(PipelineLoadError) as error:
        import_pipeline(entrypoint)
    assert repr(entrypoint) in str(error.value)
    assert message in str(error.value)


# -- what a user passes the SDK ------------------------------------------------------------------


@flow
def module_flow(x: int = 1) -> dict[str, Any]:
    return {"y": x}


def module_function(x: int = 1) -> dict[str, Any]:
    return {"y": x}


def test_load_pipeline_keeps_where_the_pipeline_lives(pipelines: Path) -> None:
    here = Path(__file__).resolve()
    loaded, directory, entrypoint = load_pipeline(module_flow)
    assert loaded is module_flow
    assert (directory, entrypoint) == (here.parent, f"{here.name}:module_flow")
    loaded, directory, entrypoint = load_pipeline(module_function)
    assert loaded.fn is module_function and loaded.log_prints is True
    assert (directory, entrypoint) == (here.parent, f"{here.name}:module_function")
    loaded, directory, entrypoint = load_pipeline("flows.py:named")
    assert loaded.name == "named-flow"
    assert (directory, entrypoint) == (pipelines.resolve(), "flows.py:named")


def test_load_pipeline_refuses_what_a_worker_cannot_import(pipelines: Path) -> None:
    def nested() -> None: ...

    for pipeline, message in [
        ("flows.py", "is not an entrypoint; write it as 'path/to/file.py:function'"),
        ("nowhere.py:f", "no file at"),
        ("broken.py:run", "could not be imported: ZeroDivisionError"),
        (nested, "must be defined at the top level of a Python file"),
        (lambda: None, "must be defined at the top level of a Python file"),
        (5, "pipeline must be a flow, a function or 'file.py:function', not int"),
    ]:
        with pytest.raises(PipelineLoadError, match="pipeline") as error:
            load_pipeline(pipeline)
        assert message in str(error.value), pipeline
