"""A stand-in for the SMS provider's webhook, for development, docker-compose and the tests.

It answers like the real provider (202 `{"message": "Accepted", "messageId":
<uuid>}`), remembers what it received, and injects faults on request, at start
(`manage.py fakeprovider` options) or while running (`POST /_fake/faults`). It
honours `Idempotency-Key` as a careful provider would, and can send signed
delivery receipts. One concern per module:

- faults.py: what it is told to do wrong, changed all at once or not at all;
- state.py: what it received, the keys it accepted, its counts;
- answers.py: the provider's answer, one small rule per fault;
- receipts.py: the signed delivery receipts it sends afterwards;
- page.py: the page at `/` for people;
- server.py: the aiohttp app and its routes, and starting and stopping it;
- stub.py: a minimal aiohttp server answering 202, to measure the others against.

It is a development tool: it shows every phone number and text it received to
whoever reaches its port. Nothing of the service imports it (import-linter).
"""
