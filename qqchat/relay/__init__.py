"""Delivery to logged-in sessions: in-process (``local``) or across nodes (cluster)."""
