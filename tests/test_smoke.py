from messages_app.models import Message


def test_create_and_list(api_client):
    r = api_client.post(
        "/api/messages/", {"recipient_phone_number": "+90 555 111 22 33", "content": "hi"}, format="json"
    )
    assert r.status_code == 201, r.content
    assert r.json()["recipient_phone_number"] == "+905551112233"
    assert Message.objects.count() == 1
