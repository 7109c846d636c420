"""hub.memory: the allocator thresholds every hub process sets at start."""

import ctypes


def test_hub_processes_raise_the_allocator_thresholds():
    """glibc: mallopt accepts both settings (it returns 0 for a wrong parameter or value, and this is then False)."""
    from hub.memory import tune_allocator

    ctypes.CDLL("libc.so.6")          # these tests run on glibc (Debian); elsewhere tune_allocator() is a no-op
    assert tune_allocator() is True
