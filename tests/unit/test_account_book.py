"""The accounts a hub process holds in memory: a network-bound account is found by the peer's address, and what
was found for an address is remembered only until the accounts are loaded again (a network moved, an account
disabled or added there must be seen at the next MAIL after the refresh)."""

import ipaddress

from hub.intake import accounts as accounts_module
from hub.intake.accounts import AccountBook
from hub.intake.auth import Account


def account(name: str, *networks: str, allow_from: tuple[str, ...] = (), disabled: bool = False) -> Account:
    return Account(name, None, None, tuple(ipaddress.ip_network(n) for n in networks), allow_from, None, disabled)


def test_the_account_is_found_by_the_peer_address_and_the_sender_it_may_use():
    book = AccountBook()
    book.replace([account("lab", "10.1.0.0/16", allow_from=("lab.example",)),
                  account("dpi", "10.1.2.0/24", "2001:db8::/32", allow_from=("ch.example",)),
                  account("open", "192.0.2.0/24")])
    assert book.by_network("10.1.2.3", "sil@lab.example")[0].name == "lab"
    assert book.by_network("10.1.2.3", "dpi@ch.example") == (book.by_name("dpi"), True)
    assert book.by_network("10.1.2.3", "x@elsewhere.example") == (book.by_name("lab"), False)   # the first one
    assert book.by_network("2001:db8::7", "dpi@ch.example")[0].name == "dpi"
    assert book.by_network("192.0.2.9", "any@where.example") == (book.by_name("open"), True)   # no allow_from
    assert book.by_network("10.2.0.1", "sil@lab.example") == (None, False)
    assert book.by_network("not an address", "sil@lab.example") == (None, False)
    assert book.covers("10.1.9.9") and not book.covers("10.2.0.1") and not book.covers("")


def test_what_an_address_found_is_forgotten_when_the_accounts_are_loaded_again():
    book = AccountBook()
    book.replace([account("lab", "10.1.0.0/16", allow_from=("lab.example",))])
    assert book.by_network("10.1.2.3", "sil@lab.example")[0].name == "lab"
    assert book.by_network("10.9.0.1", "sil@lab.example") == (None, False)
    book.replace([account("lab", "10.9.0.0/16", allow_from=("lab.example",))])           # its network moved
    assert book.by_network("10.1.2.3", "sil@lab.example") == (None, False)
    assert book.by_network("10.9.0.1", "sil@lab.example")[0].name == "lab"
    book.replace([account("lab", "10.9.0.0/16", allow_from=("lab.example",), disabled=True)])
    assert book.by_network("10.9.0.1", "sil@lab.example") == (None, False)
    book.replace([account("lab", "10.9.0.0/16", allow_from=("lab.example",)),
                  account("new", "10.9.0.0/24", allow_from=("new.example",))])
    assert book.by_network("10.9.0.1", "x@new.example") == (book.by_name("new"), True)


def test_many_peer_addresses_keep_the_answers_right(monkeypatch):
    monkeypatch.setattr(accounts_module, "_COVERING_CACHE", 8)
    book = AccountBook()
    book.replace([account("lab", "10.1.0.0/24")])
    for round_ in range(3):
        for i in range(20):
            found = book.by_network(f"10.1.{i % 2}.{i}", "x@y.example")[0]
            assert (found is not None) == (i % 2 == 0), (round_, i)
