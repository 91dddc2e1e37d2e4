"""The asyncio side: connections, outboxes, local fan-out, the HTTP/WebSocket server."""
