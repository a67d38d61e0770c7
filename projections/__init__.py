"""Projections: stored events in, the rows the CRM reads out."""

# What commands and admin routes take as a projection's name. There is one projection,
# messages (projections.tables.PROJECTION): it writes the chats in the same transactions, and
# the media rows its messages need, so each public table names it.
PROJECTION_NAMES = {"messages": "messages", "chats": "messages", "media": "messages"}
