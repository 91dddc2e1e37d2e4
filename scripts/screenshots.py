"""Take the README's screenshots of the participant and host pages.

    .venv/bin/python scripts/screenshots.py   # writes docs/screenshot-*.png

Starts a server on a free port with the memory store, fills a room with questions and
votes, and photographs both pages in Debian's Chromium.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import websockets
from playwright.async_api import async_playwright

from roomcast.testing import TEST_ADMIN_TOKEN, running_server

DOCS = Path(__file__).resolve().parent.parent / "docs"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
QUESTIONS = [
    ("Priya", "Why does the server push instead of the browser polling?", 12),
    ("Tom", "What happens to my messages if the Wi-Fi drops for a minute?", 4),
    ("Lena", "How many people can one server hold?", 3),
    ("Sam", "Is the WebSocket handshake just HTTP?", 1),
    ("Ana", "Can two servers share one room?", 0),
]


async def main() -> None:
    async with running_server() as server:
        url = server.url
        async with websockets.connect(url + f"?token={TEST_ADMIN_TOKEN}") as admin:
            await admin.send(
                json.dumps(
                    {
                        "type": "CREATE_ROOM",
                        "payload": {
                            "roomId": "physics",
                            "name": "Networks 101 — live Q&A",
                            "cooldownSeconds": 10,
                        },
                    }
                )
            )
            await admin.recv()
        chat_ids = []
        for i, (name, text, _) in enumerate(QUESTIONS):
            async with websockets.connect(url) as ws:
                await ws.send(
                    json.dumps(
                        {
                            "type": "JOIN_ROOM",
                            "payload": {"name": name, "userId": f"a{i}", "roomId": "physics"},
                        }
                    )
                )
                await ws.send(
                    json.dumps(
                        {
                            "type": "SEND_MESSAGE",
                            "payload": {"userId": f"a{i}", "roomId": "physics", "message": text},
                        }
                    )
                )
                while (m := json.loads(await ws.recv()))["type"] != "ADD_CHAT":
                    pass
                chat_ids.append(m["payload"]["chatId"])
        for v in range(12):
            async with websockets.connect(url) as ws:
                await ws.send(
                    json.dumps(
                        {
                            "type": "JOIN_ROOM",
                            "payload": {"name": f"v{v}", "userId": f"v{v}", "roomId": "physics"},
                        }
                    )
                )
                for chat_id, (_, _, votes) in zip(chat_ids, QUESTIONS, strict=True):
                    if v < votes:
                        await ws.send(
                            json.dumps(
                                {
                                    "type": "UPVOTE_MESSAGE",
                                    "payload": {
                                        "userId": f"v{v}",
                                        "roomId": "physics",
                                        "chatId": chat_id,
                                    },
                                }
                            )
                        )
                await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{server.port}"
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = await browser.new_page(viewport={"width": 1200, "height": 640})
            await page.goto(f"{base}/?room=physics")
            await page.fill("#name", "Ana")
            await page.click("#join button")
            await page.wait_for_selector("text=live")
            await page.wait_for_timeout(300)
            await page.screenshot(path=str(DOCS / "screenshot-participant.png"))
            host = await browser.new_page(viewport={"width": 1200, "height": 760})
            await host.goto(f"{base}/admin?room=physics")
            await host.fill("#token", TEST_ADMIN_TOKEN)
            await host.click("#login button")
            await host.wait_for_selector("text=live")
            await host.wait_for_timeout(300)
            await host.screenshot(path=str(DOCS / "screenshot-host.png"))
            await browser.close()


if __name__ == "__main__":
    asyncio.run(main())
