"""Placeholders: a table of cases, and a property that a value changes only its own slot."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from message_templates.preview import text_cost
from message_templates.rendering import RenderError, TemplateBody, render

CASES = [
    # (body, personalisation, expected text)
    ("Hi ((name))", {"name": "Ada"}, "Hi Ada"),
    ("Hi ((Name)), ((NAME))", {"nAmE": "Ada"}, "Hi Ada, Ada"),  # case-insensitive both ways
    ("Hi ((first  name))", {"First Name": "Ada"}, "Hi Ada"),  # spaces collapsed
    ("Hi ((name))", {"name": "Ada", "unused": "x"}, "Hi Ada"),  # extra values ignored
    ("Hi ((name))!", {"name": ""}, "Hi !"),  # an empty value is a value
    ("Merhaba ((name))", {"name": "Şule"}, "Merhaba Şule"),  # unicode
    ("Code ((code))", {"code": 4821}, "Code 4821"),  # a number
    ("Total ((n))", {"n": 2.5}, "Total 2.5"),
    ("Hi ((name)).((vip?? Free parking.))", {"name": "Ada", "vip": "yes"}, "Hi Ada. Free parking."),
    ("Hi ((name)).((vip?? Free parking.))", {"name": "Ada", "vip": "no"}, "Hi Ada."),
    ("A((vip?? B))", {"vip": True}, "A B"),
    ("A((vip?? B))", {"vip": False}, "A"),
    ("A((vip?? B))", {"vip": ""}, "A"),
    ("A((vip?? B))", {"vip": 0}, "A"),
    ("A((VIP?? B))", {"vip": "TRUE"}, "A B"),
    ("A((flag??))", {"flag": "yes"}, "A"),  # empty conditional text
    ("Pay ((amount))€ {ok}", {"amount": "5"}, "Pay 5€ {ok}"),  # next to GSM extension characters
    ("[((a))]|((b))^", {"a": "x", "b": "y"}, "[x]|y^"),
    ("((a))((b))", {"a": "((b))", "b": "B"}, "((b))B"),  # a value is never read as a placeholder
    ("((a))", {"a": "{{ settings.SECRET_KEY }} <script>"}, "{{ settings.SECRET_KEY }} <script>"),
    ("((a)) (( b ))", {"a": "1", "b": "2"}, "1 2"),
    ("no placeholders (( here", {}, "no placeholders (( here"),
    ("((a?b))", {}, "((a?b))"),  # a single ? is not a placeholder: literal
    ("((a??x ((b))))", {"b": "B"}, "((a??x B))"),  # no nesting: the inner one is the placeholder
]


@pytest.mark.parametrize(("body", "values", "expected"), CASES)
def test_rendering_table(body, values, expected):
    assert render(body, values) == expected


def test_every_missing_placeholder_is_named_in_body_order():
    with pytest.raises(RenderError) as caught:
        render("((b)) ((a)) ((c??x)) ((b))", {"A": "1"})
    assert caught.value.missing == ["b", "c"]
    assert str(caught.value) == "Missing personalisation: b, c."


@pytest.mark.parametrize(
    ("values", "key"),
    [({"a": None}, "a"), ({"a": ["x"]}, "a"), ({"a": {"b": 1}}, "a"), ({"a": "1", "A": "2"}, "A")],
)
def test_bad_values_are_named(values, key):
    with pytest.raises(RenderError) as caught:
        render("((a))", values)
    assert key in caught.value.invalid


@pytest.mark.parametrize(
    ("body", "values", "encoding", "segments", "ucs2"),
    [
        ("Hi ((name))", {"name": "Ada"}, "GSM-7", 1, []),
        ("Hi ((name))", {"name": "Şule"}, "UCS-2", 1, [(4, "Ş")]),  # a value changes the encoding
        ("Hi ((name))", {"name": "Ada 😀"}, "UCS-2", 1, [(8, "😀")]),
        ("((x))", {"x": "€" * 80}, "GSM-7", 1, []),  # extension characters take two septets: 160
        ("((x))", {"x": "€" * 81}, "GSM-7", 2, []),
        ("((x))", {"x": "a" * 71 + "ş"}, "UCS-2", 2, [(72, "ş")]),
    ],
)
def test_cost_of_rendered_text(body, values, encoding, segments, ucs2):
    cost = text_cost(render(body, values))
    assert (cost.encoding, cost.segments) == (encoding, segments)
    assert [(c.position, c.character) for c in cost.ucs2_characters] == ucs2


# Literal text that cannot form a placeholder with what is around it, and names.
literal = st.text(st.characters(blacklist_characters="()", blacklist_categories=("Cs",)), max_size=20)
names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.tuples(literal, names), min_size=1, max_size=5),
    tail=literal,
    data=st.data(),
)
def test_a_value_changes_only_its_own_slot(parts, tail, data):
    """Whatever the values (placeholder syntax, braces, any unicode), the text is the
    body's literals in order with each slot holding exactly its value."""
    body = "".join(f"{text}(({name}))" for text, name in parts) + tail
    chosen = {name: data.draw(values, label=name) for _, name in parts}
    expected = "".join(text + chosen[name] for text, name in parts) + tail
    assert render(body, chosen) == expected
    # Changing one value changes the text only where that value's slots are.
    name = parts[0][1]
    other = data.draw(values, label="other")
    changed = {**chosen, name: other}
    assert render(body, changed) == "".join(text + changed[n] for text, n in parts) + tail


def test_the_body_is_parsed_once_and_values_are_not_scanned():
    body = TemplateBody("((a)) and ((b??shown))")
    assert body.placeholders == ("a", "b")
    assert body.render({"a": "((b??x))", "b": "1"}) == "((b??x)) and shown"
