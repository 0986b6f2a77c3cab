"""The browser path of ``python -m bench ui``: the app's Compare in headless Chromium, timed in the page itself.

Debian's ``chromium`` driven by Playwright, with the flags the browser tests use (tests/conftest.py). Each call opens
a fresh page (empty panes), waits until the page shows the wanted vector, layer, scale and token count (a slider that
does not show the vector's default within :data:`SETTLE_TIMEOUT_MS` gets the value typed in), then clicks Generate. A
script in the page stamps ``performance.now()`` at the click (a capture listener on the button), when each pane's
textarea first holds text, and when both stats lines say the run ended; it polls the DOM every :data:`POLL_MS` ms (a
textarea's value changes without a DOM mutation), so page times have that resolution. The poll reads ``value`` and
``textContent`` only, which force no layout: the page's own rendering is what gets measured.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "DONE", "POLL_MS", "BrowserPath", "tokens_in"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [  # the browser tests (tests/conftest.py) launch it with these too
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
POLL_MS = 5
PREPARE_TIMEOUT_MS = 120_000  # loading the page and setting the controls (the run itself gets timeout_s)
SETTLE_TIMEOUT_MS = 20_000  # a slider not showing the vector's default by then gets the value typed in
SIDES = ("baseline", "steered")
SHOWN = {"vector": "", "layer": "[type=number]", "scale": "[type=number]"}  # the quick setup's inputs, by elem_id
# A pane's stats line once its row ended (app.sides.Pane.stats): "64 tokens · 9.1 s · 7.0 tok/s · hit max tokens".
DONE = r"\d+ tokens · .* · (hit max tokens|finished)"

_INSTRUMENT = """([sides, done, pollMs]) => {
  const state = {t0: null, first: {}, done: null};
  window.__bench = state;
  document.querySelector('#generate').addEventListener('click', () => { if (state.t0 === null) state.t0 = performance.now(); },
    {capture: true});
  const ended = new RegExp(done);
  const timer = setInterval(() => {
    if (state.t0 === null) return;
    const now = performance.now() - state.t0;
    for (const side of sides) {
      if (state.first[side] === undefined && document.querySelector(`#${side}-output textarea`).value.length) state.first[side] = now;
    }
    if (sides.every(s => ended.test(document.querySelector(`#${s}-stats`).textContent))) { state.done = now; clearInterval(timer); }
  }, pollMs);
}"""


def tokens_in(stats: str) -> int:
    """The token count a pane's stats line states (``"64 tokens · ..."`` -> 64).

    Raises:
        ValueError: The line states no token count.
    """
    match = re.search(r"(\d+) tokens", stats)
    if match is None:
        raise ValueError(f"stats line {stats!r:.120} states no token count")
    return int(match.group(1))


class BrowserPath:
    """One headless Chromium for the whole run; :meth:`compare` times one Compare on a fresh page.

    Args:
        url: The app's address.
        vector, layer, scale: The quick setup the page must show before Generate (the vector's defaults).
        tokens: Max new tokens per pane.
        timeout_s: Longest wait for the page, the setup and the run.
    """

    def __init__(self, url: str, vector: str, layer: int, scale: float, tokens: int, timeout_s: float = 600.0) -> None:
        from playwright.sync_api import sync_playwright

        if not Path(CHROMIUM).exists():
            raise RuntimeError(f"browser path: no chromium at {CHROMIUM} (apt-get install chromium), or leave out 'browser'")
        self.url, self.vector, self.layer, self.scale, self.tokens = url, vector, layer, scale, tokens
        self.timeout_ms = timeout_s * 1000
        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)

    def _prepare(self, page: Any) -> None:
        """Load the page and bring the quick setup and the token count to the wanted values."""
        page.set_default_timeout(PREPARE_TIMEOUT_MS)
        page.goto(self.url)
        page.locator("#generate").wait_for()
        shown = page.locator("#vector input").input_value()
        if shown != self.vector:
            page.locator("#vector input").click()
            page.get_by_role("option", name=self.vector, exact=True).click()
        for elem_id, want in (("layer", float(self.layer)), ("scale", float(self.scale))):
            self._settle(page, elem_id, want)
        box = page.locator("#max-new-tokens input[type=number]")
        if not box.count():  # inside a closed accordion, which Gradio renders only once opened
            page.get_by_text("Prompt options and sampling").click()
        if box.input_value() != str(self.tokens):
            box.fill(str(self.tokens))
            box.press("Tab")
            page.wait_for_function(
                "([sel, want]) => document.querySelector(sel)?.value === want",
                arg=["#max-new-tokens input[type=number]", str(self.tokens)],
                polling=100,
            )

    def _settle(self, page: Any, elem_id: str, want: float) -> None:
        """Wait until slider ``elem_id`` shows ``want`` (the vector's default); type it in when the page does not.

        Raises:
            RuntimeError: The slider still shows another value after :data:`PREPARE_TIMEOUT_MS`; names what the page
                shows.
        """
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        sel = f"#{elem_id} input[type=number]"
        check = "([sel, want]) => Number(document.querySelector(sel)?.value) === want"
        try:
            page.wait_for_function(check, arg=[sel, want], polling=100, timeout=SETTLE_TIMEOUT_MS)
            return
        except PlaywrightTimeout:
            pass
        box = page.locator(sel)
        box.fill(f"{want:g}")
        box.press("Tab")
        try:
            page.wait_for_function(check, arg=[sel, want], polling=100)
        except PlaywrightTimeout:
            shown = {name: page.locator(f"#{name} input{kind}").input_value() for name, kind in SHOWN.items()}
            raise RuntimeError(
                f"browser path: the page's {elem_id} stays {shown[elem_id]!r}, not {want:g}, after typing it in "
                f"(the page shows {shown}); see the app log"
            ) from None

    def compare(self, meter: Any) -> dict[str, Any]:
        """Click Generate on a fresh page; times are seconds from the click, as the page saw them.

        Args:
            meter: Its ``start()`` and ``stop()`` are called right before the click and once the run ended.

        Returns:
            ``ttft_s`` (per pane: the first text in its textarea), ``total_s`` (both stats lines ended), ``texts``
            and ``tokens`` (from the stats lines).
        """
        page = self.browser.new_page(viewport={"width": 1440, "height": 900})
        try:
            self._prepare(page)
            page.evaluate(_INSTRUMENT, [list(SIDES), DONE, POLL_MS])
            meter.start()
            page.locator("#generate").click()
            page.wait_for_function("() => window.__bench.done !== null", polling=100, timeout=self.timeout_ms)
            meter.stop()
            state = page.evaluate("() => window.__bench")
            texts = [page.locator(f"#{side}-output textarea").input_value() for side in SIDES]
            stats = [page.locator(f"#{side}-stats").inner_text() for side in SIDES]
        finally:
            page.close()
        return {
            "ttft_s": [state["first"][side] / 1000 for side in SIDES],
            "total_s": state["done"] / 1000,
            "texts": texts,
            "tokens": [tokens_in(s) for s in stats],
        }

    def close(self) -> None:
        self.browser.close()
        self._playwright.stop()
