"""The account name and password rules, as pure functions: registration and the
operator's ``qqchat-admin create`` share them, so an account made either way obeys
the same rules."""

from __future__ import annotations

import re

from qqchat.errors import ChatError
from qqchat.names import check_name
from qqchat.services.limits import Limits

_NAME = re.compile(r"[\w.\-]+")
DEFAULT_LIMITS = Limits()


def check_user_name(name: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise ``bad_name`` unless ``name`` may name a new account."""
    if not 1 <= len(name) <= limits.name_max or not _NAME.fullmatch(name):
        raise ChatError("bad_name", f"a name is 1-{limits.name_max} letters, digits, "
                                    "'_', '.' or '-'")
    if name.isdigit():
        raise ChatError("bad_name", "a name cannot be all digits: those are user ids")
    check_name(name)


def check_password(password: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise ``weak_password`` unless ``password`` has an allowed length."""
    if not limits.password_min <= len(password) <= limits.password_max:
        raise ChatError("weak_password", f"a password is {limits.password_min}-"
                                         f"{limits.password_max} characters")
