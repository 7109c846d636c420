"""The auditors' web pages: server-rendered HTML, no JavaScript.

    GET  /audit                  search form, results (one row per message), next-page and export links
    GET  /audit/messages/{id}    a message's timeline
    GET  /audit/login, POST /audit/login, GET /audit/logout

Authentication: an auditor token, given once in the login form or as `?token=` (which sets the cookie and
redirects to the same address without it). The cookie is HttpOnly, SameSite=Strict (Secure over HTTPS), so no other
site can make the browser send it; the pages only read (GET), so CSRF cannot change anything. A search by INS is
redirected to the same search by its keyed hash (`patient_key=`) so that the INS does not stay in the browser's
history. Every search and timeline view is audited like the API's.
"""

from __future__ import annotations

import html
import json
import string
from importlib import resources
from urllib.parse import urlencode

from aiohttp import web

from hub.audit import search
from hub.audit.patient import patient_key
from hub.audit.tokens import Token
from hub.errors import InputError
from hub.web.audit_api import COOKIE, SECURITY_HEADERS, authenticate, run_search

PAGE_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy":
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"}
FIELDS = (("since", "Received from", "date"), ("until", "Received until", "date"), ("message_id", "Message id", "text"),
          ("account", "Account", "text"), ("sender", "Sender", "text"), ("recipient", "Recipient", "text"),
          ("patient_ins", "Patient INS", "text"), ("doc_type", "Document type", "text"),
          ("status", "Status", "text"), ("rule_version", "Rule-set version", "text"))

e = html.escape


def _template() -> string.Template:
    text = resources.files("hub.web").joinpath("templates/audit_base.html").read_text(encoding="utf-8")
    return string.Template(text)


def page(title: str, body: str, token: Token | None, status: int = 200) -> web.Response:
    who = f" signed in as {e(token.name)}" + (f" (account {e(token.account)})" if token and token.account else "") \
        if token else ""
    return web.Response(text=_template().substitute(title=e(title), body=body, who=who), status=status,
                        content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)


def _set_cookie(request: web.Request, response: web.StreamResponse, secret: str) -> None:
    response.set_cookie(COOKIE, secret, httponly=True, samesite="Strict", secure=request.secure, path="/")


def login_form(message: str = "") -> web.Response:
    body = ("<h1>Audit trail</h1>" + (f'<p class="error">{e(message)}</p>' if message else "")
            + '<form method="post" action="/audit/login"><label>Auditor token '
              '<input type="password" name="token" autocomplete="off" required></label> '
              '<button type="submit">Sign in</button></form>')
    return page("Sign in", body, None, status=401)


async def _auditor(request: web.Request) -> Token | web.Response:
    """The signed-in auditor, or the login / forbidden page to return; raises the redirect that moves a `?token=`
    into the cookie."""
    query = request.query
    if "token" in query:
        rest = [(k, v) for k, v in query.items() if k != "token"]
        response = web.HTTPSeeOther(request.path + ("?" + urlencode(rest) if rest else ""), headers=PAGE_HEADERS)
        _set_cookie(request, response, query["token"])
        raise response
    token = await authenticate(request, cookie=True)
    if token is None:
        return login_form("unknown or revoked token" if request.cookies.get(COOKIE) else "")
    if token.role != "auditor":
        return page("Forbidden", "<h1>Forbidden</h1><p>These pages need an auditor token.</p>", token, status=403)
    return token


async def login(request: web.Request) -> web.StreamResponse:
    if request.method == "GET":
        return login_form()
    form = await request.post()
    secret = str(form.get("token", "")).strip()
    response = web.HTTPSeeOther("/audit", headers=PAGE_HEADERS)
    _set_cookie(request, response, secret)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/audit/login", headers=PAGE_HEADERS)
    response.del_cookie(COOKIE, path="/")
    raise response


async def search_page(request: web.Request) -> web.StreamResponse:
    token = await _auditor(request)
    if isinstance(token, web.StreamResponse):
        return token
    query = dict(request.query)
    if query.get("patient_ins", "").strip():
        try:
            query["patient_key"] = patient_key(query.pop("patient_ins"), request.app["patient_key"]).hex()
        except InputError as exc:
            return page("Search", _form(query) + f'<p class="error">{e(str(exc))}</p>', token, status=400)
        raise web.HTTPSeeOther("/audit?" + urlencode(query), headers=PAGE_HEADERS)
    body = "<h1>Audit trail: messages</h1>" + _form(query)
    if not any(query.get(k) for k, _, _ in FIELDS + (("patient_key", "", ""), ("go", "", ""))):
        return page("Search", body + '<p class="muted">Enter filters and search.</p>', token)
    try:
        result = await run_search(request, token, query, "web")
    except InputError as exc:
        return page("Search", body + f'<p class="error">{e(str(exc))}</p>', token, status=400)
    return page("Search", body + _results(result, query), token)


def _form(query: dict) -> str:
    inputs = []
    for name, label, kind in FIELDS:
        value = query.get(name, "")
        if name == "patient_ins" and query.get("patient_key"):
            label += " (searching by its keyed hash)"
        inputs.append(f'<label>{e(label)}<input type="{kind}" name="{name}" value="{e(value)}"></label>')
    hidden = (f'<input type="hidden" name="patient_key" value="{e(query["patient_key"])}">'
              if query.get("patient_key") else "")
    return (f'<form class="search" method="get" action="/audit">{"".join(inputs)}{hidden}'
            '<input type="hidden" name="go" value="1"><button type="submit">Search</button></form>')


def _results(result: search.Page, query: dict) -> str:
    rows = []
    for m in result.messages:
        rows.append(
            "<tr class=\"message\">"
            f'<td>{m.received_at.astimezone(search.dt.timezone.utc):%Y-%m-%d %H:%M:%S}</td>'
            f'<td><a href="/audit/messages/{e(m.message_id, quote=True)}">{e(m.message_id)}</a></td>'
            f"<td>{e(m.account or '-')}</td><td>{e(m.sender or '-')}</td>"
            f"<td>{'<br>'.join(e(r) for r in m.recipients) or '-'}</td>"
            f"<td>{e(', '.join(m.doc_types) or '-')}</td><td>{e(m.status)}</td></tr>")
    base = {k: v for k, v in query.items() if k not in ("cursor",)}
    links = []
    if result.next_cursor:
        links.append(f'<a rel="next" href="/audit?{e(urlencode({**base, "cursor": result.next_cursor}))}">Next page</a>')
    api = {k: v for k, v in base.items() if k != "go"}
    links.append(f'<a href="/api/audit/messages?{e(urlencode({**api, "format": "csv"}))}">Export CSV</a>')
    links.append(f'<a href="/api/audit/messages?{e(urlencode({**api, "format": "json"}))}">Export JSON</a>')
    table = ("<table><thead><tr><th>Received (UTC)</th><th>Message</th><th>Account</th><th>Sender</th>"
             "<th>Recipients</th><th>Document types</th><th>Status</th></tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>") if rows else '<p class="muted">No message matches.</p>'
    return f"<h2>{len(result.messages)} message(s)</h2>{table}<p>{' · '.join(links)}</p>"


async def timeline_page(request: web.Request) -> web.StreamResponse:
    token = await _auditor(request)
    if isinstance(token, web.StreamResponse):
        return token
    message_id = request.match_info["id"]
    async with request.app["pool"].acquire() as conn:
        found = await search.message_timeline(conn, message_id, scope=token.account)
        await search.log_query(conn, actor=f"token:{token.name}", via="web", filters={"timeline": message_id},
                               results=0 if found is None else 1)
    if found is None:
        return page("Not found", f"<h1>Not found</h1><p>No message {e(message_id)} in your audit scope.</p>",
                    token, status=404)
    m, events = found
    rows = []
    for ev in events:
        facts = json.dumps(ev["facts"], ensure_ascii=False, indent=1, sort_keys=True) if ev["facts"] else ""
        extra = " ".join(f"{k}={ev[k]}" for k in ("account", "sender", "doc_type", "rule_version", "actor")
                         if ev[k] is not None)
        rows.append(f'<tr class="event"><td>{ev["at"].astimezone(search.dt.timezone.utc):%Y-%m-%d %H:%M:%S.%f}</td>'
                    f'<td class="name">{e(ev["event"])}</td><td>{e(ev["recipient"] or "")}</td>'
                    f'<td>{e(extra)}</td><td class="facts">{e(facts)}</td></tr>')
    body = (f"<h1>Message {e(m.message_id)}</h1>"
            f"<p>Received {m.received_at.astimezone(search.dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC · account "
            f"{e(m.account or '-')} · from {e(m.sender or '-')} to {e(', '.join(m.recipients) or '-')} · "
            f"document types {e(', '.join(m.doc_types) or '-')} · status <strong>{e(m.status)}</strong></p>"
            "<table><thead><tr><th>At (UTC)</th><th>Event</th><th>Recipient</th><th>Details</th><th>Facts</th>"
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return page(f"Message {m.message_id}", body, token)


def routes() -> list[web.RouteDef]:
    return [web.get("/audit", search_page), web.get("/audit/messages/{id}", timeline_page),
            web.get("/audit/login", login), web.post("/audit/login", login), web.get("/audit/logout", logout)]
