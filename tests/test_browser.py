"""The browser client in a real Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from roomcast.runtime.server import RoomcastServer
from roomcast.testing import TEST_ADMIN_TOKEN, running_server
from tests.cluster import RedisServer, needs_redis
from tests.helpers import Client, free_port, timeout

CHROMIUM = os.environ.get("ROOMCAST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: CI must run the browser tests", pytrace=False)
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

WAIT_MS = timeout(10) * 1000
ERRORS: dict[Page, list[str]] = {}  # uncaught page errors and dialogs, per page


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


async def new_page(browser: Browser, **options: Any) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(**options)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))
    ERRORS[page] = errors
    return context, page


async def join(page: Page, base: str, room: str, name: str) -> None:
    await page.goto(f"{base}/?room={room}")
    await page.fill("#name", name)
    await page.click("#join button")
    await expect(page.locator("#status")).to_have_text("live", timeout=WAIT_MS)


async def ask(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


def column(page: Page, name: str) -> Any:
    return page.locator(f"#col-{name} li.message .text")


def http_base(server: RoomcastServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def test_participants_and_host_see_the_same_room(browser: Browser) -> None:
    """Two participants and a host: same order everywhere; 3 votes -> Medium, 10 -> High;
    the host gets the alert; marking it answered shows everywhere."""
    async with running_server() as server:
        base = http_base(server)
        _, ann = await new_page(browser)
        _, bob = await new_page(browser, viewport={"width": 390, "height": 800})  # a phone
        _, host = await new_page(browser)
        await join(ann, base, "2", "Ann")
        await join(bob, base, "2", "Bob")
        await host.goto(f"{base}/admin?room=2")
        await host.fill("#token", TEST_ADMIN_TOKEN)
        await host.click("#login button")
        await expect(host.locator("#status")).to_have_text("live", timeout=WAIT_MS)

        questions = ["What is a WebSocket?", "Why not HTTP polling?", "How does it scale?"]
        await ask(ann, questions[0])
        await ask(bob, questions[1])
        await ask(ann, questions[2])
        for page in (ann, bob):
            await expect(column(page, "all")).to_have_text(questions, timeout=WAIT_MS)
        await expect(column(host, "all")).to_have_text(questions, timeout=WAIT_MS)

        # Votes: Ann and Bob click, eight more people vote from their own clients.
        target = ann.locator("#col-all li.message", has_text=questions[1])
        await target.locator("button.vote").click()
        await expect(target.locator("button.vote")).to_have_attribute("aria-pressed", "true")
        await (
            bob.locator("#col-all li.message", has_text=questions[1]).locator("button.vote").click()
        )
        chat_id = await target.get_attribute("data-chat-id")
        assert chat_id is not None
        voters = [await Client.connect(server.url) for _ in range(8)]
        for i, voter in enumerate(voters):
            await voter.join("2", f"voter{i}")
            await voter.send("UPVOTE_MESSAGE", userId=f"voter{i}", roomId="2", chatId=chat_id)
            if i == 0:  # 3 votes
                for page in (ann, bob):
                    await expect(column(page, "medium")).to_have_text(
                        [questions[1]], timeout=WAIT_MS
                    )
                    await expect(column(page, "high")).to_have_count(0)
        for page in (ann, bob):
            await expect(column(page, "high")).to_have_text([questions[1]], timeout=WAIT_MS)
            await expect(column(page, "medium")).to_have_count(0)
        banner = host.locator("#alert-banner")
        await expect(banner).to_be_visible(timeout=WAIT_MS)
        await expect(banner).to_contain_text(questions[1])
        await expect(column(host, "high")).to_have_text([questions[1]])

        await (
            host.locator("#col-high li.message").get_by_role("button", name="Mark answered").click()
        )
        for page in (ann, bob):
            answered = page.locator("#col-all li.message", has_text=questions[1])
            await expect(answered.locator(".answered-badge")).to_have_text(
                "Answered", timeout=WAIT_MS
            )
        await expect(column(host, "high")).to_have_count(0, timeout=WAIT_MS)
        for voter in voters:
            await voter.close()
        for page in (ann, bob, host):
            assert ERRORS[page] == []


async def test_html_and_script_are_shown_as_text(browser: Browser) -> None:
    """Messages holding HTML and script are displayed literally and run nothing."""
    async with running_server() as server:
        _, page = await new_page(browser)
        await join(page, http_base(server), "x", "<b>Mallory</b>")
        payloads = [
            '<img src=x onerror="window.__pwned = 1">',
            "<script>window.__pwned = 2</script>",
            '"><svg onload="window.__pwned = 3">',
        ]
        for text in payloads:
            await ask(page, text)
        await expect(column(page, "all")).to_have_text(payloads, timeout=WAIT_MS)
        await expect(page.locator("#col-all .author").first).to_have_text("<b>Mallory</b>")
        assert await page.locator("#col-all img, #col-all script, #col-all svg").count() == 0
        assert await page.evaluate("window.__pwned") is None
        assert ERRORS[page] == []


async def test_inline_script_is_forbidden_by_csp(browser: Browser, server: RoomcastServer) -> None:
    """The page's Content-Security-Policy forbids inline script."""
    _, page = await new_page(browser)
    response = await page.goto(http_base(server) + "/")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    ran = await page.evaluate(
        """() => new Promise((resolve) => {
            const s = document.createElement("script");
            s.textContent = "window.__inline = true";
            document.addEventListener("securitypolicyviolation", () => resolve(false));
            document.body.append(s);
            setTimeout(() => resolve(window.__inline === true), 300);
        })"""
    )
    assert ran is False


async def test_reconnects_and_resumes_after_a_restart(browser: Browser, tmp_path: Path) -> None:
    """The server stops for a few seconds while another client keeps posting: the page
    shows "reconnecting", comes back by itself and ends with every message once, in
    order; a message typed while the server was down is posted once after it returns."""
    port = free_port()
    store = f"sqlite:///{tmp_path}/rooms.db"
    posted: list[str] = []

    async def poster(url: str, start: int, count: int) -> None:
        client = await Client.connect(url)
        await client.join("r", "poster", "Poster")
        for n in range(start, start + count):
            text = f"msg {n:03d}"
            await client.send(
                "SEND_MESSAGE", userId="poster", roomId="r", message=text, clientMsgId=text
            )
            await client.expect("ADD_CHAT")
            posted.append(text)
            await asyncio.sleep(0.02)
        await client.close()

    _, page = await new_page(browser)
    async with running_server(store=store, port=port) as server:
        await join(page, http_base(server), "r", "Reader")
        await poster(server.url, 0, 20)
        await expect(column(page, "all")).to_have_count(20, timeout=WAIT_MS)
    await expect(page.locator("#status")).to_have_text(re.compile("reconnecting"), timeout=WAIT_MS)
    await ask(page, "typed while down")
    await asyncio.sleep(3)
    async with running_server(store=store, port=port) as server:
        # While the page is still waiting to reconnect, more messages arrive.
        await poster(server.url, 20, 20)
        await expect(page.locator("#status")).to_have_text("live", timeout=timeout(40) * 1000)
        await poster(server.url, 40, 10)
        expected = [*posted, "typed while down"]
        texts = column(page, "all")
        await expect(texts).to_have_count(51, timeout=WAIT_MS)
        shown = await texts.all_text_contents()
        assert sorted(shown) == sorted(expected)  # every message exactly once
        assert [t for t in shown if t.startswith("msg")] == posted  # in order
        history = await (await Client.connect(server.url)).join("r", "check")
        assert [m["message"] for m in history["messages"]].count("typed while down") == 1
    assert ERRORS[page] == []


async def test_cooldown_countdown_and_error_notices(browser: Browser) -> None:
    """Slow mode shows a countdown on the send button; refusals show readable notices."""
    async with running_server() as server:
        admin = await Client.connect(server.url + f"?token={TEST_ADMIN_TOKEN}")
        await admin.send("CREATE_ROOM", roomId="slow", name="Slow room", cooldownSeconds=30)
        await admin.expect("ROOM_CREATED")
        _, page = await new_page(browser)
        await join(page, http_base(server), "slow", "Ann")
        await expect(page.locator("#title")).to_have_text("Slow room")
        await expect(page.locator("#slow")).to_have_text("Slow mode: 30 s")
        await ask(page, "first")
        send = page.locator("#send")
        await expect(send).to_have_text(re.compile(r"Send \(\d+ s\)"), timeout=WAIT_MS)
        await expect(send).to_be_disabled()
        await admin.send("UPDATE_ROOM", roomId="slow", isOpen=False)
        await expect(page.locator("#state")).to_have_text("Closed (read-only)", timeout=WAIT_MS)
        await page.locator("#col-all button.vote").click()
        notice = page.locator("#notices .notice")
        await expect(notice.first).to_contain_text("This room is closed", timeout=WAIT_MS)
        await admin.close()


async def test_reference_page_works_unchanged_between_two_tabs(browser: Browser) -> None:
    """A page written like the reference app's (echo-protocol, numeric userId, room "2",
    sendUpvote(<chatId>) in onclick), served from another local port, works unchanged."""
    page_html = (Path(__file__).parent / "fixtures" / "reference-page.html").read_bytes()

    async def serve_page(request: web.Request) -> web.Response:
        return web.Response(body=page_html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", serve_page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    page_port = runner.addresses[0][1]
    try:
        async with running_server() as server:
            url = f"http://localhost:{page_port}/?server=localhost:{server.port}"
            _, tab1 = await new_page(browser)
            _, tab2 = await new_page(browser)
            for tab in (tab1, tab2):
                await tab.goto(url)
                await expect(tab.locator("#inputtext")).to_be_visible()
            await asyncio.sleep(0.3)  # let both join
            await tab1.fill("#inputtext", "hello from tab 1")
            await tab1.click("#send")
            line = tab2.locator("#messages p", has_text="hello from tab 1")
            await expect(line).to_be_visible(timeout=WAIT_MS)
            await line.get_by_role("button", name="upvote").click()
            await expect(tab1.locator("#messages p .votes")).to_have_text("1", timeout=WAIT_MS)
            await expect(line.locator(".votes")).to_have_text("1")
            for tab in (tab1, tab2):
                assert ERRORS[tab] == []
    finally:
        await runner.cleanup()


@needs_redis
async def test_one_room_over_two_nodes_in_the_browser(browser: Browser, tmp_path: Path) -> None:
    """Two people on two nodes sharing a Redis talk in one room; when that Redis restarts
    empty, each page says messages could not be recovered, and the room goes on."""
    redis = RedisServer(tmp_path / "redis").start()
    try:
        async with (
            running_server(store=redis.url, redis_prefix="page:") as a,
            running_server(store=redis.url, redis_prefix="page:") as b,
        ):
            _, ann = await new_page(browser)
            _, bob = await new_page(browser)
            await join(ann, http_base(a), "lecture", "Ann")
            await join(bob, http_base(b), "lecture", "Bob")
            await ask(ann, "from node A")
            await expect(column(bob, "all")).to_have_text(["from node A"], timeout=WAIT_MS)
            await ask(bob, "from node B")
            await expect(column(ann, "all")).to_have_text(
                ["from node A", "from node B"], timeout=WAIT_MS
            )
            redis.restart()  # no persistence: the room's history is gone
            for page in (ann, bob):
                await expect(page.locator("#notices")).to_contain_text(
                    "could not be recovered", timeout=timeout(20) * 1000
                )
                await expect(column(page, "all")).to_have_count(0, timeout=WAIT_MS)
            await ask(bob, "after the restart")
            await expect(column(ann, "all")).to_have_text(["after the restart"], timeout=WAIT_MS)
        assert ERRORS[ann] == []
        assert ERRORS[bob] == []
    finally:
        redis.stop()
