"""The page at `/`: what the fake provider received, for a person watching messages go out.

Newest first, at most PAGE_REQUESTS rows, reloading itself every
PAGE_REFRESH_SECONDS: a plain meta refresh, no script, so it needs nothing but
a browser. Every value it shows came from a client and is escaped. It shows
whether a request's auth key matched, never the key.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from datetime import UTC, datetime
from itertools import islice

from devtools.fakeprovider.replies import ReplySender
from devtools.fakeprovider.state import FakeProviderState, ReceivedRequest

# The page re-renders every 2 s; the newest requests are what anyone watches,
# and the full list is at /_fake/requests.
PAGE_REQUESTS = 500
PAGE_REFRESH_SECONDS = 2

_AUTH_SHOWN = {None: "", True: "ok", False: "wrong key"}


def _cell(value: object) -> str:
    return "&mdash;" if value is None else html.escape(str(value), quote=True)


def _row(entry: ReceivedRequest) -> str:
    received = datetime.fromtimestamp(entry.received_at, UTC)
    return (
        f'<tr class="received-request{" duplicate" if entry.duplicate else ""}"'
        f' data-status="{entry.status}" data-message-id="{_cell(entry.message_id)}">'
        f'<td class="time"><time datetime="{received.isoformat()}">{received:%Y-%m-%d %H:%M:%S.%f}</time></td>'
        f'<td class="to">{_cell(entry.to)}</td>'
        f'<td class="content">{_cell(entry.content)}</td>'
        f'<td class="status">{entry.status}</td>'
        f'<td class="message-id">{_cell(entry.message_id)}</td>'
        f'<td class="duplicate-flag">{"duplicate, dropped" if entry.duplicate else ""}</td>'
        f'<td class="auth">{_AUTH_SHOWN[entry.auth_ok]}</td>'
        "</tr>"
    )


def _replies_section(replies: ReplySender | None) -> str:
    if replies is None or not replies.signing:
        return (
            '<p class="quiet" id="replies-off">Replies from a phone: start with --inbound-secret '
            "(or FAKE_PROVIDER_INBOUND_SECRET) to send the service signed replies.</p>"
        )
    rows = "".join(
        f'<tr class="sent-reply"><td class="time">{datetime.fromtimestamp(r.sent_at, UTC):%Y-%m-%d %H:%M:%S}</td>'
        f'<td class="from">{_cell(r.from_number)}</td><td class="text">{_cell(r.text)}</td>'
        f'<td class="status">{r.status or "unreachable"}</td><td class="answer">{_cell(r.answer)}</td></tr>'
        for r in replies.sent()
    )
    return f"""<h2>Reply from a phone</h2>
<form id="reply-form" method="post" action="/_fake/reply">
  <label>From <input name="from" required maxlength="32" placeholder="+12125550123"></label>
  <label>Text <input name="text" maxlength="1600" value="STOP"></label>
  <button type="submit">Send to {_cell(replies.inbound_url)}</button>
</form>
<table id="replies"><thead><tr><th>Time (UTC)</th><th>From</th><th>Text</th><th>Service answered</th>
<th>Answer</th></tr></thead><tbody>{rows}</tbody></table>"""


def render_requests_page(state: FakeProviderState, *, replies: ReplySender | None = None) -> str:
    """The received requests as an HTML page, newest first, every value escaped."""
    stats = state.stats()
    with state.lock:
        newest = list(islice(reversed(state.requests), PAGE_REQUESTS))
        faults = asdict(state.faults)
    rows = [_row(entry) for entry in newest] or ['<tr id="no-requests"><td colspan="7">Nothing received yet.</td></tr>']
    shown = f"the newest {len(newest)} of {stats['requests']}" if stats["requests"] > len(newest) else "all of them"
    by_status = ", ".join(f"{_cell(k)}: {v}" for k, v in sorted(stats["by_status"].items())) or "none"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{PAGE_REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Fake provider: {stats["requests"]} received</title>
<style>
  body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }}
  table {{ border-collapse: collapse; width: 100%; }}
  th, td {{ border-bottom: 1px solid #ddd; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }}
  th {{ background: #f3f3f3; }}
  td.content {{ white-space: pre-wrap; overflow-wrap: anywhere; }}
  td.time, td.message-id {{ font-family: ui-monospace, monospace; font-size: 12px; }}
  tr.duplicate {{ background: #fff6d6; }}
  .stats span {{ margin-right: 1.2rem; }}
  .quiet {{ color: #666; }}
</style>
</head>
<body>
<h1>Fake provider</h1>
<p class="stats" id="stats">
  <span>received: <strong id="stat-requests">{stats["requests"]}</strong></span>
  <span>accepted: <strong id="stat-accepted">{stats["accepted"]}</strong></span>
  <span>duplicates dropped: <strong id="stat-duplicates">{stats["duplicates_dropped"]}</strong></span>
  <span>by status: {by_status}</span>
  <span>receipts sent: <strong id="stat-receipts-sent">{stats["receipts_sent"]}</strong>,
    failed: <strong id="stat-receipts-failed">{stats["receipts_failed"]}</strong></span>
</p>
<p class="quiet">Faults: <code id="faults">{_cell(json.dumps(faults))}</code></p>
<p class="quiet">Newest first, {shown}; this page reloads every {PAGE_REFRESH_SECONDS} s.
  As JSON: <a href="/_fake/requests">/_fake/requests</a>, <a href="/_fake/stats">/_fake/stats</a>.</p>
{_replies_section(replies)}
<h2>Received</h2>
<table id="received">
<thead>
<tr><th>Time (UTC)</th><th>To</th><th>Content</th><th>Status</th><th>messageId</th><th>Duplicate</th><th>Auth</th></tr>
</thead>
<tbody>
{"".join(rows)}
</tbody>
</table>
</body>
</html>
"""
