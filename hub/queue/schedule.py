"""The retry schedule as data: pure functions, no I/O. Defaults follow Postfix: first retry after 5 minutes,
doubling, at most ~an hour apart, given up after 5 days. Settings read: queue.*."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Schedule:
    first_retry: int = 300
    max_retry_interval: int = 4000
    max_lifetime: int = 432000
    delay_warning: int = 14400

    @classmethod
    def from_settings(cls, q) -> "Schedule":
        return cls(q.first_retry, q.max_retry_interval, q.max_lifetime, q.delay_warning)

    def delay_after(self, attempts: int) -> int:
        """Seconds to wait after the `attempts`-th failed attempt (1-based)."""
        return min(self.first_retry * (2 ** max(0, attempts - 1)), self.max_retry_interval)

    def next_attempt(self, attempts: int, now: datetime) -> datetime:
        return now + timedelta(seconds=self.delay_after(attempts))

    def expired(self, received_at: datetime, now: datetime) -> bool:
        return now - received_at >= timedelta(seconds=self.max_lifetime)

    def owes_delay_notice(self, received_at: datetime, now: datetime) -> bool:
        return self.delay_warning > 0 and now - received_at >= timedelta(seconds=self.delay_warning)
