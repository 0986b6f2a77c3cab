"""The comparison workbench in headless Chromium (issue 18): its bug fixes and features, one app server per module.

The app runs the transformers backend on the default model with a writable copy of the shipped registry; every test
opens its own page (its own session). Screenshots go to ``tmp_path`` only.
"""

from __future__ import annotations

import re
import time

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

from app.callbacks import GENERATE_LABEL, REGISTRY_COLUMNS, RESTART_LABEL, SWEEP_COLUMNS, SWEEP_RUNNING, build_prompt
from app.chat import NO_TURN_YET
from app.scale_range import REFERENCE_PROMPTS, scale_note, scale_range
from engine import GenerationConfig
from tests.test_app_support import registry_copy, serve
from vectors import LayerSteeringSpec, ProjectionCapSpec, SteeringSpec

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TIMEOUT_MS = 600_000  # generation on a busy CPU
PIRATE_WORDS = re.compile(r"\b(arr+|matey|ye|ahoy|aye|sea|seas|ship|sail\w*|treasure|pirate\w*|captain|mermaid\w*)\b", re.I)


@pytest.fixture(scope="module")
def registry(hf_default, tmp_path_factory):
    return registry_copy(tmp_path_factory.mktemp("registry"), hf_default.hidden_size, hf_default.model_id)


@pytest.fixture(scope="module")
def url(hf_default, registry):
    if not {"pirate", "happy", "happy.activation"} <= set(registry.names()):
        pytest.skip("needs the shipped registry/smollm2 vectors")
    with serve(hf_default, registry) as address:
        yield address


def open_page(browser, url, width=1440, height=900):
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    page.set_default_timeout(240_000)  # a loaded 2-core CI machine
    page.goto(url)
    page.locator("#generate").wait_for()
    page.wait_for_function("() => document.querySelector('#vector input')?.value")  # the load event filled it
    return page


@pytest.fixture
def page(browser, url):
    page = open_page(browser, url)
    yield page
    page.close()


def pick(page, elem_id: str, name: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=name, exact=True).click()


def set_tokens(page, n: int) -> None:
    """Max new tokens (opens the sampling accordion), checked to hold before the caller clicks anything.

    The slider mounts when the accordion first opens; a value typed in that instant was seen to be reset to the default
    (CI on 2 busy cores ran 64 tokens instead of 3), so the value is typed again until the slider shows it and keeps it.
    """
    box = page.locator("#max-new-tokens input[type=number]")
    if not box.is_visible():
        page.get_by_text("Prompt options and sampling").click()
    shown = "([sel, want]) => document.querySelector(sel)?.value === want"
    for _ in range(5):
        box.fill(str(n))
        box.press("Tab")
        try:
            page.wait_for_function(shown, arg=["#max-new-tokens input[type=range]", str(n)], timeout=5_000)
        except Exception as error:  # Playwright's TimeoutError (playwright is imported only where installed)
            if type(error).__name__ != "TimeoutError":
                raise
            continue
        page.wait_for_timeout(250)  # a late re-render would reset it within this
        if page.locator("#max-new-tokens input[type=range]").input_value() == str(n) == box.input_value():
            return
    raise AssertionError(f"max new tokens did not stay at {n}")


def wait_finished(page) -> None:
    for side in ("baseline", "steered"):
        page.wait_for_function(
            "sel => { const t = document.querySelector(sel).innerText; return t.includes('tokens ·') && !t.includes('generating'); }",
            arg=f"#{side}-stats",
            timeout=TIMEOUT_MS,
        )


def wait_streaming(page) -> None:
    page.wait_for_function("() => document.querySelector('#steered-stats').innerText.includes('generating')", timeout=TIMEOUT_MS)


def pane(page, side: str) -> str:
    return page.locator(f"#{side}-output textarea").input_value()


def watch_generate_label(page) -> None:
    """Record every label the Generate button shows from now on (in ``window.labels``)."""
    # the whole page is watched: an update may replace the button's element
    page.evaluate(
        """() => {
            window.labels = [];
            window.labelWatch?.disconnect();
            window.labelWatch = new MutationObserver(() => {
                const label = document.querySelector('#generate')?.innerText.trim();
                if (label !== window.labels.at(-1)) window.labels.push(label);
            });
            window.labelWatch.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
        }"""
    )


def wait_run_done(page) -> None:
    """Wait until the run started after :func:`watch_generate_label` is over: the button said "Restart" and is back to
    "Generate", which comes after the chat views are updated (the label is the run's last follow-up)."""
    page.wait_for_function(
        "([restart, done]) => window.labels.includes(restart) && document.querySelector('#generate').innerText.trim() === done",
        arg=[RESTART_LABEL, GENERATE_LABEL],
        timeout=TIMEOUT_MS,
    )


def set_sampling(page, temperature: float, seed: int) -> None:
    """Temperature and seed (the sampling accordion is open: :func:`set_tokens` opened it)."""
    for elem_id, value in (("temperature", temperature), ("seed", seed)):
        box = page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Tab")
        page.wait_for_function(
            "([sel, want]) => Number(document.querySelector(sel).value) === want", arg=[f"#{elem_id} input[type=number]", value]
        )


def chat_messages(page, side: str) -> list[tuple[str, str]]:
    """The conversation a side's chatbot shows: (role, text) per message, in order."""
    return page.evaluate(
        """sel => [...document.querySelectorAll(sel + ' [data-testid=user], ' + sel + ' [data-testid=bot]')]
            .map(m => [m.dataset.testid, m.innerText.trim()])""",
        f"#{side}-chat",
    )


# -- bugs --------------------------------------------------------------------------------------------------------------
def test_delete_asks_first_and_deletes_the_displayed_vector(page, registry):
    vector = registry.get("angry").vector
    registry.add("doomed", vector * 2, suggested_layer=8)
    registry.add("spared", vector * 3, suggested_layer=8)
    page.get_by_role("tab", name="Registry").click()
    page.locator("#registry-refresh").click()
    page.locator("#registry-table").get_by_text("doomed", exact=True).wait_for()
    pick(page, "registry-name", "doomed")
    page.locator("#delete-vector").click()
    page.locator("#delete-question").get_by_text("Delete doomed? This cannot be undone.").wait_for()
    assert "doomed" in registry.names()  # nothing deleted before the confirmation
    page.locator("#delete-confirm").click()
    page.locator("#registry-status").get_by_text("Deleted doomed.").wait_for()
    assert "doomed" not in registry.names() and "spared" in registry.names()
    # the dropdown shows a listed vector, and the details are that vector's
    page.wait_for_function("() => document.querySelector('#registry-name input').value !== 'doomed'")
    shown = page.locator("#registry-name input").input_value()
    assert shown in registry.names()
    page.locator("#vector-details").get_by_text(shown).first.wait_for()
    registry.remove("spared")


def test_a_bad_vector_name_warns_without_error_badges(page):
    box = page.locator("#vector input")
    box.fill("nope")
    box.press("Enter")
    toast = page.locator(".toast-body").filter(has_text="vector: name: no vector 'nope'")
    toast.wait_for()
    assert "Warning" in toast.inner_text()
    # the toast and the outputs' status come from the same message: no red "Error" over Layer or Scale, still usable
    assert page.locator("#layer .error:visible, #scale .error:visible").count() == 0
    pick(page, "vector", "happy")
    page.wait_for_function("() => document.querySelector('#scale input[type=number]').value !== ''")
    assert page.locator("#layer input[type=number]").is_enabled()
    assert page.locator("#layer .error:visible, #scale .error:visible").count() == 0


def test_generate_while_streaming_restarts_the_comparison(page, hf_default):
    set_tokens(page, 40)
    page.locator("#generate").click()
    wait_streaming(page)
    assert page.locator("#generate").inner_text() == RESTART_LABEL
    second = "Name three colors."
    page.locator("#prompt textarea").fill(second)
    page.locator("#generate").click()
    wait_finished(page)
    page.wait_for_function("want => document.querySelector('#generate').innerText === want", arg=GENERATE_LABEL)
    config = GenerationConfig(max_new_tokens=40, temperature=0.0, top_p=1.0, seed=0)
    expected = hf_default.generate(build_prompt(second, "", False), config, steering=[None])[0]
    assert pane(page, "baseline") == expected.text


def test_stop_ends_the_stats_line(page, tmp_path):
    set_tokens(page, 200)
    page.locator("#generate").click()
    wait_streaming(page)
    page.evaluate(
        """() => { window.afterStop = []; new MutationObserver(() => {
                const text = document.querySelector('#steered-stats')?.innerText;
                if (text !== window.afterStop.at(-1)) window.afterStop.push(text);
            }).observe(document.body, {subtree: true, childList: true, characterData: true}); }"""
    )
    page.locator("#stop").click()
    # Stop's last step (after its final stats lines, queued behind the stream's last update) sets the label back
    page.wait_for_function(
        """want => document.querySelector('#generate').innerText.trim() === want
            && ['#baseline-stats', '#steered-stats'].every(s => document.querySelector(s).innerText.includes('stopped'))""",
        arg=GENERATE_LABEL,
        timeout=TIMEOUT_MS,
    )
    page.wait_for_timeout(1500)  # room for a late stream update: none may bring "generating…" back
    for side in ("baseline", "steered"):
        stats = page.locator(f"#{side}-stats").inner_text()
        assert "stopped" in stats and "generating" not in stats, stats
    last = page.evaluate("() => window.afterStop")
    stopped_at = next(i for i, text in enumerate(last) if "stopped" in text)
    assert not any("generating" in text for text in last[stopped_at:]), last
    assert page.locator("#generate").inner_text() == GENERATE_LABEL
    page.screenshot(path=str(tmp_path / "stopped.png"))


def test_layer_takes_whole_numbers_within_the_model(page, hf_default, url):
    top = hf_default.num_layers - 1
    box = page.locator("#layer input[type=number]")
    for typed, want in (("7.5", "8"), ("99", str(top)), ("-3", "0")):
        box.fill(typed)
        box.press("Tab")
        page.wait_for_function("w => document.querySelector('#layer input[type=number]').value === w", arg=want)
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match=re.escape(f"layer: 7.5 is not a whole number; send a whole number between 0 and {top}")):
        client.predict(prompt="Hi", vector="pirate", layer=7.5, max_new_tokens=2, api_name="/compare")
    with pytest.raises(AppError, match=re.escape(f"layer: {top + 1} is out of range; send a whole number between 0 and {top}")):
        client.predict(prompt="Hi", vector="pirate", layer=top + 1, max_new_tokens=2, api_name="/compare")


def export_and_import(page, tmp_path, vector: str) -> str:
    """Export the quick setup with ``vector``, import the file, and return the spec editor's text.

    A second call on the same page waits for this call's own link and status: the previous export's link and
    "Imported" line are still on the page until the new ones replace them."""
    pick(page, "vector", vector)
    page.get_by_role("tab", name="Spec files").click()
    links = page.locator("#export-file a")
    before = links.first.get_attribute("href") if links.count() else None
    page.locator("#export-spec").click()
    page.wait_for_function(
        "old => { const a = document.querySelector('#export-file a'); return a && a.getAttribute('href') !== old; }", arg=before
    )
    with page.expect_download() as info:
        links.first.click()
    downloaded = tmp_path / f"{vector}.safetensors"
    info.value.save_as(downloaded)
    page.locator("#import-file input[type=file]").set_input_files(str(downloaded))
    page.wait_for_function(
        "name => (document.querySelector('#import-status')?.textContent ?? '').includes(`Imported ${name}:`)",
        arg=downloaded.name,
    )
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("n => (document.querySelector('#spec-editor')?.textContent ?? '').includes(n)", arg=vector)
    return page.evaluate("() => document.querySelector('#spec-editor').textContent")


def test_spec_round_trip_keeps_vector_names(page, registry, tmp_path):
    # happy and happy.activation hold the same tensor; each comes back under the name it was exported with
    assert torch.equal(registry.get("happy").vector, registry.get("happy.activation").vector)
    assert "happy.activation" in export_and_import(page, tmp_path, "happy.activation")
    page.get_by_text("Quick: vectors").click()
    cells = export_and_import(page, tmp_path, "happy")
    assert "happy.activation" not in cells


def test_api_names_outputs_checks_inputs_and_lists_no_frozen_names(url, registry):
    client = Client(url, verbose=False)
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    labels = {name: [r["label"] for r in info["returns"]] for name, info in endpoints.items()}
    assert labels["/sweep"] == ["Sweep results"]
    assert [name for name, names in labels.items() if any(label.startswith("value_") for label in names)] == []
    for name in ("/compare", "/sweep", "/export_spec", "/vector_details", "/delete_vector"):
        vector_params = [p for p in endpoints[name]["parameters"] if p["parameter_name"] in ("vector", "name")]
        assert vector_params and all("enum" not in p["type"] for p in vector_params), name
    bad = {
        "editor": ("zz", "editor: 'zz' is not a table"),
        "temperature": ("hot", "temperature: 'hot' is not a number; send a number between 0 and 2"),
        "seed": (1.5, "seed: 1.5 is not a whole number; send a whole number"),
    }
    for field, (value, message) in bad.items():
        with pytest.raises(AppError, match=re.escape(message)):
            client.predict(prompt="Hi", vector="pirate", max_new_tokens=2, api_name="/compare", **{field: value})
    # A vector added after start-up is usable by name at once (the API page has no stale list to refuse it).
    registry.add("late", registry.get("pirate").vector, suggested_layer=8)
    try:
        assert client.predict("late", api_name="/vector_details")["name"] == "late"
    finally:
        registry.remove("late")


# -- features ---------------------------------------------------------------------------------------------------------
def test_generate_is_visible_at_1280x720_and_enter_submits(browser, url):
    page = open_page(browser, url, 1280, 720)
    box = page.locator("#generate").bounding_box()
    assert box["y"] + box["height"] <= 720
    set_tokens(page, 3)
    page.locator("#prompt textarea").press("Enter")
    wait_finished(page)
    assert pane(page, "steered")
    page.close()


def test_panes_are_stamped_with_what_produced_them(page, registry):
    pick(page, "vector", "pirate")
    page.wait_for_function("() => document.querySelector('#scale input[type=number]').value === '2'")
    set_tokens(page, 3)
    page.locator("#generate").click()
    wait_finished(page)
    entry = registry.get("pirate")
    fingerprint = SteeringSpec.single(entry.suggested_layer, entry.vector, 2.0).fingerprint()[:12]
    stamp = "greedy · seed 0 · max 3 tokens"
    assert page.locator("#baseline-stats").inner_text().splitlines()[-1] == f"unsteered · {stamp}"
    assert page.locator("#steered-stats").inner_text().splitlines()[-1] == (
        f"steered · L{entry.suggested_layer}: add pirate ×2 · spec {fingerprint} · {stamp}"
    )


def test_the_start_vector_visibly_steers(page, tmp_path):
    assert page.locator("#vector input").input_value() == "pirate"
    set_tokens(page, 24)
    page.locator("#generate").click()
    wait_finished(page)
    page.screenshot(path=str(tmp_path / "compare.png"))
    assert PIRATE_WORDS.search(pane(page, "steered")), pane(page, "steered")
    assert not PIRATE_WORDS.search(pane(page, "baseline"))


def test_registry_table_is_readable(page, tmp_path):
    page.get_by_role("tab", name="Registry").click()
    table = page.locator("#registry-table")
    table.get_by_text("pirate", exact=True).first.wait_for()
    headers = table.locator("thead th")
    texts = [t.strip() for t in headers.all_inner_texts()]
    assert [t for t in texts if t] == REGISTRY_COLUMNS
    heights = {round(h["height"]) for h in (headers.nth(i).bounding_box() for i in range(headers.count()))}
    assert len(heights) == 1 and max(heights) < 60  # one line each: no wrapped headers
    page.screenshot(path=str(tmp_path / "registry.png"))


def table_rows(page, elem_id: str, width: int) -> list[list[str]]:
    """The table's cells in the order shown (Gradio moves the cell elements when it sorts), ``width`` per row."""
    cells = page.evaluate(f"() => [...document.querySelectorAll('#{elem_id} [data-row]')].map(c => c.innerText.trim())")
    return [cells[i : i + width] for i in range(0, len(cells), width)]


def test_registry_table_sorts_by_a_column(page):
    page.get_by_role("tab", name="Registry").click()
    table = page.locator("#registry-table")
    table.get_by_text("pirate", exact=True).first.wait_for()
    width, norm = len(REGISTRY_COLUMNS), REGISTRY_COLUMNS.index("norm")
    before = table_rows(page, "registry-table", width)
    smallest = min(before, key=lambda row: float(row[norm]))[norm]
    assert before[0][norm] != smallest  # the registry's order is not already by norm
    header = table.locator("thead th:visible").nth(norm)
    header.hover()
    header.get_by_role("button", name="Open cell menu").click()
    page.get_by_role("menuitem", name="Sort ascending").click()
    page.wait_for_function(
        "([w, i, v]) => document.querySelectorAll('#registry-table [data-row]')[i]?.innerText.trim() === v",
        arg=[width, norm, smallest],
    )
    after = table_rows(page, "registry-table", width)
    assert [float(row[norm]) for row in after] == sorted(float(row[norm]) for row in before)
    assert sorted(after) == sorted(before)


def test_quick_controls_are_disabled_while_the_editor_drives(page):
    page.get_by_text("Spec editor: multi-layer").click()
    page.locator("#quick-overridden").wait_for()
    assert page.locator("#vector input").is_disabled()
    assert page.locator("#layer input[type=number]").is_disabled()
    page.get_by_text("Quick: vectors").click()
    page.locator("#quick-overridden").wait_for(state="hidden")
    assert page.locator("#vector input").is_enabled()


def test_copy_buttons_and_word_diff(page):
    set_tokens(page, 6)
    page.locator("#generate").click()
    wait_finished(page)
    for side in ("baseline", "steered"):
        assert page.locator(f"#{side}-output button[aria-label*='opy']").count() == 1
    diff = page.locator("#word-diff")
    diff.get_by_text("steered only").first.wait_for()
    shown = re.sub(r"\s+", "", diff.inner_text())
    steered_words = re.sub(r"\s+", "", pane(page, "steered"))
    assert steered_words[:10] in shown


def test_a_waiting_user_sees_waiting_for_the_model(page, url):
    client = Client(url, verbose=False)
    busy = client.submit(prompt="Tell me a long story.", vector="pirate", max_new_tokens=300, api_name="/compare")
    try:
        for _ in range(3000):  # until the other user's run streams: it holds the engine
            if busy.outputs():
                break
            time.sleep(0.2)
        assert busy.outputs(), "the other user's run never started"
        set_tokens(page, 3)
        page.locator("#generate").click()
        for side in ("baseline", "steered"):
            page.locator(f"#{side}-stats").get_by_text("waiting for the model…").wait_for()
        assert not busy.done()
    finally:
        busy.cancel()
    wait_finished(page)
    assert pane(page, "steered")


def test_sweep_grid_shows_rows_running_then_done(page):
    set_tokens(page, 12)
    page.get_by_role("tab", name="Sweep").click()
    page.locator("#sweep-scales textarea, #sweep-scales input").first.fill("-1, 1")
    page.locator("#sweep-run").click()
    cells = "[...document.querySelectorAll('#sweep-grid [data-row]')].map(c => c.textContent)"
    # the grid is there before any output, every row running; then each row ends
    page.wait_for_function(f"r => {cells}.filter(t => t.includes(r)).length >= 2", arg=SWEEP_RUNNING)
    page.wait_for_function(
        f"r => {{ const t = {cells}; return t.length >= 6 && !t.some(c => c.includes(r)); }}",
        arg=SWEEP_RUNNING,
        timeout=TIMEOUT_MS,
    )
    rows = table_rows(page, "sweep-grid", len(SWEEP_COLUMNS))
    assert [float(row[0]) for row in rows] == [-1.0, 1.0]
    assert all(int(row[1]) > 0 and row[2] for row in rows)


def test_create_form_default_layer_is_a_third_of_the_depth(page, hf_default):
    page.get_by_role("tab", name="Registry").click()
    box = page.locator("#new-layer input[type=number]")
    assert box.input_value() == str(hf_default.num_layers // 3)


def steered_stamp(page) -> str:
    return page.locator("#steered-stats").inner_text().splitlines()[-1]


def test_scale_slider_follows_the_vector_and_says_what_it_means(page, hf_default, registry):
    messages = [[{"role": "user", "content": p}] for p in REFERENCE_PROMPTS]
    residual = float(hf_default.mean_activations(messages, [8])[8].norm())  # the shipped vectors have no record
    for name in ("happy", "pirate"):  # the page starts on pirate: pick another first so that the change fires
        entry = registry.get(name)
        pick(page, "vector", name)
        note = scale_note(entry.suggested_scale, entry.norm, residual, 8)
        page.locator("#scale-note").get_by_text(note, exact=True).wait_for()
        span = scale_range(entry.norm, residual, entry.suggested_scale).span
        page.wait_for_function("s => document.querySelector('#scale input[type=number]').max === s", arg=f"{span:g}")
    assert note == "2 = about 0.51x the residual norm at layer 8"  # pirate: +-5 instead of +-20
    box = page.locator("#scale input[type=number]")
    box.fill("4")
    box.press("Tab")
    page.locator("#scale-note").get_by_text(scale_note(4.0, registry.get("pirate").norm, residual, 8), exact=True).wait_for()


def wait_stamp_or_warning(page, stamp: str) -> None:
    """Wait for the steered pane's stamp; a warning toast instead (the run was refused) fails with its message."""
    shown = page.locator("#steered-stats").get_by_text(stamp).or_(page.locator(".toast-body"))
    shown.first.wait_for(timeout=TIMEOUT_MS)
    toasts = page.locator(".toast-body").all_inner_texts()
    assert not toasts, toasts


def test_two_vector_rows_steer_together_and_one_click_removes_a_row(page, registry, tmp_path):
    assert page.locator("#quick-row-2").first.is_hidden()
    page.locator("#add-row").click()
    page.locator("#quick-row-2").first.wait_for()
    # The added row shows its own vector's layer and scale at once (angry: layer 8, 2.5), not the hidden row's 10 and
    # 1: a wait for layer 10 used to pass before formal's values arrived, and Generate then sent formal at layer 8,
    # which row 1 steers already (a warning, and no stamp ever).
    added = registry.get(page.locator("#vector-2 input").input_value())
    page.wait_for_function(
        "w => document.querySelector('#layer-2 input[type=number]').value === w", arg=str(added.suggested_layer)
    )
    pick(page, "vector-2", "formal")
    page.locator("#scale-note-2").get_by_text("at layer 10").wait_for()  # formal's own note: its values arrived
    assert page.locator("#layer-2 input[type=number]").input_value() == "10"
    assert page.locator("#scale-2 input[type=number]").input_value() == "2.5"
    set_tokens(page, 3)
    page.locator("#generate").click()
    both = SteeringSpec(
        {8: LayerSteeringSpec(registry.get("pirate").vector, 2.0), 10: LayerSteeringSpec(registry.get("formal").vector, 2.5)}
    )
    stamp = f"steered · L8: add pirate ×2; L10: add formal ×2.5 · spec {both.fingerprint()[:12]} · greedy · seed 0 · max 3 tokens"
    wait_stamp_or_warning(page, stamp)
    page.screenshot(path=str(tmp_path / "two-rows.png"))
    page.locator("#remove-row-2").click()
    page.locator("#quick-row-2").first.wait_for(state="hidden")
    page.locator("#generate").click()
    one = SteeringSpec.single(8, registry.get("pirate").vector, 2.0).fingerprint()[:12]
    page.locator("#steered-stats").get_by_text(f"L8: add pirate ×2 · spec {one}").wait_for(timeout=TIMEOUT_MS)


def test_multi_turn_chat_keeps_each_sides_own_history(page, hf_default, registry, tmp_path):
    page.locator("#chat-mode input").check()
    page.locator("#conversation").wait_for()
    set_tokens(page, 8)
    page.locator("#prompt textarea").fill("Hi! Who are you?")
    page.locator("#generate").click()
    messages = "sel => document.querySelectorAll(sel + ' [data-testid=bot]').length"
    page.wait_for_function(f"sel => ({messages})(sel) === 1", arg="#steered-chat", timeout=TIMEOUT_MS)
    first = {side: pane(page, side) for side in ("baseline", "steered")}
    page.locator("#prompt textarea").fill("Tell me more.")
    page.locator("#generate").click()
    page.wait_for_function(f"sel => ({messages})(sel) === 2", arg="#steered-chat", timeout=TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "chat.png"))
    config = GenerationConfig(max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0)
    spec = SteeringSpec.single(8, registry.get("pirate").vector, 2.0)
    for side, steering in (("baseline", [None]), ("steered", spec)):
        conversation = [
            {"role": "user", "content": "Hi! Who are you?"},
            {"role": "assistant", "content": first[side]},
            {"role": "user", "content": "Tell me more."},
        ]
        assert pane(page, side) == hf_default.generate(conversation, config, steering=steering)[0].text, side
    page.locator("#new-chat").click()
    page.wait_for_function(f"sel => ({messages})(sel) === 0", arg="#steered-chat")
    assert pane(page, "steered") == ""


def test_regenerate_runs_the_last_turn_again(page, hf_default, registry, tmp_path):
    page.locator("#chat-mode input").check()
    page.locator("#regenerate").wait_for()
    set_tokens(page, 6)
    watch_generate_label(page)
    page.locator("#regenerate").click()  # no turn yet: a warning that says what to do
    page.locator(".toast-body").filter(has_text=NO_TURN_YET).wait_for()
    wait_run_done(page)  # its follow-ups are over too: a late label must not end the next wait early
    opening = {}
    for prompt in ("Hi! Who are you?", "Tell me more."):
        page.locator("#prompt textarea").fill(prompt)
        watch_generate_label(page)
        page.locator("#generate").click()
        wait_run_done(page)
        opening = opening or {side: pane(page, side) for side in ("baseline", "steered")}  # the first turn's replies
    first = {side: chat_messages(page, side) for side in ("baseline", "steered")}
    assert [role for role, _ in first["steered"]] == ["user", "bot"] * 2
    replies = {side: pane(page, side) for side in ("baseline", "steered")}
    # greedy: the same last turn again, and still two turns
    watch_generate_label(page)
    page.locator("#regenerate").click()
    wait_run_done(page)
    assert {side: chat_messages(page, side) for side in ("baseline", "steered")} == first
    assert {side: pane(page, side) for side in ("baseline", "steered")} == replies
    # sampling with another seed: a new last turn; the first turn stays
    set_sampling(page, 1.0, 2)  # (seed 1 happens to draw the greedy steered reply again)
    watch_generate_label(page)
    page.locator("#regenerate").click()
    wait_run_done(page)
    page.screenshot(path=str(tmp_path / "regenerated.png"))
    config = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=1.0, seed=2, seeds=[2, 2])
    spec = SteeringSpec.single(8, registry.get("pirate").vector, 2.0)
    conversations = [
        [
            {"role": "user", "content": "Hi! Who are you?"},
            {"role": "assistant", "content": opening[side]},
            {"role": "user", "content": "Tell me more."},
        ]
        for side in ("baseline", "steered")
    ]
    expected = hf_default.generate(conversations, config, steering=[None, spec])  # the same batch as the page's
    assert (pane(page, "baseline"), pane(page, "steered")) == (expected[0].text, expected[1].text)
    assert expected[1].text != replies["steered"]  # the seed changed the steered reply
    steered_chat = chat_messages(page, "steered")
    assert steered_chat[:3] == first["steered"][:3] and steered_chat[3] != first["steered"][3]
    assert chat_messages(page, "baseline")[:3] == first["baseline"][:3]
    assert [role for role, _ in steered_chat] == ["user", "bot"] * 2


def test_a_cap_leaves_the_first_token_unsteered_by_default(page, registry, tmp_path):
    assert page.locator("#skip-first-tokens input").input_value() == "0"  # add-only: every token steered
    pirate = registry.get("pirate").vector
    cap = SteeringSpec({8: LayerSteeringSpec(projection_cap=ProjectionCapSpec(pirate, -20.0, 20.0))})
    page.get_by_role("tab", name="Spec files").click()
    page.locator("#import-file input[type=file]").set_input_files(str(cap.save(tmp_path / "cap.safetensors")))
    page.locator("#import-status").get_by_text("Imported").wait_for()
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("() => document.querySelector('#skip-first-tokens input').value === '1'")
    set_tokens(page, 3)
    page.locator("#generate").click()
    skipped = SteeringSpec(cap.layers, skip_first_tokens=1).fingerprint()[:12]
    stamp = f"L8: cap pirate [-20, 20] · first 1 token unsteered · spec {skipped}"
    page.locator("#steered-stats").get_by_text(stamp).wait_for(timeout=TIMEOUT_MS)


def test_projection_view_plots_the_engines_trace_and_marks_clamped_tokens(page, hf_default, registry, tmp_path):
    pirate = registry.get("pirate").vector
    # a cap that clamps some of the completion's tokens at layer 8 (pirate projections of plain text run about -20 to
    # -40); the page leaves token 0 unsteered by default for a cap
    cap = SteeringSpec({8: LayerSteeringSpec(projection_cap=ProjectionCapSpec(pirate, -30.0, 30.0))})
    page.get_by_role("tab", name="Spec files").click()
    page.locator("#import-file input[type=file]").set_input_files(str(cap.save(tmp_path / "cap.safetensors")))
    page.locator("#import-status").get_by_text("Imported").wait_for()
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("() => document.querySelector('#skip-first-tokens input').value === '1'")
    set_tokens(page, 8)
    watch_generate_label(page)
    page.locator("#generate").click()
    wait_run_done(page)
    steered = pane(page, "steered")
    page.get_by_text("Where did steering act?").click()
    page.locator("#projection-trace").click()
    page.locator("#projection-plot svg g.token").first.wait_for(timeout=TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "projection.png"), full_page=True)
    shown = page.evaluate(
        """() => [...document.querySelectorAll('#projection-plot svg g.token')].map(g => [
            Number(g.dataset.index), g.dataset.token, g.dataset.pre, g.dataset.post, g.dataset.clamped === '1',
            g.querySelector('circle.clamped') !== null])"""
    )
    spec = SteeringSpec(cap.layers, skip_first_tokens=1)
    trace = hf_default.trace_projection(build_prompt("Tell me about your weekend.", "", False), steered, spec)
    completion = range(trace.prompt_len, len(trace.token_ids))
    assert shown == [
        [i, trace.tokens[i], f"{trace.pre[i]:.6g}", f"{trace.post[i]:.6g}", trace.clamped[i], trace.clamped[i]]
        for i in completion
    ]
    clamped = sum(trace.clamped[i] for i in completion)
    assert clamped > 0  # the cap acted: the marks are tested on real clamps
    summary = page.locator("#projection-plot .projection-summary").inner_text()
    assert f"the cap [-30, 30] clamped {clamped} of them" in summary and spec.fingerprint()[:12] in summary
