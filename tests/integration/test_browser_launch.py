"""In headless Chromium: the EHR shell (localhost) frames the app (127.0.0.1) cross-site, and the launch works."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from ehr_sandbox.stack import SandboxStack
from tests.integration.conftest import LiveApp, sync_sandbox

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    yield page
    context.close()


def test_patient_list_to_sidebar_in_a_cross_site_iframe(page: Page, live_app: LiveApp, sandbox: SandboxStack) -> None:
    page.goto(f"{sandbox.ehr_url}/")
    page.get_by_role("link", name="Bennett").first.click()
    frame = page.frame_locator("#prm-sidebar")
    name = frame.locator("#patient-name")
    name.wait_for(timeout=20_000)
    assert name.inner_text() == "Oliver Bennett"
    sidebar = page.frame(name="prm-sidebar")
    assert sidebar is not None and sidebar.url.startswith(f"{live_app.url}/app/")
    assert "pat-000001" not in sidebar.url
    box = page.locator("#prm-sidebar").bounding_box()
    assert box is not None and 340 <= box["width"] <= 380


def test_a_synced_patient_s_visits_fit_the_sidebar(page: Page, live_app: LiveApp, sandbox: SandboxStack) -> None:
    """From fhir-prm's copy: the Visits card reads in the ~360 px sidebar, no line running out of it."""
    sync_sandbox(live_app, sandbox, "Location", "Patient", "Encounter", "Appointment")
    page.goto(sandbox.chart_url("pat-000276"))
    frame = page.frame_locator("#prm-sidebar")
    last_visit = frame.locator("#last-visit")
    last_visit.wait_for(timeout=20_000)
    _, what, where = last_visit.inner_text().splitlines()
    assert what and where.startswith("Hudson Skin & Aesthetics"), "when, what for, where: a line each"
    assert frame.locator("#patient-source").inner_text().startswith("From fhir-prm's copy of the EHR, synced")
    assert frame.locator("#past-year").inner_text().endswith("missed bookings")
    widths = frame.locator("body").evaluate(
        "b => [b.scrollWidth, b.clientWidth, ...[...document.querySelectorAll('#visits dd')]"
        ".map(d => d.scrollWidth - d.clientWidth)]")
    assert widths[0] <= widths[1] and all(overflow <= 0 for overflow in widths[2:]), widths


def test_launch_works_with_every_app_cookie_stripped(page: Page, live_app: LiveApp, sandbox: SandboxStack) -> None:
    """Third-party cookies blocked: the app must not need any (state lives server-side, handle in the URL)."""
    stripped: list[str] = []

    def strip_cookies(route) -> None:  # type: ignore[no-untyped-def]
        response = route.fetch()
        headers = {k: v for k, v in response.headers.items() if k.lower() != "set-cookie"}
        if len(headers) != len(response.headers):
            stripped.append(route.request.url)
        route.fulfill(response=response, headers=headers)

    page.route(f"{live_app.url}/**", strip_cookies)
    page.goto(sandbox.chart_url("pat-000002"))
    frame = page.frame_locator("#prm-sidebar")
    name = frame.locator("#patient-name")
    name.wait_for(timeout=20_000)
    assert name.inner_text().strip()
    frame.locator("#end-session").click()  # a sidebar form post, CSRF-protected without any cookie
    ended = frame.locator("#problem")
    ended.wait_for(timeout=20_000)
    assert ended.get_attribute("data-reason") == "ended_by_user"
    assert page.context.cookies(live_app.url) == []
    # A late request (the stylesheet) can still be in the handler when the context closes; its failure then
    # surfaced in the next test. Playwright's way to let in-flight handlers go: unroute, ignoring their errors.
    page.unroute_all(behavior="ignoreErrors")


def test_two_frames_two_patients_stay_apart(browser: Browser, live_app: LiveApp, sandbox: SandboxStack) -> None:
    context = browser.new_context()
    first, second = context.new_page(), context.new_page()
    first.goto(sandbox.chart_url("pat-000001"))
    second.goto(sandbox.chart_url("pat-000007"))
    a = first.frame_locator("#prm-sidebar").locator("#patient-name")
    b = second.frame_locator("#prm-sidebar").locator("#patient-name")
    a.wait_for(timeout=20_000)
    b.wait_for(timeout=20_000)
    first.reload()
    a.wait_for(timeout=20_000)
    assert a.inner_text() == "Oliver Bennett"
    assert b.inner_text() != a.inner_text()
    assert first.frame_locator("#prm-sidebar").locator("#patient").get_attribute("data-patient-id") == "pat-000001"
    assert second.frame_locator("#prm-sidebar").locator("#patient").get_attribute("data-patient-id") == "pat-000007"
    context.close()


def test_a_care_ticket_opened_from_the_sidebar_iframe(page: Page, live_app: LiveApp, sandbox: SandboxStack) -> None:
    """The sidebar's quick action calls the JSON API with its handle and CSRF header, cross-site, cookieless."""
    page.goto(sandbox.chart_url("pat-000011"))
    frame = page.frame_locator("#prm-sidebar")
    frame.locator("#patient-name").wait_for(timeout=20_000)
    frame.locator("#ticket-list").get_by_text("No open care tickets.").wait_for(timeout=20_000)
    frame.locator("#ticket-reason").select_option("recall-call")
    frame.locator("#ticket-description").fill("Phone to book the overdue six-month recall")
    frame.locator("#ticket-urgent").check()
    frame.locator("#ticket-open").click()
    item = frame.locator("#ticket-list li.ticket")
    item.wait_for(timeout=20_000)
    assert item.inner_text().startswith("URGENT · Phone to book the overdue six-month recall")
    sidebar = next(f for f in page.frames if "/app/" in f.url)
    listed = sidebar.evaluate("fetch(document.getElementById('follow-ups').dataset.api, {credentials: 'omit'})"
                              ".then(r => r.json())")
    [ticket] = listed["tickets"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", ticket["due_day"])
    assert item.inner_text().endswith(f"(due {ticket['due_day']}, open)"), "the clinic's due day, as the API says"
    assert "Task" in frame.locator("#ticket-message").inner_text()
    assert page.context.cookies(live_app.url) == []
