#!/usr/bin/env python3
"""Generates redaction_hard_cases.jsonl: identifiers written the way people dodge filters.

The classes a black-box review found missed (issue 27): e-mail addresses spelled out or
bracketed (`jane dot doe at example dot com`, `name [at] host [dot] fr`, `{at}`, `<at>`),
full-width `＠`, `mailto:` with `%40`, an `@` between spaces; phone numbers with en or em
dashes, or written after `#`; lower-case IBANs, IBANs grouped with dots; card numbers grouped
with dots or slashes; and a national identifier of *another* country than the node's (a UK
NINO in a German comment). Each line has the same shape as redaction_corpus.jsonl (country,
name, text, byte ranges of the planted identifiers), in the same nine locales.

Deterministic: `python3 make_redaction_hard_cases.py > redaction_hard_cases.jsonl` reproduces
the file. Everything is invented; checksums are valid but the numbers belong to nobody.
"""

import json
import random

import make_redaction_corpus as base

rng = random.Random(20261206)
base.rng = rng  # the base generator's helpers draw from this file's seed

LOCALES = {
    "en": "GB", "de": "DE", "fr": "FR", "es": "ES", "it": "IT",
    "nl": "NL", "pt": "BR", "ja": "JP", "us": "US",
}

# One carrier sentence per locale and slot; {x} is the planted identifier.
CARRIERS = {
    "en": ["Please write to {x} about the refund.", "You can reach me on {x} any time.",
           "My details are {x}, thanks.", "Use {x} for the payment, not the old one."],
    "de": ["Bitte schreiben Sie an {x} wegen der Erstattung.", "Ich bin unter {x} erreichbar.",
           "Meine Angaben: {x}, danke.", "Bitte {x} verwenden, nicht die alte."],
    "fr": ["Écrivez-moi à {x} pour le remboursement.", "Joignable au {x} toute la journée.",
           "Mes coordonnées : {x}, merci.", "Utilisez {x} pour le paiement."],
    "es": ["Escríbanme a {x} por el reembolso.", "Pueden llamarme al {x} cuando quieran.",
           "Mis datos son {x}, gracias.", "Usen {x} para el pago, no la antigua."],
    "it": ["Scrivetemi a {x} per il rimborso.", "Sono raggiungibile al {x} tutto il giorno.",
           "I miei dati: {x}, grazie.", "Usate {x} per il pagamento."],
    "nl": ["Mail me op {x} over de terugbetaling.", "Ik ben bereikbaar op {x}.",
           "Mijn gegevens: {x}, bedankt.", "Gebruik {x} voor de betaling."],
    "pt": ["Escreva para {x} sobre o reembolso.", "Podem me ligar no {x} a qualquer hora.",
           "Meus dados: {x}, obrigada.", "Usem {x} para o pagamento."],
    "ja": ["返金の件は {x} までご連絡ください。", "{x} にいつでも電話してください。",
           "私の情報は {x} です。", "支払いには {x} を使ってください。"],
    "us": ["Email me at {x} about the credit.", "Call {x} anytime after lunch.",
           "My info is {x}, thanks.", "Use {x} for the payment instead."],
}

DOMAINS = ["example.com", "mail.example.org", "beispiel.de", "exemple.fr", "voorbeeld.nl",
           "exemplo.com.br", "example.co.jp", "posta.example.it", "correo.example.es"]
LOCALS = ["jane.doe", "m.rossi", "kundin77", "jp.martin", "lucia_g", "d.devries", "taro.y"]


def spelled(local, domain, at, dot):
    return local.replace(".", dot) + at + domain.replace(".", dot)


def email():
    local, domain = rng.choice(LOCALS), rng.choice(DOMAINS)
    form = rng.randrange(8)
    if form == 0:
        return spelled(local, domain, " at ", " dot ")
    if form == 1:
        return spelled(local, domain, " [at] ", " [dot] ")
    if form == 2:
        return spelled(local, domain, "{at}", "{dot}")
    if form == 3:
        return spelled(local, domain, " (at) ", " (dot) ")
    if form == 4:
        return spelled(local, domain, "<at>", ".")
    if form == 5:
        return f"{local}＠{domain}"
    if form == 6:
        return f"{local}%40{domain}"  # after "mailto:", outside the label
    return f"{local} @ {domain}"


DASHES = ["\u2013", "\u2014"]


def phone(country):
    form = rng.randrange(3)
    if form == 0:  # an en or em dash between the groups
        d = rng.choice(DASHES)
        return rng.choice([
            f"0171{d}{base.digits(7)}",
            f"+49 171 {d} {base.digits(3)} {base.digits(4)}",
            f"06{d}{base.digits(2)}{d}{base.digits(2)}{d}{base.digits(2)}{d}{base.digits(2)}",
            f"415{d}555{d}{base.digits(4)}",
            f"090{d}{base.digits(4)}{d}{base.digits(4)}",
        ])
    if form == 1:  # straight after a '#'
        return rng.choice([f"+{base.digits(11)}", f"0{base.digits(10)}", f"+44 7{base.digits(9)}"])
    return rng.choice(base.PHONES[country])()


def iban():
    country = rng.choice(["DE", "FR", "NL", "GB", "ES", "IT", "BE", "PT"])
    compact = base.iban(country).replace(" ", "")
    form = rng.randrange(3)
    if form == 0:
        return compact.lower()
    if form == 1:
        return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4)).lower()
    return ".".join(compact[i:i + 4] for i in range(0, len(compact), 4))


def card():
    n = base.luhn_complete(rng.choice(["4", "51", "53", "55"]), 16)
    return rng.choice([".", "/"]).join(n[i:i + 4] for i in range(0, 16, 4))


FOREIGN = ["GB", "ES", "IT", "FR", "BR", "US"]


def foreign_nid(country):
    other = rng.choice([c for c in FOREIGN if c != country])
    return base.nid(other)


def line(lang, kind):
    country = LOCALES[lang]
    carrier = rng.choice(CARRIERS[lang])
    prefix = ""
    if kind == "EMAIL":
        value = email()
        if "%40" in value:
            prefix = "mailto:"
    elif kind == "PHONE":
        value = phone(country)
        if value[0] in "+0" and rng.random() < 0.5 and "\u2013" not in value and "\u2014" not in value:
            prefix = "#"
    elif kind == "IBAN":
        value = iban()
    elif kind == "CARD":
        value = card()
    else:
        value = foreign_nid(country)
    before, after = carrier.split("{x}")
    head = (before + prefix).encode()
    text = head + value.encode() + after.encode()
    names = base.LANGS[lang][1]
    return {
        "lang": lang,
        "country": country,
        "name": names[rng.randrange(len(names))],
        "text": text.decode(),
        "pii": [{"kind": kind, "start": len(head), "end": len(head) + len(value.encode()),
                 "value": value}],
    }


KINDS = ["EMAIL"] * 10 + ["PHONE"] * 6 + ["IBAN"] * 4 + ["CARD"] * 3 + ["NATIONAL_ID"] * 3
lines = [line(lang, kind) for lang in LOCALES for kind in KINDS]
for k, l in enumerate(lines):
    l["id"] = k
    print(json.dumps(l, ensure_ascii=False))
