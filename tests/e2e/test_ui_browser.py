"""The Prefect UI, in a real browser, against a stack started by `pipedeploy up`.

Debian's `chromium`, headless, driven by Playwright's sync API with `executable_path` (no
browser download), opens the Prefect UI (its default, V2) of a stack this module starts with
`pipedeploy up` on free ports, and checks what a user of the platform looks at: the work pool's
form (every field of the pool's template with its description and choices), a deployment's
platform settings, an execution's inputs, outputs and logs, and the UI's own Cancel button
stopping a running execution. Every step leaves a screenshot in tests-output/screenshots/; the
README's docs/ui-execution.png is a copy of 3-execution-logs.png (copied by hand, not by the test,
so a test run never changes a committed file).
Not for: what the UI shows of Prefect's own objects (Prefect tests its UI), nor the worker's
behaviour on cancel (tests/e2e/test_cancel.py).

    .venv/bin/python -m pytest tests/e2e/test_ui_browser.py
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect, sync_playwright

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.settings import env_name
from prefect_pipedeploy.stack import StackRecord
from prefect_pipedeploy.worker.models import base_job_template
from tests.support.eventually import eventually
from tests.support.executions import eventual_log_messages, unique
from tests.support.local_stack import pipedeploy_up
from tests.support.paths import PIPELINES, ROOT

SCREENSHOTS = ROOT / "tests-output" / "screenshots"
AT_READY: dict[str, Any] = {}  # what the API said the moment `up` printed "Ready."
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
UI_TIMEOUT_MS = 30_000  # a page of the UI on a loaded 2-core machine, API calls included
MARKER = "hello from the Prefect UI"
SETTINGS: dict[str, Any] = {
    "execution_rule": "endpoint",
    "mode": "elastic",
    "ram_request": "192MiB",
    "max_retries": 0,
    "execution_timeout_s": 300,
}


# --- fixtures: the stack, the deployment, the browser -------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackRecord]:
    """The module's own `pipedeploy up` (server with its UI, worker, gateway, data store)."""
    directory = tmp_path_factory.mktemp("ui-stack")
    with pipedeploy_up(directory, unique("ui-pool")) as record:
        AT_READY["workers"] = httpx.post(
            f"{record.api_url}/work_pools/{record.pool}/workers/filter", json={}, timeout=30
        ).json()
        yield record
    shutil.rmtree(directory)  # the server's database and logs: nothing left once it passed


@pytest.fixture(scope="module")
def ui(stack: StackRecord) -> str:
    """The base URL of the stack's Prefect UI."""
    return stack.api_url.removesuffix("/api")


@pytest.fixture(scope="module")
def sdk(stack: StackRecord) -> PipeDeploy:
    return PipeDeploy(stack.api_url, stack.pool, stack.data_store, stack.gateway_url)


@pytest.fixture(scope="module")
def deployment(sdk: PipeDeploy) -> dict[str, Any]:
    """An endpoint deployment of `counter` (logs a marker, can wait on a gate file)."""
    return sdk.create_deployment(
        f"{PIPELINES}:counter",
        unique("ui-counter"),
        description="The browser test's pipeline.",
        **SETTINGS,
    )


@pytest.fixture(scope="module")
def finished(sdk: PipeDeploy, deployment: dict[str, Any]) -> dict[str, Any]:
    """A succeeded execution of the deployment, its log lines all on the server."""
    execution = sdk.run_deployment(deployment["name"], {"marker": MARKER}, timeout_s=120)
    assert execution["status"] == "Succeeded", execution
    messages = eventual_log_messages(sdk, execution["execution_id"])
    assert f"marker={MARKER}" in messages, messages
    return execution


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless; a missing one fails the test (never skips it)."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(
            "Debian's chromium is not installed (no `chromium` on PATH): install it with"
            " `apt-get install chromium` (.ci/run does). The UI tests drive it headless through"
            " Playwright's executable_path and never download a browser."
        )
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (own cookies and storage) with the README screenshot's viewport."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    yield context.new_page()
    context.close()


def screenshot(page: Page, name: str, full_page: bool = True) -> Path:
    """Save the page as tests-output/screenshots/NAME.png (the test's output)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=path, full_page=full_page)
    return path


# --- the work pool's form -------------------------------------------------------------------


def field_of(scope: Locator, title: str, required: bool) -> tuple[Locator, Locator]:
    """The form field whose label is TITLE (with " (Optional)" unless required): its label and
    the whole field (label, description, input), as the UI's schema form lays them out."""
    text = title if required else f"{title} (Optional)"
    label = scope.locator("label").filter(has_text=re.compile(f"^{re.escape(text)}$"))
    expect(label, f"the form has no field labelled {text!r}").to_be_visible()
    return label, label.locator(
        "xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' group ')][1]"
    )


def check_fields(page: Page, scope: Locator, schema: dict[str, Any], definitions: dict) -> int:
    """Every property of `schema` is a field in `scope` with its description; an enum's select
    offers exactly its choices; a list of objects or a choice of objects shows their fields
    too (an item is added, each choice's tab opened; nothing is saved). The number of fields."""
    seen = 0
    for name, declared in schema["properties"].items():
        prop = definitions[declared["$ref"].split("/")[-1]] if "$ref" in declared else declared
        title = declared.get("title") or prop.get("title") or name
        label, field = field_of(scope, title, name in schema.get("required", []))
        description = declared.get("description") or prop.get("description")
        assert description, f"field {name!r} of the pool's template has no description"
        expect(label.locator("xpath=following-sibling::p")).to_have_text(description)
        seen += 1
        if "enum" in prop:
            field.get_by_role("button", name=f"Select {title}").click()
            expect(page.get_by_role("listbox").get_by_role("option")).to_have_text(prop["enum"])
            page.keyboard.press("Escape")
            expect(page.get_by_role("listbox")).to_have_count(0)
        if "$ref" in prop.get("items", {}):
            field.get_by_role("button", name="Add item").click()
            item = definitions[prop["items"]["$ref"].split("/")[-1]]
            seen += check_fields(page, field, item, definitions)
        choices = [
            definitions[c["$ref"].split("/")[-1]] for c in prop.get("anyOf", []) if "$ref" in c
        ]
        for chosen in choices:
            expect(field.get_by_role("tab", name=chosen["title"], exact=True)).to_be_visible()
        if choices:
            # Only the first choice's fields: Prefect's form (V2) picks the tab that shows a
            # value by counting the value's keys each choice declares, ignoring `const`; a new
            # {"type": "advanced"} ties with the first choice, which keeps the tab.
            field.get_by_role("tab", name=choices[0]["title"], exact=True).click()
            expect(field.get_by_text(choices[0]["description"], exact=True)).to_be_visible()
            seen += check_fields(page, field, choices[0], definitions)
    return seen


def published_template(stack: StackRecord, declared: dict[str, Any]) -> dict[str, Any]:
    """The variables of the pool's template once the worker has created the pool and said,
    under ram_request, how much RAM it hands out (just after it came online)."""

    def read() -> dict[str, Any]:
        answer = httpx.get(f"{stack.api_url}/work_pools/{stack.pool}", timeout=30)
        return answer.json()["base_job_template"]["variables"] if answer.is_success else {}

    def published(variables: dict[str, Any]) -> bool:
        ram_request = declared["properties"]["ram_request"]["description"]
        return bool(variables) and variables["properties"]["ram_request"]["description"] != (
            ram_request
        )

    return eventually(read, 90, 0.5, until=published, what="the worker's pool published")


def test_up_is_ready_once_its_worker_is_online_in_its_pool(stack: StackRecord) -> None:
    """Before, `up` printed "Ready." before its worker had created the pool: a script using the
    pool at once met a 404. Now the pool exists and lists the worker by then."""
    workers = AT_READY["workers"]
    assert isinstance(workers, list) and len(workers) == 1, workers


def test_up_on_sqlite_starts_its_server_through_serverproc_and_its_gateway_4_creates(
    stack: StackRecord,
) -> None:
    """The server begins its SQLite flow-run creates IMMEDIATE (`serverproc`), so the gateway
    creates 4 executions at a time (`cli.up.GATEWAY_SETTINGS`); its queue keeps the default."""
    children = psutil.Process(stack.pid).children()
    server = next(p for p in children if "prefect_pipedeploy.serverproc" in p.cmdline())
    assert server.cmdline()[server.cmdline().index("prefect_pipedeploy.serverproc") + 1] == (
        "server"
    )
    environ = next(p for p in children if "gateway" in p.cmdline()).environ()
    assert environ.get(env_name("gateway_max_creating")) == "4"
    assert env_name("gateway_max_queued") not in environ


def test_the_work_pool_form_shows_every_field_with_its_description_and_choices(
    page: Page, ui: str, stack: StackRecord
) -> None:
    """The pool's edit page: the form of its base job template, read from the API (the worker
    adds its RAM capacity to ram_request's description), whose fields are the ones the worker's
    models declare."""
    declared = base_job_template()["variables"]
    variables = published_template(stack, declared)
    assert list(variables["properties"]) == list(declared["properties"])
    for name, prop in declared["properties"].items():
        assert variables["properties"][name]["description"].startswith(prop["description"])

    page.goto(f"{ui}/v2/work-pools/work-pool/{stack.pool}/edit")
    expect(page.get_by_role("heading", name="Base Job Template")).to_be_visible()
    expect(page.get_by_role("textbox", name="Type")).to_have_value("pipedeploy")
    form = page.locator("form")
    seen = check_fields(page, form, variables, variables.get("definitions", {}))
    assert seen >= len(variables["properties"]) + 10  # the nested ones: schedules, mappings
    screenshot(page, "1-work-pool-form")


# --- a deployment ---------------------------------------------------------------------------


def test_a_deployment_page_shows_its_platform_settings(
    page: Page, ui: str, deployment: dict[str, Any]
) -> None:
    """The deployment's Configuration tab lists its job variables: the platform's settings."""
    page.goto(f"{ui}/v2/deployments/deployment/{deployment['id']}")
    expect(page.get_by_text(deployment["name"], exact=True).first).to_be_visible()
    expect(page.get_by_text(f"pipedeploy endpoint trigger: {deployment['name']}")).to_be_visible()
    page.get_by_role("tab", name="Configuration").click()
    panel = page.get_by_role("tabpanel")
    expect(panel.get_by_text("Job Variables")).to_be_visible()
    for name, value in SETTINGS.items():
        expect(panel).to_contain_text(f'"{name}": {json.dumps(value)}')
    screenshot(page, "2-deployment-settings")


# --- an execution ---------------------------------------------------------------------------


def check_table(page: Page, rows: dict[str, Any]) -> None:
    """The artifact page's table has one row per name, its value as JSON text."""
    for name, value in rows.items():
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=name, exact=True))
        expect(row).to_contain_text(json.dumps(value))


def test_an_execution_page_shows_its_inputs_outputs_and_logs(
    page: Page, ui: str, sdk: PipeDeploy, finished: dict[str, Any]
) -> None:
    """Logs (the pipeline's own line among Prefect's), parameters, and the inputs and outputs
    pipedeploy records as table artifacts on the run."""
    page.goto(f"{ui}/v2/runs/flow-run/{finished['execution_id']}")
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    expect(page.get_by_text(finished["deployment_name"], exact=True).first).to_be_visible()
    expect(page.get_by_role("tab", name="Logs")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_text(f"marker={MARKER}", exact=True)).to_be_visible()
    expect(page.get_by_text("Finished in state Completed()")).to_be_visible()
    screenshot(page, "3-execution-logs", full_page=False)  # docs/ui-execution.png is a copy

    page.get_by_role("tab", name="Parameters").click()
    expect(page.get_by_role("tabpanel")).to_contain_text(f'"marker": "{MARKER}"')
    screenshot(page, "3-execution-parameters")

    recorded = {
        "Inputs": {
            "marker": sdk.get_pipeline_execution_input(
                finished["execution_id"], "marker", value_only=True
            )
        },
        "Outputs": finished["outputs"],
    }
    assert recorded["Inputs"]["marker"] == MARKER and recorded["Outputs"]["count"] >= 1
    for kind, rows in recorded.items():
        page.goto(f"{ui}/v2/runs/flow-run/{finished['execution_id']}?tab=Artifacts")
        page.get_by_text(f"{kind} of this pipeline execution", exact=False).click()
        expect(page).to_have_url(re.compile(r"/artifacts/artifact/"))
        check_table(page, rows)
        screenshot(page, f"3-execution-{kind.lower()}")


# --- cancelling with the UI's button --------------------------------------------------------


def test_the_ui_cancel_button_cancels_a_running_execution(
    page: Page, ui: str, sdk: PipeDeploy, deployment: dict[str, Any], stack: StackRecord
) -> None:
    """A run held on a gate file that never comes: the run page's menu, Cancel, then the
    dialog's confirmation; the execution ends Cancelled and its page says so."""
    held = sdk.run_deployment(
        deployment["name"],
        {"marker": "held", "gate": str(Path(stack.home) / "never-created")},
        wait_for_completion=False,
    )["execution_id"]
    eventually(
        lambda: sdk.get_pipeline_execution(held),
        90,
        until=lambda execution: execution["status"] == "Running",
        what=f"execution {held} running",
    )
    page.goto(f"{ui}/v2/runs/flow-run/{held}")
    expect(page.get_by_text("Running", exact=True).first).to_be_visible()
    page.get_by_role("button", name="Open menu").click()
    page.get_by_role("menuitem", name="Cancel").click()
    dialog = page.get_by_role("alertdialog")
    expect(dialog).to_contain_text("Will become:")
    expect(dialog).to_contain_text("Cancelling")
    screenshot(page, "4-cancel-confirmation", full_page=False)
    dialog.get_by_role("button", name="Cancel Flow Run").click()
    expect(dialog).to_have_count(0)

    ended = eventually(
        lambda: sdk.get_pipeline_execution(held),
        30,
        until=lambda execution: execution["state_name"] == "Cancelled",
        what=f"execution {held} cancelled",
    )
    assert ended["status"] == "Failed" and not ended["outputs"], ended
    page.reload()
    expect(page.get_by_text("Cancelled", exact=True).first).to_be_visible()
    screenshot(page, "4-execution-cancelled")
