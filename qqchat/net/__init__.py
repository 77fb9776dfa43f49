"""The network edge: framing JSON lines on TCP, idle timeouts, the listening service."""
