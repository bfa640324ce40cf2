"""The public listener's lean HTTP/1.1 server: an asyncio protocol on httptools (llhttp).

aiohttp's low-level server costs about 28 µs per request more than a raw protocol (request
object, handler task machinery, StreamResponse and its writer). This package carries the hot
path itself and hands a connection to aiohttp's guarded server where aiohttp serves best
(WebSocket upgrades, CONNECT). ``listen.server`` chooses between the two.
"""
