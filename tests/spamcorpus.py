"""A ham and spam corpus made by the tests (nothing downloaded): messages generated from
word lists and templates with a seeded random generator, so every run sends the same mail.

Ham looks like mail between people and from services they asked for: a From with a
matching display name, Date and Message-ID, plain text (or text plus HTML), ordinary
sentences, at most a couple of links to named hosts. Spam has what the rules look for in
real spam: shouting or offer subjects, missing or broken Date/Message-ID, HTML only, the
usual phrases, links to bare IP addresses, a display name that shows another address,
executable attachments, freemail Reply-To, undisclosed recipients.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass

_HAM_TEXT = (
    "meeting agenda project review notes garden weekend dinner family school invoice "
    "report draft budget schedule library concert train ticket holiday photos recipe "
    "quarterly minutes contract lunch tomorrow thursday office plans software release "
    "birthday party question answer update thanks regards colleague team coffee"
)
HAM_WORDS = tuple(_HAM_TEXT.split())
SPAM_SUBJECTS = (
    "URGENT BUSINESS PROPOSAL FOR YOU",
    "Congratulations, you are a winner",
    "Cheap meds without prescription",
    "Crypto profit guaranteed 100% free",
    "Lottery notification: claim now",
    "Act now: weight loss miracle",
)
SPAM_PHRASES = (
    "click here", "limited time offer", "risk-free", "wire transfer", "claim your prize",
    "no prescription", "verify your account", "million dollars", "you have been selected",
)  # fmt: skip


@dataclass(frozen=True)
class Sample:
    msgid: str
    data: bytes
    spam: bool


def _sentence(rng: random.Random) -> str:
    words = rng.choices(HAM_WORDS, k=rng.randint(6, 14))
    return " ".join(words).capitalize() + "."


def ham(rng: random.Random, n: int, sender: str = "friend@sender.example") -> Sample:
    name = sender.split("@")[0].capitalize()
    msgid = f"ham{n}.{rng.randrange(10**9)}@sender.example"
    text = "\r\n".join(_sentence(rng) for _ in range(rng.randint(3, 8)))
    head = [
        f"From: {name} Example <{sender}>",
        "To: Alice <alice@example.test>",
        f"Subject: {' '.join(rng.choices(HAM_WORDS, k=3)).capitalize()}",
        "Date: Wed, 25 Nov 2026 12:00:00 +0000",
        f"Message-ID: <{msgid}>",
        "MIME-Version: 1.0",
    ]
    if n % 3 == 0:  # some ham is multipart/alternative with an HTML part
        body = (
            "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n"
            "--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>" + text + "</p>\r\n"
            "--b1--\r\n"
        )
        head.append('Content-Type: multipart/alternative; boundary="b1"')
    else:
        body = text + "\r\nSee https://docs.sender.example/page for the notes.\r\n"
        head.append("Content-Type: text/plain; charset=utf-8")
    return Sample(msgid, ("\r\n".join(head) + "\r\n\r\n" + body).encode(), False)


def spam(rng: random.Random, n: int, sender: str = "promo@sender.example") -> Sample:
    msgid = f"spam{n}.{rng.randrange(10**9)}@sender.example"
    phrases = rng.sample(SPAM_PHRASES, 3)
    ip = f"198.51.100.{rng.randint(1, 254)}"
    html = (
        f"<html><body><h1>{phrases[0].upper()}!</h1><p>{phrases[1]} and {phrases[2]}: "
        f'<a href="http://{ip}/win?id={n}">here</a></p></body></html>'
    )
    head = [
        f"From: support@bank.example <{sender}>",
        "To: undisclosed-recipients:;",
        f"Subject: {rng.choice(SPAM_SUBJECTS)}",
        "Reply-To: payout.desk@gmail.com",
        "MIME-Version: 1.0",
    ]
    if n % 2:
        head.append(f"Message-ID: <{msgid}>")  # the rest even lack one; all lack a Date
        head.append("Date: someday soon")
        body = html
        head.append("Content-Type: text/html; charset=utf-8")
    else:
        head.append(f"X-Corpus-Id: <{msgid}>")
        payload = base64.b64encode(b"MZ\x90\x00not really a program").decode()
        body = (
            "--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n"
            "--b2\r\nContent-Type: application/octet-stream; name=\"invoice.exe\"\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            'Content-Disposition: attachment; filename="invoice.exe"\r\n\r\n'
            + payload + "\r\n--b2--\r\n"
        )  # fmt: skip
        head.append('Content-Type: multipart/mixed; boundary="b2"')
    return Sample(msgid, ("\r\n".join(head) + "\r\n\r\n" + body).encode(), True)


def corpus(seed: int = 12, count: int = 12) -> list[Sample]:
    rng = random.Random(seed)
    samples = [ham(rng, n) for n in range(count)] + [spam(rng, n) for n in range(count)]
    rng.shuffle(samples)
    return samples
