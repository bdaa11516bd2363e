"""The README's *Templates* blocks, run by bash as written (curl, and the virtualenv's
python for the id) against a live server: each answer the README shows compared, and
the message it sends queued with the text the template makes."""

from __future__ import annotations

import json
import subprocess

import pytest

from message_templates.models import TemplateVersion
from messages_app.models import Message
from tests.factories import make_user, token_for
from tests.processes import REPO_ROOT
from tests.test_readme_commands import assert_shown, section_blocks

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]


def last_answer(output: str) -> str:
    """The last JSON answer of a block's output (curl -s prints answers back to back)."""
    decoder, at, last = json.JSONDecoder(), 0, None
    while at < len(output.rstrip()):
        while output[at].isspace():
            at += 1
        last, at = decoder.raw_decode(output, at)
    return json.dumps(last, ensure_ascii=False, separators=(",", ":"))


def test_the_templates_section_works_as_written(live_server):
    token = token_for(make_user(username="admin", superuser=True))
    blocks = section_blocks("Templates")
    assert len(blocks) == 4
    marked = "".join(f"printf '\\n@@block@@\\n'\n{block}" for block in blocks)
    script = f'set -euo pipefail\nH="Authorization: Token {token}"\n' + marked.replace(
        "localhost:8000", live_server.url.removeprefix("http://")
    )
    done = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    answers = done.stdout.split("\n@@block@@\n")[1:]
    for block, answered in zip(blocks, answers, strict=True):
        assert_shown(block, last_answer(answered))

    message = Message.objects.get(recipient_phone_number="+905551112233")
    assert message.content == "Hi Ada, see you on Monday at 10:00."
    assert (message.template_version, message.template_language) == (1, "en")
    assert Message.objects.count() == 1  # the bulk was a dry run
    versions = TemplateVersion.objects.order_by("number")
    assert [v.number for v in versions] == [1, 2, 3, 4]
    assert versions[3].bodies == versions[0].bodies and versions[3].restored_from == 1
    assert versions[2].bodies["tr"] == "Merhaba ((name)): ((day)), saat ((time))."
