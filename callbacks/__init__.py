"""Status callbacks: signed events about messages, POSTed to the client application's endpoints
(an outbox written with each status change, delivered from django-q2 tasks of their own)."""
