"""HubSMTP.factory builds every protocol after the first without aiosmtpd's per-connection introspection: each one
must be set up exactly as aiosmtpd's own constructor would have (same attributes, methods bound to itself), or a
session would run a command or an AUTH mechanism on another connection's protocol."""

import asyncio
import ssl

from hub.intake.protocol import HubSMTP


class Handler:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        return responses

    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

    async def auth_CUSTOM(self, server, args):          # a mechanism the handler implements
        return None


KWARGS = dict(hostname="hub.example.org", ident="hub ESMTP", tls_context=ssl.create_default_context(
    ssl.Purpose.CLIENT_AUTH), require_starttls=False, auth_require_tls=True, data_size_limit=1000,
    enable_SMTPUTF8=True, decode_data=False, timeout=30, command_call_limit={"AUTH": 5, "*": 100})


def _bound_to(method, owner) -> bool:
    return getattr(method, "__self__", None) is owner


async def test_factory_protocols_are_set_up_as_aiosmtpd_sets_them_up():
    handler = Handler()
    make = HubSMTP.factory(handler, **KWARGS)
    first, second, third = make(), make(), make()
    reference = HubSMTP(handler, **KWARGS)
    for proto in (second, third):
        assert set(vars(proto)) == set(vars(reference))
        for key, value in vars(reference).items():
            got = getattr(proto, key)
            if key == "_smtp_methods":
                assert got.keys() == value.keys()
                assert all(_bound_to(m, proto) and m.__func__ is value[k].__func__ for k, m in got.items())
            elif key == "_auth_methods":
                assert got.keys() == value.keys() and "CUSTOM" in got and "PLAIN" in got
                for k, a in got.items():
                    assert a.is_builtin == value[k].is_builtin
                    assert _bound_to(a.method, proto if a.is_builtin else handler)
            elif key in ("_handle_hooks", "_auth_callback"):
                assert got == value
            elif key == "event_handler":
                assert got is handler
            elif isinstance(value, (str, int, float, bool, dict, type(None), ssl.SSLContext,
                                    asyncio.AbstractEventLoop)):
                assert got == value, key
            else:                                        # per-connection objects: never shared
                assert got is not getattr(first, key), key
    assert second._stream_reader is not third._stream_reader
