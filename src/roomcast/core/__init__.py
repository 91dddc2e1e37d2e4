"""Pure protocol and room logic: no asyncio, no sockets, no storage."""
