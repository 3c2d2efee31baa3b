"""The aiohttp JSON API and WebSocket relays."""
