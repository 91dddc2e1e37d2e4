"""Push price updates into a roomcast room through the HTTP API.

    ROOMCAST_ADMIN_TOKEN=... python examples/ticker.py --room prices --rate 2

Watch them live with `roomcast tail prices`, or open http://localhost:8080/?room=prices.
Each update is retried safely (Idempotency-Key), so a network hiccup never posts twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time

import aiohttp


async def run(
    url: str, room: str, rate: float, count: int | None, token: str, symbols: list[str]
) -> None:
    prices = {s: 100.0 for s in symbols}
    headers = {"Authorization": f"Bearer {token}"}
    sent = 0
    async with aiohttp.ClientSession(headers=headers) as session:
        started = time.monotonic()
        while count is None or sent < count:
            symbol = random.choice(symbols)
            prices[symbol] = round(prices[symbol] * (1 + random.gauss(0, 0.002)), 2)
            text = f"{symbol} {prices[symbol]:.2f} @{time.time_ns()}"
            key = f"tick-{started:.0f}-{sent}"
            for attempt in range(3):
                try:
                    async with session.post(
                        f"{url}/api/rooms/{room}/messages",
                        json={"name": "ticker", "message": text},
                        headers={"Idempotency-Key": key},
                    ) as response:
                        response.raise_for_status()
                        break
                except aiohttp.ClientError:
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.2 * 2**attempt)
            sent += 1
            await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--room", default="prices")
    parser.add_argument("--rate", type=float, default=1.0, help="updates per second")
    parser.add_argument("--count", type=int, default=None, help="stop after this many")
    parser.add_argument("--symbols", default="ACME,GLOBEX,INITECH,UMBRELLA")
    parser.add_argument(
        "--token",
        default=os.environ.get("ROOMCAST_API_KEY") or os.environ.get("ROOMCAST_ADMIN_TOKEN", ""),
    )
    args = parser.parse_args()
    asyncio.run(
        run(args.url, args.room, args.rate, args.count, args.token, args.symbols.split(","))
    )


if __name__ == "__main__":
    main()
