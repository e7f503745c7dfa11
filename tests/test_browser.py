"""The admin UI in a real browser: headless Chromium (Debian's, never a downloaded one) driven by
Playwright against a live gunicorn server over the test database. SQLite only.

Skipped when /usr/bin/chromium is missing, unless REQUIRE_BROWSER=1 (CI), which makes that a failure.
``UPDATE_SCREENSHOTS=1`` also saves the screenshots under docs/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from webapp import store
from webapp.extensions import write_transaction

from .admin_helpers import PASSWORD, USERNAME, make_user, metadata_of
from .helpers import ROOT, LiveServer, completion_body, require, seed

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
XSS = "<img src=x onerror=alert(1)>"
LONG_KEY = "k" * 65


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the module."""
    if not os.path.exists(CHROMIUM):
        require("REQUIRE_BROWSER", f"{CHROMIUM} is missing (apt-get install chromium): browser tests skipped")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def server(request: pytest.FixtureRequest, backend: str) -> LiveServer:
    """The live server, on SQLite only (the store tests cover PostgreSQL), with a user to sign in."""
    if backend != "sqlite":
        pytest.skip("browser tests run on SQLite; the store and admin tests cover PostgreSQL")
    server: LiveServer = request.getfixturevalue("live_server")
    make_user()
    return server


class Tab:
    """A browser tab on the live server that records every dialog and script error, which must stay empty."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # A form answered 400 or 412 on purpose is logged too; a CSP violation or script error is not that.
        if message.type == "error" and not message.text.startswith("Failed to load resource: the server responded"):
            self.errors.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def assert_fits(self) -> None:
        """Assert the page does not scroll sideways at this tab's width."""
        overflow = self.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{self.page.url} scrolls sideways by {overflow}px at {self.page.viewport_size['width']}px"

    def sign_in(self) -> None:
        from playwright.sync_api import expect

        self.goto("/")
        expect(self.page).to_have_url(self.base + "/login?next=/")
        self.page.get_by_label("Username").fill(USERNAME)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page).to_have_url(self.base + "/")


@contextmanager
def open_tab(chromium: Any, server: LiveServer, **context: Any) -> Iterator[Tab]:
    """A new browser context and tab; when the block ends well, no dialog opened and no script failed."""
    ctx = chromium.new_context(**context)
    ctx.set_default_timeout(15_000)
    tab = Tab(ctx.new_page(), server.url)
    try:
        yield tab
        assert tab.dialogs == [], "no page may open a dialog (a script ran)"
        assert tab.errors == [], "no script errors or CSP violations"
    finally:
        ctx.close()


@pytest.fixture
def tab(chromium: Any, server: LiveServer) -> Iterator[Tab]:
    """A signed-in tab at desktop size."""
    with open_tab(chromium, server, viewport={"width": 1280, "height": 900}) as tab:
        tab.sign_in()
        yield tab


def screenshot_folder(tmp_path: Path) -> Path:
    """Where screenshots go: docs/ with UPDATE_SCREENSHOTS=1, else a temporary folder."""
    return ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path


def listed(tab: Tab) -> list[str]:
    return tab.page.locator('input[name="ids"]').evaluate_all("boxes => boxes.map(b => b.value)")


def test_sign_in_filter_by_metadata_and_open_a_completion(tab: Tab) -> None:
    from playwright.sync_api import expect

    seed(*(completion_body(f"c{i}", created=1_700_000_000 + i, metadata={"team": "red" if i % 2 else "blue"}) for i in range(5)))
    tab.goto("/")
    assert listed(tab) == ["c4", "c3", "c2", "c1", "c0"]
    tab.page.get_by_label("Metadata filter 1").fill("team=red")
    tab.page.get_by_role("button", name="Apply filter").click()
    expect(tab.page).to_have_url(tab.base + "/?model=&metadata=team%3Dred")
    assert listed(tab) == ["c3", "c1"]
    tab.page.get_by_role("link", name="c3", exact=True).click()
    expect(tab.page.get_by_role("heading", level=1)).to_have_text("c3")
    expect(tab.page.get_by_text("Say hello (c3)").first).to_be_visible()


def test_search_a_date_range_count_excerpt_and_paging(tab: Tab) -> None:
    from playwright.sync_api import expect

    day = 1_760_000_000 - 1_760_000_000 % 86_400  # 2025-10-09 00:00 UTC
    seed(
        *(completion_body(f"r{i:02d}", created=day + i * 600, content=f"Refund #{i} approved, 我们会退款") for i in range(60)),
        completion_body("older", created=day - 86_400, content="refund from the day before"),
        completion_body("other", created=day + 60, content="Nothing to see"),
    )
    tab.goto("/")
    tab.page.get_by_label("Text").fill("REFUND 退款")
    tab.page.get_by_label("From (UTC day)").fill("2025-10-09")
    tab.page.get_by_label("To (UTC day, included)").fill("2025-10-09")
    tab.page.get_by_role("button", name="Apply filter").click()
    expect(tab.page).to_have_url(tab.base + "/?search=REFUND+%E9%80%80%E6%AC%BE&created_after=2025-10-09&model=&metadata=&created_before=2025-10-10")
    expect(tab.page.locator("#match-count")).to_have_text("60 matches")
    first = tab.page.locator("td.excerpt").first
    expect(first.locator("mark")).to_have_text("Refund")
    expect(first).to_contain_text("#59 approved")
    assert listed(tab)[:2] == ["r59", "r58"] and len(listed(tab)) == 50
    expect(tab.page.get_by_label("To (UTC day, included)")).to_have_value("2025-10-09")
    tab.page.get_by_role("link", name="Older →").click()
    assert listed(tab) == [f"r{i:02d}" for i in range(9, -1, -1)], "the filter is kept on the next page"
    expect(tab.page.locator("#match-count")).to_have_text("60 matches")
    expect(tab.page.get_by_label("Text")).to_have_value("REFUND 退款")


def test_add_change_and_remove_pairs_then_see_them_after_reload(tab: Tab) -> None:
    from playwright.sync_api import expect

    seed(completion_body("c1", metadata={"team": "red", "n": "1"}))
    page = tab.page
    tab.goto("/completions/c1")
    page.get_by_label("Value 1").fill("blue")  # change team
    page.get_by_label("Key 3").fill("label")  # the spare row
    page.get_by_label("Value 3").fill("good")
    page.get_by_role("button", name="Add row").click()  # no JavaScript: the page comes back with one more row
    expect(page.get_by_label("Key 4")).to_have_value("")
    expect(page.get_by_label("Value 3")).to_have_value("good")
    page.get_by_label("Key 4").fill("extra")
    page.get_by_label("Value 4").fill("1")
    page.get_by_role("button", name="Remove row 2").click()  # remove n
    expect(page.get_by_label("Key 2")).to_have_value("label")
    page.get_by_role("button", name="Save metadata").click()
    expect(page.get_by_role("status").filter(has_text="Saved the metadata (3 pairs).")).to_be_visible()
    page.reload()
    expect(page.get_by_label("Key 1")).to_have_value("team")
    expect(page.get_by_label("Value 1")).to_have_value("blue")
    expect(page.get_by_label("Key 2")).to_have_value("label")
    expect(page.get_by_label("Key 3")).to_have_value("extra")
    expect(page.get_by_label("Key 4")).to_have_value("")
    assert metadata_of("c1") == {"team": "blue", "label": "good", "extra": "1"}
    expect(page.locator(".history .change").first).to_contain_text("user ann")


def test_enter_in_a_field_saves(tab: Tab) -> None:
    from playwright.sync_api import expect

    seed(completion_body("c1", metadata={"team": "red"}))
    tab.goto("/completions/c1")
    tab.page.get_by_label("Value 1").fill("green")
    tab.page.get_by_label("Key 1").press("Enter")  # a value is a textarea, where Enter is a line break
    expect(tab.page.get_by_text("Saved the metadata (1 pair).")).to_be_visible()
    assert metadata_of("c1") == {"team": "green"}


def test_a_too_long_key_is_reported_beside_it(tab: Tab) -> None:
    from playwright.sync_api import expect

    seed(completion_body("c1", metadata={"team": "red"}))
    tab.goto("/completions/c1")
    key = tab.page.get_by_label("Key 2")
    key.fill(LONG_KEY)
    tab.page.get_by_label("Value 2").fill("v")
    tab.page.get_by_role("button", name="Save metadata").click()
    key = tab.page.get_by_label("Key 2")
    expect(key).to_have_attribute("aria-invalid", "true")
    error = tab.page.locator("#rows-1-key-error")
    expect(error).to_have_attribute("role", "alert")
    expect(error).to_have_text(
        f"Invalid 'metadata.{LONG_KEY}': property name too long. Expected a property name with maximum length 64, "
        "but got a property name with length 65 instead."
    )
    expect(key).to_have_attribute("aria-describedby", "rows-1-key-error")
    assert metadata_of("c1") == {"team": "red"}


def test_a_stale_edit_is_refused(tab: Tab) -> None:
    from playwright.sync_api import expect

    seed(completion_body("c1", metadata={"team": "red"}))
    tab.goto("/completions/c1")
    with write_transaction() as session:  # someone else saves meanwhile
        store.update_metadata(session, completion_id="c1", metadata={"team": "blue", "by": "bob"}, actor="user:bob")
    tab.page.get_by_label("Value 1").fill("green")
    tab.page.get_by_role("button", name="Save metadata").click()
    conflict = tab.page.locator(".conflict")
    expect(conflict).to_contain_text("Not saved: someone changed this metadata after you loaded the page (user bob")
    expect(conflict).to_contain_text("teamblue")
    expect(conflict).to_contain_text("bybob")
    expect(tab.page.get_by_label("Value 1")).to_have_value("green")
    assert metadata_of("c1") == {"team": "blue", "by": "bob"}


def test_delete_after_confirming(tab: Tab) -> None:
    from playwright.sync_api import expect

    seed(completion_body("c1"), completion_body("c2", created=1_700_000_001))
    tab.goto("/completions/c1")
    tab.page.get_by_role("link", name="Delete…").click()
    expect(tab.page.get_by_role("heading", name="Delete this completion?")).to_be_visible()
    tab.page.get_by_role("button", name="Delete permanently").click()
    expect(tab.page).to_have_url(tab.base + "/")
    expect(tab.page.get_by_text("Deleted completion c1.")).to_be_visible()
    assert listed(tab) == ["c2"]


def test_hostile_text_renders_as_text_and_runs_nothing(tab: Tab) -> None:
    from playwright.sync_api import expect

    seed(completion_body("x1", content=XSS, metadata={"note": XSS}, messages=[{"role": "user", "content": XSS}]))
    for path in ("/", "/completions/x1", "/?metadata=" + quote(f"note={XSS}")):
        tab.goto(path)
        expect(tab.page.get_by_text(XSS).first).to_be_visible()
        assert tab.page.locator('img[src="x"]').count() == 0
    tab.goto("/completions/x1")
    expect(tab.page.get_by_label("Value 1")).to_have_value(XSS)
    tab.page.get_by_role("button", name="Save metadata").click()  # saving it back keeps it inert
    expect(tab.page.get_by_text("Saved the metadata (1 pair).")).to_be_visible()
    assert metadata_of("x1") == {"note": XSS}


def showcase() -> None:
    """Completions that look like real ones, for the screenshots."""
    weather = completion_body(
        "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        created=1_732_550_000,
        model="gpt-4o-2024-08-06",
        content="It's **21 °C** and sunny in Paris right now:\n\n- a light jacket is plenty\n- no umbrella needed\n\n| time | sky |\n| --- | --- |\n| 12:00 | clear |\n| 18:00 | clear |",
        metadata={"team": "travel", "label": "good", "reviewer": "ann"},
        messages=[
            {"role": "system", "content": "You are a concise travel assistant. Use the tools when you need live data."},
            {"role": "user", "content": "Do I need a coat in Paris today?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_Xj2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
            {"role": "tool", "tool_call_id": "call_Xj2", "content": '{"temp": 21, "sky": "clear", "wind_kmh": 8}'},
        ],
    )
    weather["usage"] = {"prompt_tokens": 118, "completion_tokens": 19, "total_tokens": 137, "prompt_tokens_details": {"cached_tokens": 0}}
    weather["temperature"] = 0.3
    weather["tools"] = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    others = [
        ("chatcmpl-B9MA1", "gpt-4o-mini", "Summarise this ticket: the export button times out on large projects.", "Export of large projects times out; needs streaming.", {"team": "support", "label": "good"}),
        ("chatcmpl-B9M9z", "gpt-4o-mini", "Translate 'stored completions' into German.", "Gespeicherte Vervollständigungen.", {"team": "i18n"}),
        ("chatcmpl-B9M9q", "llama-3.1-70b", "Write a haiku about databases.", "Rows in quiet sleep / indexes like lanterns glow / a query wakes them", {"team": "fun", "label": "needs-review"}),
        ("chatcmpl-B9M9a", "gpt-4o-2024-08-06", "What's the capital of Australia?", "Canberra.", {}),
    ]
    seed(
        *(
            completion_body(cid, created=1_732_549_000 - i * 700, model=model, content=reply, metadata=meta, messages=[{"role": "user", "content": question}])
            for i, (cid, model, question, reply, meta) in enumerate(others)
        ),
        weather,
    )


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 860}, {"width": 390, "height": 844}], ids=["desktop", "phone"])
def test_the_pages_fit_the_screen(chromium: Any, server: LiveServer, tmp_path: Path, viewport: dict[str, int]) -> None:
    from playwright.sync_api import expect

    showcase()
    folder = screenshot_folder(tmp_path)
    size = "phone" if viewport["width"] < 600 else "desktop"
    with open_tab(chromium, server, viewport=viewport, device_scale_factor=1) as tab:
        tab.sign_in()
        for name, path in [("list", "/"), ("detail", "/completions/chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT")]:
            tab.goto(path)
            expect(tab.page.locator("main h1")).to_be_visible()
            tab.assert_fits()
            tab.page.screenshot(path=str(folder / f"admin-{name}-{size}.png"), full_page=size == "phone" or name == "detail")


def month_of_usage() -> None:
    """November 2026 as a busy team would have it: weekday peaks, three models, a fourth tried once."""
    import random

    rng = random.Random(13)
    start = 1_793_491_200  # Sunday 1 November 2026 00:00 UTC
    records = []
    for day in range(30):
        weekday = (day + 6) % 7 < 5
        for n in range(rng.randint(12, 20) if weekday else rng.randint(3, 7)):
            model = rng.choices(["gpt-4o-mini", "gpt-4o-2024-08-06", "llama-3.1-70b"], weights=[6, 3, 1])[0]
            body = completion_body(f"m{day}-{n}", created=start + day * 86_400 + rng.randrange(86_400), model=model)
            prompt, reply = rng.randint(40, 900), rng.randint(10, 400)
            body["usage"] = {"prompt_tokens": prompt, "completion_tokens": reply, "total_tokens": prompt + reply}
            records.append(body)
    records.append(completion_body("try-o1", created=start + 17 * 86_400 + 3_600, model="o1-preview"))
    seed(*records)


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 900}, {"width": 320, "height": 700}], ids=["desktop", "phone"])
def test_the_overview_fits_and_its_bars_lead_to_the_list(chromium: Any, server: LiveServer, tmp_path: Path, viewport: dict[str, int]) -> None:
    from playwright.sync_api import expect

    month_of_usage()
    with open_tab(chromium, server, viewport=viewport, device_scale_factor=1) as tab:
        tab.sign_in()
        tab.page.get_by_role("link", name="Overview", exact=True).click()
        expect(tab.page.locator("main h1")).to_have_text("Overview")
        expect(tab.page.get_by_text("From Sun 1 Nov 2026 to Mon 30 Nov 2026, per day (UTC).")).to_be_visible()
        chart = tab.page.locator("#chart-completions")
        expect(chart).to_be_visible()
        box = chart.bounding_box()
        assert box is not None and box["width"] > viewport["width"] / 2 and box["height"] > 100
        tab.assert_fits()
        name = "admin-overview.png" if viewport["width"] > 600 else "admin-overview-phone.png"
        tab.page.screenshot(path=str(screenshot_folder(tmp_path) / name), full_page=True)
        if viewport["width"] > 600:
            tab.page.emulate_media(color_scheme="dark")
            tab.page.screenshot(path=str(screenshot_folder(tmp_path) / "admin-overview-dark.png"))
            tab.page.emulate_media(color_scheme="light")
        tab.page.get_by_text("The numbers behind “Completions per day, by model”").click()
        expect(tab.page.locator("#chart-completions-numbers")).to_be_visible()
        tab.page.locator('#chart-completions a[aria-label="Wed 18 Nov 2026, o1-preview: 1"]').click()
        expect(tab.page).to_have_url(tab.base + "/?model=o1-preview&created_after=2026-11-18&created_before=2026-11-19")
        expect(tab.page.get_by_role("link", name="try-o1")).to_be_visible()


# --- The review workbench: bulk changes, undo, Markdown, navigation, layout ---------------


def no_sideways_scroll(tab: Tab) -> int:
    return tab.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def overflowing(tab: Tab) -> list[str]:
    """Return the elements that reach past the right edge of the window (to say what pushes a page sideways)."""
    return tab.page.evaluate(
        """() => Array.from(document.querySelectorAll('body *')).filter(el => el.getBoundingClientRect().right > window.innerWidth + 0.5)
             .slice(-6).map(el => el.tagName + '.' + el.className + ' ' + Math.round(el.getBoundingClientRect().right))"""
    )


def test_a_typed_but_unapplied_filter_never_widens_or_changes_a_bulk_change(tab: Tab) -> None:
    from playwright.sync_api import expect

    seed(*(completion_body(f"c{i}", created=1_700_000_000 + i, metadata={"team": "red" if i % 2 else "blue"}) for i in range(5)))
    page = tab.page
    tab.goto("/?metadata=team%3Dblue")
    assert listed(tab) == ["c4", "c2", "c0"]
    page.get_by_label("Metadata filter 1").fill("team=red")  # typed, never applied
    page.locator("#bulk summary").click()
    page.get_by_label("Key", exact=True).fill("label")
    page.get_by_label("Value", exact=True).fill("checked")
    page.get_by_label("Every completion matching the filter").check()
    page.get_by_role("button", name="Review the change…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Change 3 completions?")
    expect(page.locator("#bulk-scope")).to_have_text("every completion matching team=blue")
    assert all("label" not in metadata_of(f"c{i}") for i in range(5)), "nothing is written before confirming"
    page.get_by_role("button", name="Apply to 3 completions").click()
    expect(page.get_by_text("Set 'label' to 'checked' on 3 completions.")).to_be_visible()
    expect(page).to_have_url(tab.base + "/?metadata=team%3Dblue")
    assert [metadata_of(f"c{i}").get("label") for i in range(5)] == ["checked", None, "checked", None, "checked"]


def test_undo_of_a_bulk_change_leaves_one_changed_since_alone_and_names_it(tab: Tab) -> None:
    from playwright.sync_api import expect

    seed(*(completion_body(f"c{i}", created=1_700_000_000 + i, metadata={"team": "red"}) for i in range(3)))
    page = tab.page
    tab.goto("/")
    for cid in ("c0", "c1", "c2"):
        page.get_by_label(f"Select {cid}").check()
    page.locator("#bulk summary").click()
    page.get_by_label("Key", exact=True).fill("team")
    page.get_by_label("Value", exact=True).fill("green")
    page.get_by_role("button", name="Review the change…").click()
    page.get_by_role("button", name="Apply to 3 completions").click()
    expect(page.get_by_text("Set 'team' to 'green' on 3 completions.")).to_be_visible()
    with write_transaction() as session:  # a colleague relabels c1 meanwhile
        store.update_metadata(session, completion_id="c1", metadata={"team": "purple"}, actor="user:bob")
    page.get_by_role("button", name="Undo this bulk change").click()
    expect(page.get_by_text("Undid bulk change #1: 2 completions put back as before it.")).to_be_visible()
    expect(page.get_by_text("Left unchanged: c1. Changed again since the bulk change by user:bob")).to_be_visible()
    assert [metadata_of(f"c{i}")["team"] for i in range(3)] == ["red", "purple", "red"]
    tab.goto("/bulk-changes")
    expect(page.locator("#batch-1")).to_contain_text("undone by #2")
    expect(page.locator("#batch-2")).to_contain_text("Undo of #1")


MARKDOWN_REPLY = """## Steps

1. Open **Settings**
2. Run `make test`

```python
print("<b>not bold</b>")
```

| col | val |
| --- | --- |
| a   | 1   |

<script>alert(1)</script> [click me](javascript:alert(2)) ![x](x onerror=alert(3)) <img src=x onerror=alert(4)>
"""


def test_markdown_is_rendered_and_its_payloads_stay_inert(tab: Tab) -> None:
    from playwright.sync_api import expect

    seed(completion_body("md", content=MARKDOWN_REPLY, messages=[{"role": "user", "content": "שלום, **how** do I test?"}]))
    page = tab.page
    tab.goto("/completions/md")
    reply = page.locator(".choice .md")
    expect(reply.get_by_role("heading", name="Steps")).to_be_visible()
    expect(reply.locator("ol li")).to_have_count(2)
    expect(reply.locator("table td").first).to_have_text("a")
    code = reply.locator("pre.code code")
    expect(code).to_have_text('print("<b>not bold</b>")\n')
    assert "mono" in code.evaluate("el => getComputedStyle(el).fontFamily").lower() or "courier" in code.evaluate("el => getComputedStyle(el).fontFamily").lower()
    expect(reply.get_by_text("<script>alert(1)</script>", exact=False)).to_be_visible()
    assert page.locator('a[href^="javascript"]').count() == 0 and page.locator('img[src="x"]').count() == 0
    expect(page.locator(".transcript .md p").first).to_have_attribute("dir", "auto")
    page.locator(".choice details.raw summary").click()
    expect(page.locator(".choice .raw-text")).to_have_text(MARKDOWN_REPLY)


def test_previous_and_next_within_a_filter_and_back_to_the_same_list_page(tab: Tab) -> None:
    from playwright.sync_api import expect

    seed(*(completion_body(f"c{i}", created=1_700_000_000 + i, metadata={"team": "red" if i % 2 else "blue"}) for i in range(6)))
    page = tab.page
    tab.goto("/?metadata=team%3Dred")
    page.get_by_role("link", name="c5", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("c5")
    page.get_by_role("link", name="Next (older) →").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("c3")
    page.get_by_role("link", name="Next (older) →").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("c1")
    expect(page.get_by_role("link", name="Next (older) →")).to_have_count(0)
    page.get_by_role("link", name="← Previous (newer)").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("c3")
    page.get_by_role("link", name="Back to the list").click()
    expect(page).to_have_url(tab.base + "/?metadata=team%3Dred")
    assert listed(tab) == ["c5", "c3", "c1"]


def test_a_512_character_value_leaves_the_reply_column_readable(tab: Tab) -> None:
    seed(
        completion_body("wide", metadata={"note": "x" * 512, "k" * 64: "y" * 512}, content="A reply of a normal length that should stay readable."),
        completion_body("plain", created=1_700_000_001),
    )
    tab.goto("/")
    widths = tab.page.evaluate(
        "() => Array.from(document.querySelectorAll('table.completions td[data-label=\"Reply\"]')).map(td => td.getBoundingClientRect().width)"
    )
    assert min(widths) >= 180, f"the reply column is {min(widths)} px wide"
    row_height = tab.page.locator("table.completions tbody tr").first.evaluate("tr => tr.getBoundingClientRect().height")
    assert row_height < 200, f"the row is {row_height} px tall"
    assert tab.page.locator('.pair-value[title="' + "x" * 512 + '"]').count() == 1, "the whole value on hover"
    assert no_sideways_scroll(tab) <= 0


def hard_cases() -> None:
    """Completions with everything that tends to push a narrow page sideways."""
    seed(completion_body(
        "chatcmpl-" + "averyveryverylongidentifierwithoutanybreaks" * 2,
        model="a-model-name-that-is-long-2024-08-06-preview",
        metadata={"note": "x" * 512, "k" * 64: "y" * 100},
        content="| a | b | c | d | e | f |\n|---|---|---|---|---|---|\n| " + " | ".join(["averylongcellwithoutspaces"] * 6) + " |\n\n```\n" + "z" * 300 + "\n```\n\nhttps://example.com/" + "p" * 200,
        messages=[{"role": "user", "content": "u" * 400}],
    ))


@pytest.mark.parametrize("width", [320, 390])
def test_no_page_scrolls_sideways_on_a_phone(chromium: Any, server: LiveServer, width: int) -> None:
    from playwright.sync_api import expect

    hard_cases()
    with open_tab(chromium, server, viewport={"width": width, "height": 740}) as tab:
        tab.sign_in()
        for path in ("/", "/completions/chatcmpl-" + "averyveryverylongidentifierwithoutanybreaks" * 2, "/bulk-changes", "/keys"):
            tab.goto(path)
            expect(tab.page.locator("main h1")).to_be_visible()
            assert no_sideways_scroll(tab) <= 0, f"{path} scrolls sideways at {width}px: {overflowing(tab)}"


def test_select_all_on_this_page_works_on_a_phone_and_the_bulk_bar_is_in_reach(chromium: Any, server: LiveServer) -> None:
    from playwright.sync_api import expect

    seed(*(completion_body(f"c{i:02d}", created=1_700_000_000 + i) for i in range(20)))
    with open_tab(chromium, server, viewport={"width": 390, "height": 740}, has_touch=True, is_mobile=True) as tab:
        tab.sign_in()
        picker = tab.page.get_by_label("Select all on this page")
        expect(picker).to_be_visible()
        picker.tap()
        assert tab.page.locator('input[name="ids"]:checked').count() == 20
        bar = tab.page.locator(".bulk-bar")
        box = bar.bounding_box()
        assert box is not None and box["y"] + box["height"] <= 740 + 1, "the bulk bar sits in the screen while rows are below"
        bar.locator("summary").tap()
        tab.page.get_by_label("Key", exact=True).fill("seen")
        tab.page.get_by_label("Value", exact=True).fill("yes")
        tab.page.get_by_role("button", name="Review the change…").tap()
        expect(tab.page.get_by_role("heading", level=1)).to_have_text("Change 20 completions?")


def test_revoking_a_key_asks_first(tab: Tab) -> None:
    from playwright.sync_api import expect

    from .helpers import make_key

    make_key(name="ci")
    page = tab.page
    tab.goto("/keys")
    page.get_by_role("link", name="Revoke… ci").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Revoke the API key 'ci'?")
    page.get_by_role("link", name="Cancel").click()
    expect(page.locator("tr", has_text="ci")).not_to_contain_text("revoked")
    page.get_by_role("link", name="Revoke… ci").click()
    page.get_by_role("button", name="Revoke the key").click()
    expect(page.get_by_text("Revoked API key 'ci'")).to_be_visible()
    expect(page.locator("tr", has_text="ci")).to_contain_text("revoked")
