"""The operator console in a real browser (Debian's headless Chromium through Playwright),
against a gateway in this process with a fake upstream and evidence put into its shadow
evaluator's evidence store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect
from pydantic import SecretStr

from adapters.registry import AdapterEntry
from gateway.settings import Settings
from loadtests.browser import chromium
from loadtests.console_demo import InProcessGateway, add_evidence, in_process_gateway
from router.taxonomy import load_taxonomy
from tests.unit.conftest import make_adapter_dir
from tests.unit.fakes import FakeVllm

pytestmark = pytest.mark.browser

TOKEN = "console-admin-token"
DOMAINS = sorted(load_taxonomy(None).ids)
# 16 pairs: enough for the anytime-valid gate (router/gate.py) to decide either way.
WORSE = [(0.0, 1.0), (0.1, 0.9), (0.0, 0.8), (0.2, 1.0)] * 4  # adapter far below general
BETTER = [(1.0, 0.0), (0.9, 0.1), (0.8, 0.0), (1.0, 0.2)] * 4


def shown_delta(pairs: list[tuple[float, float]]) -> str:
    """The mean delta as the page writes it (three places, a real minus sign)."""
    mean = sum(a - b for a, b in pairs) / len(pairs)
    return f"{mean:+.3f}".replace("-", "\u2212")


def console_settings(root: Path, **update: object) -> Settings:
    """An adapter for every domain but physics (which the general model serves)."""
    entries = [AdapterEntry(name=f"{d}-lora", domain=d, path=make_adapter_dir(root, d))
               for d in DOMAINS if d != "physics"]
    settings = Settings(
        upstream={"urls": ["http://vllm-a:8000"], "health_interval_s": 3600},
        routing={"classifier": False},
        adapters={"manifest": None, "allowed_dirs": [root], "entries": entries},
        shadow={"min_samples": 4, "window": 8, "store": root / "pairs.jsonl"},
        console={"refresh_s": 0.3, "snapshot_interval_s": 1},
    )
    return settings.model_copy(update=update)


@pytest.fixture
def browser() -> Iterator[BrowserContext]:
    with chromium() as context:
        yield context


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[InProcessGateway]:
    # No suite items: the evaluator scores nothing itself, so the evidence is the test's.
    with in_process_gateway(console_settings(tmp_path / "adapters"),
                            transport=FakeVllm().transport(), shadow_items=[]) as server:
        yield server


def open_console(browser: BrowserContext, url: str) -> tuple[Page, list[str]]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{url}/ui/")
    return page, errors


def test_every_domain_is_shown_with_its_gate_state_and_a_chart(
    gateway: InProcessGateway, browser: BrowserContext
) -> None:
    gateway.call(add_evidence("legal", BETTER))
    page, errors = open_console(browser, gateway.url)
    # A CSS wait: wait_for_function evaluates a string, which the console's CSP forbids.
    page.wait_for_selector("body[data-updated]")
    for domain in DOMAINS:
        box = page.locator(f'article.domain[data-domain="{domain}"]')
        expected = "no adapter" if domain == "physics" else "open"
        expect(box.locator(".gate")).to_have_text(expected)
        canvas = box.locator("canvas[data-chart=traffic]")
        # A chart was drawn on it (Chart.js owns the canvas) and it has a size on the page.
        assert canvas.evaluate("c => Chart.getChart(c) !== undefined && c.width > 0")
    assert page.locator("#chart-delta").evaluate(
        "c => Chart.getChart(c).data.labels.some(l => l.startsWith('legal (n=16)'))")
    expect(page.locator('article[data-domain="legal"] .facts')).to_contain_text(shown_delta(BETTER))
    assert errors == []


def test_the_page_follows_the_evidence_without_a_reload(
    gateway: InProcessGateway, browser: BrowserContext
) -> None:
    page, errors = open_console(browser, gateway.url)
    legal = page.locator('article.domain[data-domain="legal"]')
    expect(legal.locator(".facts")).to_contain_text("none yet")
    expect(legal).to_have_attribute("data-gate", "open")

    # Evidence arrives that the adapter is worse: the gate closes and the page says so.
    assert gateway.call(add_evidence("legal", WORSE)) == frozenset({"legal"})
    expect(legal.locator(".facts")).to_contain_text("samples16", timeout=5000)
    expect(legal).to_have_attribute("data-gate", "closed", timeout=5000)
    expect(legal.locator(".gate")).to_have_text("closed")
    expect(legal.locator(".facts")).to_contain_text(shown_delta(WORSE))

    # Fixed: a fresh recovery sequence shows it better than general, the gate reopens (the
    # anytime-valid gate reopens only on evidence of better, so it does not flap).
    assert gateway.call(add_evidence("legal", BETTER)) == frozenset()
    expect(legal).to_have_attribute("data-gate", "open", timeout=5000)
    assert errors == []


def test_a_closed_gate_shows_as_closed(gateway: InProcessGateway,
                                       browser: BrowserContext) -> None:
    gateway.call(add_evidence("finance", WORSE))
    # Traffic for the closed domain goes to the general model: a quality_gate fallback.
    assert gateway.gateway.gate_state("finance") == "closed"
    for _ in range(3):
        httpx.post(f"{gateway.url}/v1/chat/completions", json={
            "model": "finance", "messages": [{"role": "user", "content": "hi"}]}).raise_for_status()
    page, errors = open_console(browser, gateway.url)
    finance = page.locator('article.domain[data-domain="finance"]')
    expect(finance).to_have_attribute("data-gate", "closed")
    expect(finance.locator(".gate")).to_have_text("closed")
    expect(finance.locator(".facts")).to_contain_text("quality_gate 3")
    assert page.locator("#chart-delta").evaluate(
        "c => Chart.getChart(c).data.labels.includes('finance (n=16) · GATE CLOSED')")
    assert page.locator("#chart-fallbacks").evaluate(
        "c => Chart.getChart(c).data.labels.includes('quality_gate')")
    expect(page.locator("#summary")).to_contain_text("1 / 13")
    assert errors == []


def test_the_token_prompt_refuses_a_wrong_token_and_accepts_the_right_one(
    tmp_path: Path, browser: BrowserContext
) -> None:
    sent: list[tuple[str, str | None]] = []
    with in_process_gateway(console_settings(tmp_path / "adapters",
                                              admin_token=SecretStr(TOKEN)),
                            transport=FakeVllm().transport(), shadow_items=[]) as gateway:
        page, errors = open_console(browser, gateway.url)
        page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#console")).to_be_hidden()

        page.fill("#token", "not-the-token")
        page.click("#login-form button")
        expect(page.locator("#login-error")).to_have_text("That token was not accepted.")
        expect(page.locator("#console")).to_be_hidden()

        page.fill("#token", TOKEN)
        page.click("#login-form button")
        expect(page.locator("#console")).to_be_visible()
        expect(page.locator("article.domain")).to_have_count(len(DOMAINS))
        assert page.evaluate("sessionStorage.getItem('slm-console-token')") == TOKEN

    assert (f"{gateway.url}/ui/api/state", f"Bearer {TOKEN}") in sent
    assert not [url for url, _ in sent if TOKEN in url]  # never in a URL
    assert [e for e in errors if "401" not in e] == []  # the browser logs the refused fetch
