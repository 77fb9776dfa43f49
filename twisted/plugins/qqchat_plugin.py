"""twistd dropin for qqchat.

It names the tap module as a string so that ``twistd --help`` stays fast and no
reactor is imported before twistd installs the one the user chose.
"""

from twisted.application.service import ServiceMaker

qqchat = ServiceMaker(
    "qqchat",
    "qqchat.tap",
    "QQ-style chat daemon (JSON lines over TCP)",
    "qqchat",
)
