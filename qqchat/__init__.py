"""qqchat: a QQ-style chat daemon on Twisted.

Layers, outermost first: ``net`` (sockets and framing) -> ``dispatch`` (request
validation and error mapping) -> ``services`` (business rules) -> ``storage``
(SQL) and ``relay`` (delivery to sessions, local or across the cluster).
``tap`` wires them together; see docs/architecture.md.
"""

__version__ = "0.1.0"
