"""robot.compose.html_text: the generated plain-text part of HTML-only mail."""

from __future__ import annotations

import pytest

from robot.compose.html_text import html_to_text


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>Hello</p>", "Hello\n"),
        ("plain words", "plain words\n"),
        ("", "\n"),
        ("<p>One</p><p>Two</p>", "One\n\nTwo\n"),
        ("<div>One</div>\n\n\n<div>Two</div>", "One\n\nTwo\n"),
        ("a<br>b<br/>c", "a\nb\nc\n"),
        ("<p>  lots   of\n\t  space  </p>", "lots of space\n"),
        ("<h1>Title</h1>Body", "Title\n\nBody\n"),
        ("<ul><li>pen</li><li>book</li></ul>", "- pen\n- book\n"),
        ("<ol><li>first<li>second</ol>", "- first\n- second\n"),
        ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>", "a b\n\nc\n"),
        ("Fish &amp; chips &lt;3 &eacute;t&#233; &#x263A;", "Fish & chips <3 été ☺\n"),
        ("<img src='logo.png' alt='Example School'> News", "[Example School] News\n"),
        ("<img src='spacer.gif'>News", "News\n"),
        ("<p>Dear Ann,<br><br><br><br>bye</p>", "Dear Ann,\n\nbye\n"),
    ],
)
def test_layout(html: str, text: str) -> None:
    assert html_to_text(html) == text


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ('<a href="https://example.org/a">the form</a>', "the form (https://example.org/a)"),
        ('<a href="https://example.org/a">https://example.org/a</a>', "https://example.org/a"),
        ('<a href="https://example.org/a"></a>', "https://example.org/a"),
        ('<a href="mailto:desk@example.org">desk@example.org</a>', "desk@example.org"),
        ('<a href="mailto:desk@example.org">write us</a>', "write us (mailto:desk@example.org)"),
        ('<a href="#top">back to top</a>', "back to top"),
        ("<a>no target</a>", "no target"),
        ('<a href="https://x.org/?a=1&amp;b=2">go</a>', "go (https://x.org/?a=1&b=2)"),
        ('<a href="https://x.org/l"><img src="l.png" alt="logo"></a>', "[logo] (https://x.org/l)"),
        (
            '<a href="https://x.org/o">outer <b>bold</b> text</a>',
            "outer bold text (https://x.org/o)",
        ),
    ],
)
def test_links_are_kept(html: str, text: str) -> None:
    assert html_to_text(html) == text + "\n"


def test_several_links_in_a_paragraph() -> None:
    text = html_to_text(
        '<p>See <a href="https://a.example/">A</a> and <a href="https://b.example/">B</a>.</p>'
    )
    assert text == "See A (https://a.example/) and B (https://b.example/).\n"


def test_invisible_parts_are_dropped() -> None:
    html = """<!DOCTYPE html>
<html><head><title>Newsletter</title><style>p { color: red; }</style>
<script>var secret = "x";</script></head>
<body><p>Visible</p><script>alert(1)</script><!-- a comment --></body></html>"""
    text = html_to_text(html)
    assert text == "Visible\n"


def test_a_whole_newsletter_reads_well() -> None:
    html = """
    <html><body>
      <h2>Spring term</h2>
      <p>Dear parents,</p>
      <p>the <b>school fair</b> is on <i>Saturday</i>.</p>
      <ul>
        <li>Cakes: <a href="https://example.org/cakes">sign up</a></li>
        <li>Stalls</li>
      </ul>
      <p>Kind regards,<br>The Office</p>
    </body></html>
    """
    assert html_to_text(html) == (
        "Spring term\n"
        "\n"
        "Dear parents,\n"
        "\n"
        "the school fair is on Saturday.\n"
        "\n"
        "- Cakes: sign up (https://example.org/cakes)\n"
        "- Stalls\n"
        "\n"
        "Kind regards,\n"
        "The Office\n"
    )


def test_broken_html_does_not_raise() -> None:
    text = html_to_text("<p>unclosed <b>bold <a href='https://x.org'>link")
    assert "unclosed bold link" in text
    assert "<" not in text
