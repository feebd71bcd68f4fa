"""The labeling page in real headless Chromium (Playwright), against a real server and database."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from reward_models.labeling import LabelingServer, LabelStore
from reward_models.labeling.cli import cli

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAYLOAD = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module; a missing or broken browser fails loudly instead of skipping."""
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        except Exception as e:
            pytest.fail(
                f"Chromium could not start from {CHROMIUM} ({type(e).__name__}: {e}). "
                "Install it with `apt-get install -y chromium` (the Makefile does); "
                "the labeling page tests need a real browser.",
                pytrace=False,
            )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[str, Path]]]:
    """``serve(items, mode=..., token=...) -> (url, db path)`` on an ephemeral loopback port."""
    with ExitStack() as stack:

        def start(items: list[dict[str, Any]], mode: str = "rank", token: str | None = None) -> tuple[str, Path]:
            collection = tmp_path / "collection.jsonl"
            collection.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
            store = stack.enter_context(LabelStore(tmp_path / "labels.sqlite"))
            store.import_items(collection)
            server = LabelingServer(store, mode, "127.0.0.1", 0, token)
            threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
            return server.url, store.path

        yield start


def response(page: Page, i: int):
    return page.locator(f"#responses li[data-index='{i}']")


def test_label_three_items_with_clicks_and_keys(serve, page: Page, tmp_path: Path) -> None:
    items = [
        {"prompt": "Greet me.", "responses": ["hi", "hello", "good day"]},
        {"prompt": "Add 1+1.", "responses": ["2", "11", "two"]},
        {"prompt": "Say bye.", "responses": ["bye", "ciao", "farewell"]},
    ]
    url, db = serve(items)
    page.goto(url)
    expect(page.locator("#status")).to_have_text("Enter your name to start.")
    page.fill("#labeler", "ann")
    page.press("#labeler", "Enter")
    expect(page.locator("#prompt")).to_have_text("Greet me.")
    expect(page.locator("#progress")).to_have_text("ann: 0 of 3 labeled")
    assert "labeler=ann" in page.url  # a reload resumes as the same labeler

    # Item 1 by mouse: picking two of three implies the last; clicking a pick again removes it.
    response(page, 2).click()
    response(page, 0).click()
    response(page, 0).click()
    expect(page.locator("#submit")).to_be_disabled()
    response(page, 0).click()
    expect(response(page, 1).locator(".rank")).to_have_text("#3")
    page.click("#submit")
    expect(page.locator("#prompt")).to_have_text("Add 1+1.")
    expect(page.locator("#progress")).to_have_text("ann: 1 of 3 labeled")

    # Item 2 by keyboard, with an undo: 3, 2, Backspace, 1 -> [2, 0, 1].
    for key in ["3", "2", "Backspace", "1"]:
        page.keyboard.press(key)
    expect(response(page, 1).locator(".rank")).to_have_text("#3")
    page.keyboard.press("Enter")
    expect(page.locator("#prompt")).to_have_text("Say bye.")

    # Item 3: a false start cleared with Esc, then 2, 3 -> [1, 2, 0].
    for key in ["1", "Escape", "2", "3"]:
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    expect(page.locator("#done-text")).to_have_text("All 3 items are labeled. Thank you, ann.")
    expect(page.locator("#progress")).to_have_text("ann: 3 of 3 labeled")

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT item_id, labeler, ranking FROM labels ORDER BY item_id").fetchall()
    assert rows == [(1, "ann", "[2, 0, 1]"), (2, "ann", "[2, 0, 1]"), (3, "ann", "[1, 2, 0]")]
    out = tmp_path / "prefs.jsonl"
    assert cli(["export", "--db", str(db), "--out", str(out)]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"prompt": "Greet me.", "responses": ["good day", "hi", "hello"], "labeler": "ann"},
        {"prompt": "Add 1+1.", "responses": ["two", "2", "11"], "labeler": "ann"},
        {"prompt": "Say bye.", "responses": ["ciao", "farewell", "bye"], "labeler": "ann"},
    ]


def test_best_mode_with_url_labeler_and_skip(serve, page: Page) -> None:
    items = [
        {"prompt": "First?", "responses": ["a", "b", "c", "d"]},
        {"prompt": "Second?", "responses": ["yes", "no"]},
    ]
    url, db = serve(items, mode="best")
    page.goto(url + "?labeler=bob")
    expect(page.locator("#prompt")).to_have_text("First?")
    page.keyboard.press("s")
    expect(page.locator("#prompt")).to_have_text("Second?")
    page.keyboard.press("2")
    page.keyboard.press("1")  # best mode: a new pick replaces the old one
    expect(response(page, 0).locator(".rank")).to_have_text("best")
    expect(response(page, 1).locator(".rank")).to_have_text("")
    page.keyboard.press("Enter")
    expect(page.locator("#prompt")).to_have_text("First?")  # the skipped item comes back
    expect(page.locator("#skipped-note")).to_be_visible()
    response(page, 3).click()
    page.keyboard.press("Enter")
    expect(page.locator("#done")).to_be_visible()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT item_id, labeler, ranking FROM labels ORDER BY item_id").fetchall()
    assert rows == [(1, "bob", "[3]"), (2, "bob", "[0]")]


def test_model_text_is_shown_as_text_and_never_runs(serve, page: Page) -> None:
    url, _ = serve([{"prompt": PAYLOAD, "responses": [PAYLOAD, "plain"]}], token="t0k")
    page.goto(url + "?labeler=eve&token=t0k")  # the page passes the token on to the API
    expect(response(page, 0).locator(".text")).to_have_text(PAYLOAD)
    assert page.locator("#prompt").text_content() == PAYLOAD
    assert response(page, 0).locator(".text").text_content() == PAYLOAD
    assert page.locator("#prompt img, #prompt script, #responses img, #responses script").count() == 0
    page.wait_for_timeout(200)  # give a broken image's onerror a moment to fire, were it parsed
    assert page.evaluate("window.__pwned") is None
