"""The read side: queries, the query bus and its cache, read-model tables, query handlers."""
