"""The audit HTTP API and pages: tokens, roles, scopes, formats, and the audit of every query."""

import json

from hub.audit import tokens
from tests.integration.audit.conftest import seal, story

INS = "277076322082910"


def auth(secret):
    return {"Authorization": f"Bearer {secret}"}


async def test_missing_wrong_revoked_and_other_role_tokens(http, conn, make_token):
    resp = await http.get("/api/audit/messages")
    assert resp.status == 401 and "error" in await resp.json()
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await http.get("/api/audit/messages", headers=auth("hub_not-a-token"))
    assert resp.status == 401 and "error" in await resp.json()
    operator = await make_token("ops", "operator")
    resp = await http.get("/api/audit/messages", headers=auth(operator))
    assert resp.status == 403 and "auditor" in (await resp.json())["error"]
    auditor = await make_token("alice")
    assert (await http.get("/api/audit/messages", headers=auth(auditor))).status == 200
    await tokens.revoke(conn, "alice", actor="test")
    assert (await http.get("/api/audit/messages", headers=auth(auditor))).status == 401


async def test_search_json_csv_and_pagination(http, conn, make_token):
    await story(conn, "m1", ins=INS, doc_type="11502-2")
    await story(conn, "m2", recipients=("a@x.fr",))
    await story(conn, "m3", account="ch-b")
    await seal(conn)
    secret = await make_token("alice")
    resp = await http.get("/api/audit/messages", params={"patient_ins": INS}, headers=auth(secret))
    assert [m["message_id"] for m in (await resp.json())["messages"]] == ["m1"]
    resp = await http.get("/api/audit/messages", params={"limit": "2"}, headers=auth(secret))
    body = await resp.json()
    assert [m["message_id"] for m in body["messages"]] == ["m3", "m2"] and body["next_cursor"]
    resp = await http.get("/api/audit/messages", params={"limit": "2", "cursor": body["next_cursor"]},
                          headers=auth(secret))
    assert [m["message_id"] for m in (await resp.json())["messages"]] == ["m1"]
    resp = await http.get("/api/audit/messages", params={"format": "csv", "recipient": "A@x.fr"},
                          headers=auth(secret))
    assert resp.status == 200 and resp.content_type == "text/csv"
    lines = (await resp.text()).splitlines()
    assert lines[0].startswith("received_at,message_id") and ",m2,ch-a," in lines[1] and len(lines) == 2
    resp = await http.get("/api/audit/messages", params={"status": "lost"}, headers=auth(secret))
    assert resp.status == 400 and "status" in (await resp.json())["error"]
    logged = [json.loads(r["facts"]) for r in await conn.fetch(
        "SELECT facts::text AS facts FROM audit_event WHERE event = 'audit_searched' AND actor = 'token:alice'"
        " ORDER BY id")]
    assert logged[0]["filters"] == {"patient_key": logged[0]["filters"]["patient_key"]} and logged[0]["via"] == "http"
    assert all(INS not in json.dumps(f) for f in logged)


async def test_a_scoped_auditor_sees_only_its_account(http, conn, make_token):
    await story(conn, "a1", account="ch-a")
    await story(conn, "b1", account="ch-b")
    await seal(conn)
    secret = await make_token("auditor-b", account="ch-b")
    resp = await http.get("/api/audit/messages", headers=auth(secret))
    assert [m["message_id"] for m in (await resp.json())["messages"]] == ["b1"]
    resp = await http.get("/api/audit/messages", params={"account": "ch-a"}, headers=auth(secret))
    assert (await resp.json())["messages"] == []
    assert (await http.get("/api/audit/messages/a1", headers=auth(secret))).status == 404
    resp = await http.get("/api/audit/messages/b1", headers=auth(secret))
    body = await resp.json()
    assert resp.status == 200 and body["message"]["account"] == "ch-b"
    assert [e["event"] for e in body["events"]] == ["received", "routed", "delivery_attempted", "delivered"]
    assert body["events"][2]["facts"]["reply"] == "250 ok"


async def test_timeline_needs_the_auditor_role(http, conn, make_token):
    await story(conn, "m1")
    assert (await http.get("/api/audit/messages/m1")).status == 401
    operator = await make_token("ops", "operator")
    assert (await http.get("/api/audit/messages/m1", headers=auth(operator))).status == 403
    auditor = await make_token("alice")
    assert (await http.get("/api/audit/messages/nope", headers=auth(auditor))).status == 404


async def test_pages_login_cookie_and_ins_redirect(http, conn, make_token):
    await story(conn, "m1", ins=INS, doc_type="11502-2")
    await seal(conn)
    secret = await make_token("alice")
    resp = await http.get("/audit")
    assert resp.status == 401 and 'name="token"' in await resp.text()
    resp = await http.post("/audit/login", data={"token": secret}, allow_redirects=False)
    assert resp.status == 303
    cookie = resp.cookies["hub_token"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    resp = await http.get("/audit", params={"patient_ins": INS}, allow_redirects=False)
    assert resp.status == 303 and INS not in resp.headers["Location"] and "patient_key=" in resp.headers["Location"]
    resp = await http.get(resp.headers["Location"])
    text = await resp.text()
    assert resp.status == 200 and 'href="/audit/messages/m1"' in text and "11502-2" in text
    resp = await http.get("/audit/messages/m1")
    assert resp.status == 200 and "delivery_attempted" in await resp.text()
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    resp = await http.get("/api/audit/messages", params={"format": "csv"})      # export link, with the cookie
    assert resp.status == 200
    operator = await make_token("ops", "operator")
    http.session.cookie_jar.clear()
    resp = await http.get("/audit", headers=auth(operator))
    assert resp.status == 403
