"""How a number gets into the report's text: :class:`Html` (each number a ``<span class="num"
data-key=...>`` a test checks against the file) and :class:`Text` (the same sentences as Markdown);
the page's small HTML helpers."""

from __future__ import annotations

import html

from .results import fmt, lookup


class Html:
    """Builds the page; ``num`` is the only way a number gets in."""

    def __init__(self, res: dict):
        self.res = res

    def num(self, key: str, digits: int = 3) -> str:
        text = html.escape(fmt(lookup(self.res, key), digits))
        return f'<span class="num" data-key="{html.escape(key)}" data-digits="{digits}">{text}</span>'

    def esc(self, text: str) -> str:
        return html.escape(text)

    def code(self, text: str) -> str:
        return f"<code>{text}</code>"

    def interval(self, key: str) -> str:
        """``diff (95% CI lo to hi)`` of a claim; with seeds, the interval over seeds next to the one over prompts."""
        claim = lookup(self.res, key)
        text = f"{self.num(key + '.diff', -3)} (95% CI {self.num(key + '.lo', -3)} to {self.num(key + '.hi', -3)}"
        if "seeds" in claim:
            text = (
                f"{self.num(key + '.seeds.diff', -3)} (95% CI over {self.num(key + '.seeds.n', 0)} seeds {self.num(key + '.seeds.lo', -3)} "
                f"to {self.num(key + '.seeds.hi', -3)}; over prompts {self.num(key + '.lo', -3)} to {self.num(key + '.hi', -3)}"
            )
        return text + ")"


class Text(Html):
    """The same sentences as plain text (Markdown): numbers without their spans."""

    def num(self, key: str, digits: int = 3) -> str:
        return fmt(lookup(self.res, key), digits)

    def esc(self, text: str) -> str:
        return text

    def code(self, text: str) -> str:
        return f"`{text}`"


def th_row(*titles: str) -> str:
    return "<tr>" + "".join(f"<th>{t}</th>" for t in titles) + "</tr>"


def td_row(*cells: str) -> str:
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def html_table(head: str, rows: list[str]) -> str:
    return "\n".join(["<table>" + head, *rows, "</table>"])


def block(*parts: str) -> str:
    """``parts`` on lines of their own between a section's heading and its ``</section>``."""
    return "\n" + "\n".join(parts) + "\n"


def figure_tag(name: str, caption: str) -> str:
    return f'<figure><img src="figures/{name}.png" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
