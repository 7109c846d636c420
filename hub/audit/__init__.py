"""The append-only audit trail: one timeline per message, never message content."""
