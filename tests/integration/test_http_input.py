"""Bad input at the HTTP entry of a running hub, with valid tokens: `%00` anywhere in a path or a parameter of the
API and the auditor pages is a 400 with a JSON body, never a 500; other odd bytes are ordinary values."""

import aiohttp
from yarl import URL

from hub.audit import tokens

AUDIT_PARAMS = ["since", "until", "message_id", "account", "sender", "recipient", "patient_ins", "patient_key",
                "doc_type", "status", "rule_version", "limit", "cursor", "order", "format"]


async def test_nul_anywhere_in_the_api_is_a_clear_400(start_hub, conn):
    hub = await start_hub({})
    _, auditor = await tokens.create(conn, "alice", "auditor", actor="test")
    _, operator = await tokens.create(conn, "ops", "operator", actor="test")
    base = f"http://127.0.0.1:{hub.http_port}"
    urls = [(f"/api/audit/messages?{p}=a%00b", auditor) for p in AUDIT_PARAMS]
    urls += [("/api/audit/messages?%00=x", auditor), ("/api/audit/messages/%00", auditor),
             ("/api/audit/messages/1a2b%00c", auditor), ("/api/audit/messages/%00?format=json", auditor),
             ("/api/directory/lookup?q=martin%00", operator), ("/api/directory/lookup?q=x&limit=%00", operator),
             ("/api/queue?state=%00", operator), ("/api/rules?%00", operator), ("/api/nothing/%00", auditor),
             ("/audit/messages/%00", auditor), ("/audit?sender=%00", auditor)]
    async with aiohttp.ClientSession() as http:
        for path, secret in urls:
            async with http.get(URL(base + path, encoded=True), headers={"Authorization": f"Bearer {secret}"}) as r:
                assert r.status == 400, (path, r.status, await r.text())
                assert r.content_type == "application/json", path
                assert "NUL" in (await r.json())["error"], path
        # odd but storable bytes are ordinary values: a search that finds nothing, a 404
        for path in ("/api/audit/messages?sender=%ff%fe", "/api/audit/messages?recipient=%C3%A9%01",
                     "/api/audit/messages/%ff"):
            async with http.get(URL(base + path, encoded=True), headers={"Authorization": f"Bearer {auditor}"}) as r:
                assert r.status in (200, 400, 404) and r.content_type == "application/json", (path, r.status)
        async with http.get(URL(base + "/api/audit/messages?sender=x", encoded=True),
                            headers={"Authorization": f"Bearer {auditor}"}) as r:
            assert r.status == 200 and (await r.json())["messages"] == []


async def test_odd_audit_parameters_are_json_400s(start_hub, conn):
    """The last day of the calendar, a misspelt filter and a repeated one: each a JSON 400 naming it, never a 500
    and never a search silently widened to every message."""
    hub = await start_hub({})
    _, auditor = await tokens.create(conn, "alice", "auditor", actor="test")
    base = f"http://127.0.0.1:{hub.http_port}"
    cases = {"/api/audit/messages?until=9999-12-31": "date out of range: '9999-12-31'",
             "/api/audit/messages?recipent=dr.martin@medecin.mssante.fr": "unknown parameter 'recipent'",
             "/api/audit/messages?since=2026-01-01&since=2026-02-01": "parameter 'since' given more than once"}
    async with aiohttp.ClientSession() as http:
        for path, message in cases.items():
            async with http.get(base + path, headers={"Authorization": f"Bearer {auditor}"}) as r:
                assert r.status == 400 and r.content_type == "application/json", (path, r.status)
                assert message in (await r.json())["error"], path
        async with http.get(base + "/audit?until=9999-12-31&go=1", headers={"Authorization": f"Bearer {auditor}"}) as r:
            assert r.status == 400 and "date out of range" in await r.text()
        async with http.get(base + "/api/audit/messages?until=2026-12-31&format=csv",
                            headers={"Authorization": f"Bearer {auditor}"}) as r:
            assert r.status == 200


async def test_a_misspelt_or_repeated_operator_parameter_is_a_400_never_an_action_on_everything(start_hub, conn):
    """`flush?domian=` flushed every deferred recipient, `queue?acount=` listed every account's messages."""
    hub = await start_hub({})
    _, operator = await tokens.create(conn, "ops", "operator", actor="test")
    base = f"http://127.0.0.1:{hub.http_port}"
    auth = {"Authorization": f"Bearer {operator}"}
    cases = [("get", "/api/queue?acount=labo-x", None, "unknown parameter 'acount'"),
             ("get", "/api/queue?state=held&state=dead", None, "parameter 'state' given more than once"),
             ("get", "/api/queue/summary?domain=x", None, "unknown parameter 'domain' (known: state)"),
             ("get", "/api/directory/lookup?query=martin", None, "unknown parameter 'query' (known: limit, q)"),
             ("get", "/api/rules?verbose=1", None, "unknown parameter 'verbose' (known: none)"),
             ("post", "/api/queue/flush?domian=mssante.fr", None, "unknown parameter 'domian'"),
             ("post", "/api/queue/flush", {"domian": "mssante.fr"}, "unknown key 'domian' in the body"),
             ("post", "/api/queue/1a2b/hold", {"raison": "x"}, "unknown key 'raison' in the body")]
    async with aiohttp.ClientSession() as http:
        for method, path, body, message in cases:
            async with http.request(method, base + path, json=body, headers=auth) as r:
                assert r.status == 400 and r.content_type == "application/json", (path, r.status)
                assert message in (await r.json())["error"], (path, await r.json())
        async with http.get(base + "/api/queue?state=held&limit=5", headers=auth) as r:
            assert r.status == 200
        async with http.post(base + "/api/queue/flush", json={"domain": "mssante.fr"}, headers=auth) as r:
            assert r.status == 200 and (await r.json())["recipients"] == 0
