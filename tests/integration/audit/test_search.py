"""Every search filter, pagination, scope, and the audit of searches."""

import json

import pytest

from hub.audit import search
from hub.audit.patient import patient_key
from hub.audit.search import Filters, parse_filters
from hub.audit.store import Event, record
from hub.errors import InputError
from tests.integration.audit.conftest import KEY, seal, story

INS = "277076322082910"


@pytest.fixture
async def corpus(conn):
    """Seven messages; `t` holds database times taken between them."""
    t = {}
    await story(conn, "m1", account="ch-a", sender="dpi@ch-a.example", recipients=("dr.x@medecin.mssante.fr",),
                ins=INS, doc_type="11502-2", rule_version=1)
    t["after_m1"] = await conn.fetchval("SELECT clock_timestamp()")
    await story(conn, "m2", account="ch-a", sender="labo@ch-a.example", recipients=("Dr.Y@Labo.mssante.fr",),
                doc_type="11488-4", rule_version=2, outcome="bounced", state="done")
    await story(conn, "m3", account="ch-b", sender="dpi@ch-b.example",
                recipients=("dr.x@medecin.mssante.fr", "dr.z@medecin.mssante.fr"), ins="1 85 05 2A 123 456 78",
                rule_version=2, outcome="deferred", state="queued")
    t["after_m3"] = await conn.fetchval("SELECT clock_timestamp()")
    await story(conn, "m4", account="ch-b", sender="dpi@ch-b.example", outcome=None, state="dead")
    await story(conn, "m5", account="ch-a", sender="dpi@ch-a.example", ins=INS + "^^^&1.2.250.1.213.1.4.8&ISO^INS",
                doc_type="11502-2", outcome=None, state="held")
    await story(conn, "m6", account="ch-a", sender="dpi@ch-a.example", outcome="delivered")
    await story(conn, "m7", account="ch-c", sender="x@ch-c.example", outcome="delivered")
    await seal(conn)
    return t


async def ids(conn, scope=None, **params):
    page = await search.search(conn, parse_filters(params, KEY), scope=scope, limit=100)
    return [m.message_id for m in page.messages]


async def test_every_filter(conn, corpus):
    t = corpus
    assert await ids(conn) == ["m7", "m6", "m5", "m4", "m3", "m2", "m1"]
    assert await ids(conn, since=t["after_m1"].isoformat(), until=t["after_m3"].isoformat()) == ["m3", "m2"]
    assert await ids(conn, message_id="m4") == ["m4"]
    assert await ids(conn, message_id="nope") == []
    assert await ids(conn, account="ch-b") == ["m4", "m3"]
    assert await ids(conn, sender="LABO@ch-a.example") == ["m2"]
    assert await ids(conn, recipient="dr.x@medecin.mssante.fr") == ["m7", "m6", "m5", "m4", "m3", "m1"]
    assert await ids(conn, recipient="dr.y@labo.mssante.fr") == ["m2"]
    assert await ids(conn, recipient="dr.z@medecin.mssante.fr") == ["m3"]
    assert await ids(conn, patient_ins="2 77 07 63 220 829") == ["m5", "m1"]      # 13 digits, spaces
    assert await ids(conn, patient_ins="185052A12345678") == ["m3"]               # Corsica
    assert await ids(conn, doc_type="11502-2") == ["m5", "m1"]
    assert await ids(conn, rule_version="2") == ["m3", "m2"]
    assert await ids(conn, status="dead") == ["m4"]
    assert await ids(conn, status="held") == ["m5"]
    assert await ids(conn, status="queued") == ["m3"]
    assert await ids(conn, status="bounced") == ["m2"]
    assert await ids(conn, status="deferred") == ["m3"]
    assert await ids(conn, status="delivered") == ["m7", "m6", "m1"]
    # combined: the driving key plus the others checked
    assert await ids(conn, account="ch-a", doc_type="11502-2", patient_ins=INS) == ["m5", "m1"]
    assert await ids(conn, recipient="dr.x@medecin.mssante.fr", account="ch-b", status="deferred") == ["m3"]
    assert await ids(conn, sender="dpi@ch-a.example", since=t["after_m3"].isoformat()) == ["m6", "m5"]


async def test_scope_restricts_to_one_account(conn, corpus):
    assert await ids(conn, scope="ch-b") == ["m4", "m3"]
    assert await ids(conn, scope="ch-b", recipient="dr.x@medecin.mssante.fr") == ["m4", "m3"]
    assert await ids(conn, scope="ch-b", account="ch-a") == []
    assert await search.message_timeline(conn, "m1", scope="ch-b") is None
    assert (await search.message_timeline(conn, "m3", scope="ch-b"))[0].account == "ch-b"


async def test_keyset_pagination_both_ways(conn, corpus):
    seen, cursor = [], None
    while True:
        page = await search.search(conn, Filters(), cursor=cursor, limit=3)
        seen += [m.message_id for m in page.messages]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == ["m7", "m6", "m5", "m4", "m3", "m2", "m1"]
    page = await search.search(conn, Filters(account="ch-a"), limit=2, order="asc")
    assert [m.message_id for m in page.messages] == ["m1", "m2"]
    page = await search.search(conn, Filters(account="ch-a"), limit=2, order="asc", cursor=page.next_cursor)
    assert [m.message_id for m in page.messages] == ["m5", "m6"]


async def test_summary_and_exports(conn, corpus):
    page = await search.search(conn, Filters(message_id="m3"))
    m = page.messages[0]
    assert (m.account, m.sender, m.state) == ("ch-b", "dpi@ch-b.example", "queued")
    assert m.recipients == ["dr.x@medecin.mssante.fr", "dr.z@medecin.mssante.fr"]
    assert m.outcomes == {"dr.x@medecin.mssante.fr": "deferred", "dr.z@medecin.mssante.fr": "deferred"}
    assert m.status == "queued (deferred 2)" and m.rule_versions == [2]
    data = search.to_json(page)
    assert json.loads(json.dumps(data))["messages"][0]["message_id"] == "m3"
    csv_text = search.to_csv(page.messages)
    assert csv_text.splitlines()[1].startswith(m.received_at.isoformat() + ",m3,ch-b,dpi@ch-b.example,")


async def test_a_search_is_audited_with_the_patient_hashed(conn, corpus):
    f = parse_filters({"patient_ins": INS, "account": "ch-a"}, KEY)
    page = await search.search(conn, f)
    await search.log_query(conn, actor="cli:alice", via="cli", filters=f.facts(), results=len(page.messages))
    row = await conn.fetchrow("SELECT actor, facts::text AS facts FROM audit_event WHERE event = 'audit_searched'")
    assert row["actor"] == "cli:alice"
    facts = json.loads(row["facts"])
    assert facts["filters"]["patient_key"] == patient_key(INS, KEY).hex()
    assert INS not in row["facts"] and "2770763220829" not in row["facts"]
    assert facts["results"] == 2


async def test_notifications_and_null_sender_are_searchable(conn):
    await record(conn, Event("received", message_id="dsn1", sender="", recipient="dpi@ch-a.example",
                             facts={"origin": "failure notification for m1"}))
    await seal(conn)
    assert await ids(conn, recipient="dpi@ch-a.example") == ["dsn1"]
    await story(conn, "m1")
    await seal(conn)
    assert await ids(conn, sender="<>") == ["dsn1"]              # the null sender
    assert await ids(conn, sender="") == ["m1", "dsn1"]          # an empty filter is no filter


async def test_bad_filters_are_refused(conn):
    for params in ({"status": "lost"}, {"rule_version": "x"}, {"since": "yesterday"}, {"patient_ins": "abc"}):
        with pytest.raises(InputError):
            parse_filters(params, KEY)
    with pytest.raises(InputError):
        await search.search(conn, Filters(), cursor="garbage!")
