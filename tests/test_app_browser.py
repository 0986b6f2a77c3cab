"""Drive the app in headless Chromium (the system's Debian ``chromium``) with Playwright.

Loads the page, picks a vector, generates, checks both panes, exports and re-imports a spec. The page's screenshot
goes to the test's temporary folder; ``make screenshot`` (``--screenshot docs/screenshot.png``) also writes the one the
README shows: the tests never change the checkout.
"""

from __future__ import annotations

import shutil

import pytest

from tests.test_app_support import registry_copy, serve
from vectors import SteeringSpec

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TIMEOUT_MS = 600_000  # generation on a busy CPU


def test_compare_export_import_in_the_browser(browser, hf_default, tmp_path, request):
    registry = registry_copy(tmp_path / "registry", hf_default.hidden_size, hf_default.model_id)
    name = "pirate" if "pirate" in registry else registry.names()[-1]
    entry = registry.get(name)
    with serve(hf_default, registry) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        page.set_default_timeout(60_000)
        page.goto(url)
        page.locator("#generate").wait_for()
        assert page.locator("#registry-mode").inner_text().startswith("Registry: writable.")  # the mode is on the page

        # Pick the vector: layer and scale follow its suggestions.
        page.locator("#vector input").click()
        page.get_by_role("option", name=name, exact=True).click()
        layer_box = page.locator("#layer input[type=number]")
        page.wait_for_function(
            "([sel, want]) => document.querySelector(sel)?.value === want",
            arg=["#layer input[type=number]", str(entry.suggested_layer)],
        )
        assert layer_box.input_value() == str(entry.suggested_layer)
        page.locator("#prompt textarea").fill("Tell me about your weekend.")

        page.locator("#generate").click()
        for side in ("baseline", "steered"):
            page.locator(f"#{side}-stats").get_by_text("tokens ·").wait_for(timeout=TIMEOUT_MS)
            page.wait_for_function(
                "sel => !document.querySelector(sel).innerText.includes('generating')", arg=f"#{side}-stats", timeout=TIMEOUT_MS
            )
        baseline = page.locator("#baseline-output textarea").input_value()
        steered = page.locator("#steered-output textarea").input_value()
        assert baseline.strip() and steered.strip()
        assert baseline != steered
        screenshot = tmp_path / "screenshot.png"
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.read_bytes().startswith(b"\x89PNG")
        if request.config.getoption("--screenshot"):  # `make screenshot`: the README's picture
            shutil.copyfile(screenshot, request.config.getoption("--screenshot"))

        # Export the setup as a spec file and download it.
        page.get_by_role("tab", name="Spec files").click()
        page.locator("#export-spec").click()
        link = page.locator("#export-file a").first
        link.wait_for()
        with page.expect_download() as info:
            link.click()
        downloaded = tmp_path / "exported.safetensors"
        info.value.save_as(downloaded)
        spec = SteeringSpec.load(downloaded)
        assert spec.active_layers() == [entry.suggested_layer]
        assert spec.layers[entry.suggested_layer].scale == pytest.approx(entry.suggested_scale or 4.0)

        # Re-import it: the editor gets the same setup, named after the registry vector.
        page.locator("#import-file input[type=file]").set_input_files(str(downloaded))
        page.locator("#import-status").get_by_text("Imported").wait_for()
        assert spec.fingerprint()[:12] in page.locator("#import-status").inner_text()
        page.get_by_role("tab", name="Compare").click()
        assert page.locator("#steering-mode input[value=editor]").is_checked()
        editor = page.locator("#spec-editor")
        editor.scroll_into_view_if_needed()
        assert name in editor.inner_text()
        page.close()
