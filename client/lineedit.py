"""A small line editor for a terminal in raw mode.

The terminal's own line discipline cannot redraw a half-typed line after a
chat message is printed above it, so the console reads keys itself and keeps
the line here. Pure: keys in, buffer state and escape sequences out.
"""

from __future__ import annotations

import codecs
import unicodedata

_ESC = "\x1b"

# control bytes -> key names (keys are single characters of text, or "<name>")
_CONTROL = {
    "\r": "<enter>", "\n": "<enter>", "\x7f": "<backspace>", "\x08": "<backspace>",
    "\x01": "<home>", "\x05": "<end>", "\x02": "<left>", "\x06": "<right>",
    "\x03": "<ctrl-c>", "\x04": "<ctrl-d>", "\x0b": "<kill-end>", "\x15": "<kill-line>",
    "\x17": "<kill-word>", "\x0c": "<redraw>", "\x10": "<up>", "\x0e": "<down>",
    "\x1a": "<suspend>", "\t": " ",
}
_CSI_FINAL = {"A": "<up>", "B": "<down>", "C": "<right>", "D": "<left>", "H": "<home>",
              "F": "<end>"}
_CSI_TILDE = {"1": "<home>", "7": "<home>", "4": "<end>", "8": "<end>", "3": "<delete>"}


class KeyDecoder:
    """Bytes from the terminal -> keys; keeps partial UTF-8 and escape sequences."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._esc = ""
        self._after_cr = False

    def feed(self, data: bytes) -> list[str]:
        keys: list[str] = []
        for ch in self._utf8.decode(data):
            if self._esc:
                self._esc += ch
                key = self._escape()
                if key is not None:
                    if key:
                        keys.append(key)
                    self._esc = ""
                continue
            if ch == "\n" and self._after_cr:
                self._after_cr = False  # CR LF is one Enter
                continue
            self._after_cr = ch == "\r"
            if ch == _ESC:
                self._esc = ch
            elif ch in _CONTROL:
                keys.append(_CONTROL[ch])
            elif ch >= " " and unicodedata.category(ch) not in ("Cc", "Cf"):
                keys.append(ch)
        return keys

    def _escape(self) -> str | None:
        """The key for the pending escape sequence: None while incomplete, "" if unknown."""
        seq = self._esc
        if len(seq) == 2 and seq[1] not in "[O":
            return ""  # Alt+key: ignored
        if len(seq) < 3:
            return None
        final = seq[-1]
        if seq[1] == "O":
            return _CSI_FINAL.get(final, "")
        if "@" <= final <= "~":
            if final == "~":
                return _CSI_TILDE.get(seq[2:-1].split(";")[0], "")
            return _CSI_FINAL.get(final, "")
        return None if len(seq) < 16 else ""


def char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


class LineEditor:
    """The line being typed: cursor movement, deletion, history (Emacs-style keys)."""

    def __init__(self, history_size: int = 500) -> None:
        self.chars: list[str] = []
        self.cursor = 0
        self.history: list[str] = []
        self._history_size = history_size
        self._browse: int | None = None  # index into history while using up/down
        self._draft = ""

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def set_text(self, text: str) -> None:
        self.chars = list(text)
        self.cursor = len(self.chars)

    def take(self) -> str:
        """The finished line; the buffer is emptied and the line remembered."""
        line = self.text
        if line.strip() and (not self.history or self.history[-1] != line):
            self.history.append(line)
            del self.history[: -self._history_size]
        self.set_text("")
        self._browse = None
        return line

    def handle(self, key: str) -> str | None:
        """Apply one key. Returns an event for the caller ("enter", "eof", "interrupt",
        "suspend", "redraw") or None when only the buffer changed."""
        if len(key) == 1:
            self.chars.insert(self.cursor, key)
            self.cursor += 1
            return None
        if key == "<enter>":
            return "enter"
        if key == "<ctrl-c>":
            return "interrupt"
        if key == "<ctrl-d>":
            if not self.chars:
                return "eof"
            key = "<delete>"
        if key == "<suspend>":
            return "suspend"
        if key == "<redraw>":
            return "redraw"
        self._edit(key)
        return None

    def _edit(self, key: str) -> None:
        c = self.cursor
        if key == "<backspace>" and c > 0:
            del self.chars[c - 1]
            self.cursor -= 1
        elif key == "<delete>" and c < len(self.chars):
            del self.chars[c]
        elif key == "<left>":
            self.cursor = max(0, c - 1)
        elif key == "<right>":
            self.cursor = min(len(self.chars), c + 1)
        elif key == "<home>":
            self.cursor = 0
        elif key == "<end>":
            self.cursor = len(self.chars)
        elif key == "<kill-line>":
            del self.chars[:c]
            self.cursor = 0
        elif key == "<kill-end>":
            del self.chars[c:]
        elif key == "<kill-word>":
            start = c
            while start > 0 and self.chars[start - 1] == " ":
                start -= 1
            while start > 0 and self.chars[start - 1] != " ":
                start -= 1
            del self.chars[start:c]
            self.cursor = start
        elif key in ("<up>", "<down>"):
            self._history_step(-1 if key == "<up>" else 1)

    def _history_step(self, step: int) -> None:
        if not self.history:
            return
        if self._browse is None:
            if step > 0:
                return
            self._draft = self.text
            self._browse = len(self.history)
        pos = self._browse + step
        if pos < 0:
            return
        if pos >= len(self.history):
            self._browse = None
            self.set_text(self._draft)
            return
        self._browse = pos
        self.set_text(self.history[pos])


def draw(prompt: str, text: str, cursor: int, columns: int) -> tuple[str, int]:
    """Escape sequence that writes ``prompt + text`` from the start of the current row
    and leaves the cursor at ``cursor``; also returns the cursor's row offset, which
    ``erase`` needs to get back to the first row when the line wraps."""
    columns = max(columns, 2)
    full = prompt + text
    end = display_width(full)
    before = display_width(prompt + text[:cursor])
    out = [full]
    if end and end % columns == 0:
        out.append("\r\n")  # leave the pending-wrap state at the right margin
    end_row, target_row, target_col = end // columns, before // columns, before % columns
    if end_row > target_row:
        out.append(f"\x1b[{end_row - target_row}A")
    out.append("\r")
    if target_col:
        out.append(f"\x1b[{target_col}C")
    return "".join(out), target_row


def erase(cursor_row: int) -> str:
    """Escape sequence that removes a line drawn by ``draw`` and leaves the cursor at
    the start of its first row."""
    up = f"\x1b[{cursor_row}A" if cursor_row else ""
    return f"{up}\r\x1b[J"
