from __future__ import annotations

import pytest

from message_templates.permissions import ADD_TEMPLATE, CHANGE_TEMPLATE, VIEW_TEMPLATE
from tests.factories import MESSAGE_CLIENT_PERMS, make_user

TEMPLATE_PERMS = (VIEW_TEMPLATE, ADD_TEMPLATE, CHANGE_TEMPLATE)


@pytest.fixture
def editor(db):
    """Writes templates and sends messages from them."""
    return make_user(username="tess", perms=[*MESSAGE_CLIENT_PERMS, *TEMPLATE_PERMS])


@pytest.fixture
def editor_client(editor, client_for):
    return client_for(editor)
