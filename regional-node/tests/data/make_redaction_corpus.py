#!/usr/bin/env python3
"""Generates redaction_corpus.jsonl: a labelled synthetic corpus of CX survey comments.

Each line is one comment with the subject's name (as the node knows it), the country whose
rules apply, and the byte ranges (UTF-8) of every planted identifier: EMAIL, PHONE, IBAN, CARD,
NATIONAL_ID and NAME. Comments also carry look-alikes that must survive (dates, times, amounts,
order and ticket references, year ranges, percentages), so that precision means something.

Deterministic: `python3 make_redaction_corpus.py > redaction_corpus.jsonl` reproduces the file.
All names, numbers and addresses are invented; IBANs, card numbers and national identifiers are
generated with valid checksums but belong to nobody.
"""

import json
import random

rng = random.Random(20261123)

LANGS = {
    "en": ("GB", ["Oliver Smith", "Amelia Jones", "Harry O'Brien", "Sophie Taylor-Evans"]),
    "de": ("DE", ["Jürgen Müller", "Lena Schröder", "Felix Weiß", "Anna-Lena Becker"]),
    "fr": ("FR", ["Chloé Lefèvre", "Hugo Dubois", "Inès Garçon", "Jean-Pierre Martin"]),
    "es": ("ES", ["José Núñez", "Lucía García", "Álvaro Peña", "María del Carmen Ruiz"]),
    "it": ("IT", ["Giulia Rossi", "Lorenzo Bianchi", "Niccolò Ferrari", "Chiara Esposito"]),
    "nl": ("NL", ["Daan de Vries", "Sanne Jansen", "Bram van Dijk", "Fleur Bakker"]),
    "pt": ("BR", ["João Silva", "Ana Souza", "Luís Gonçalves", "Beatriz Araújo"]),
    "ja": ("JP", ["山田 太郎", "佐藤 花子", "鈴木 一郎", "高橋 美咲"]),
    "us": ("US", ["Emily Johnson", "Michael Brown", "Jessica Davis", "Christopher Miller"]),
}

# Sentences per language; slots: {name} {first} {last} {email} {phone} {iban} {card} {nid}
# and look-alikes {date} {time} {amount} {order} {years} {pct} {ticket}.
TEMPLATES = {
    "en": [
        "Please call me back on {phone}, I waited since {date}.",
        "My email is {email}; the refund of {amount} never arrived.",
        "{first} here - order {order} was late again, {pct} of my orders are.",
        "Charge it to card {card}, not the old one. Thanks, {name}",
        "Transfer the {amount} to {iban} please, reference {ticket}.",
        "Agent was great. {last}'s account still shows the wrong address since {years}.",
        "Reach me at {email} or {phone} after {time}.",
        "My NI number is {nid}, why do you need it again?",
        "Support ticket {ticket} opened on {date} at {time}, still no answer.",
        "I am {name} and I have been a customer {years}, {pct} satisfied.",
    ],
    "de": [
        "Bitte rufen Sie mich unter {phone} zurück, ich warte seit dem {date}.",
        "Meine E-Mail ist {email}, die Gutschrift über {amount} fehlt noch.",
        "Hier {first}: Bestellung {order} kam wieder zu spät, wie {pct} meiner Bestellungen.",
        "Bitte die Karte {card} belasten. Gruß, {name}",
        "Überweisen Sie die {amount} bitte auf {iban}, Vorgang {ticket}.",
        "Frau {last} hat mir sehr geholfen, danke! Kunde seit {years}.",
        "Erreichbar unter {email} oder {phone} ab {time} Uhr.",
        "Herr {last} ist nicht erreichbar, meine Steuer-ID brauchen Sie nicht.",
        "Ticket {ticket} vom {date} um {time} ist immer noch offen.",
        "Ich, {name}, bin seit {years} Kunde und zu {pct} zufrieden.",
    ],
    "fr": [
        "Merci de me rappeler au {phone}, j'attends depuis le {date}.",
        "Mon adresse est {email}, le remboursement de {amount} n'est pas arrivé.",
        "C'est {first} : la commande {order} est encore en retard, comme {pct} des commandes.",
        "Débitez la carte {card} s'il vous plaît. Cordialement, {name}",
        "Virez les {amount} sur {iban}, dossier {ticket}.",
        "Madame {last} a été très aimable. Cliente depuis {years}.",
        "Joignable au {email} ou au {phone} après {time}.",
        "Mon numéro de sécurité sociale est {nid}, est-ce nécessaire ?",
        "Le ticket {ticket} du {date} à {time} n'est toujours pas traité.",
        "Moi, {name}, cliente depuis {years}, satisfaite à {pct}.",
    ],
    "es": [
        "Por favor llámenme al {phone}, espero desde el {date}.",
        "Mi correo es {email}; el reembolso de {amount} no ha llegado.",
        "Soy {first}: el pedido {order} llegó tarde otra vez, como el {pct} de los pedidos.",
        "Cárguenlo a la tarjeta {card}. Saludos, {name}",
        "Transfieran los {amount} a {iban}, expediente {ticket}.",
        "La señora {last} fue muy amable. Cliente desde {years}.",
        "Contacto: {email} o {phone} a partir de las {time}.",
        "Mi DNI es {nid}, ¿por qué lo piden otra vez?",
        "La incidencia {ticket} del {date} a las {time} sigue abierta.",
        "Yo, {name}, cliente desde {years}, satisfecha al {pct}.",
    ],
    "it": [
        "Richiamatemi al {phone}, aspetto dal {date}.",
        "La mia email è {email}; il rimborso di {amount} non è arrivato.",
        "Sono {first}: l'ordine {order} è di nuovo in ritardo, come il {pct} degli ordini.",
        "Addebitate sulla carta {card}. Saluti, {name}",
        "Bonificate i {amount} su {iban}, pratica {ticket}.",
        "La signora {last} è stata gentilissima. Cliente dal {years}.",
        "Contattatemi a {email} o al {phone} dopo le {time}.",
        "Il mio codice fiscale è {nid}, serve davvero?",
        "Il ticket {ticket} del {date} alle {time} è ancora aperto.",
        "Io, {name}, cliente dal {years}, soddisfatta al {pct}.",
    ],
    "nl": [
        "Bel mij terug op {phone}, ik wacht sinds {date}.",
        "Mijn e-mail is {email}; de terugbetaling van {amount} is er nog niet.",
        "Met {first}: bestelling {order} was weer te laat, net als {pct} van mijn bestellingen.",
        "Schrijf het af van kaart {card}. Groet, {name}",
        "Maak de {amount} over naar {iban}, dossier {ticket}.",
        "Mevrouw {last} was erg behulpzaam. Klant sinds {years}.",
        "Bereikbaar via {email} of {phone} na {time}.",
        "Mijn BSN is {nid}, waarom vragen jullie dat?",
        "Ticket {ticket} van {date} om {time} staat nog open.",
        "Ik, {name}, ben sinds {years} klant en {pct} tevreden.",
    ],
    "pt": [
        "Por favor me liguem no {phone}, espero desde {date}.",
        "Meu e-mail é {email}; o reembolso de {amount} não chegou.",
        "Aqui é {first}: o pedido {order} atrasou de novo, como {pct} dos pedidos.",
        "Cobrem no cartão {card}. Abraço, {name}",
        "Transfiram os {amount} para {iban}, protocolo {ticket}.",
        "A senhora {last} foi muito atenciosa. Cliente desde {years}.",
        "Contato: {email} ou {phone} depois das {time}.",
        "Meu CPF é {nid}, por que pedem de novo?",
        "O chamado {ticket} de {date} às {time} continua aberto.",
        "Eu, {name}, cliente desde {years}, {pct} satisfeita.",
    ],
    "ja": [
        "{phone}に折り返しお電話ください。{date}から待っています。",
        "メールアドレスは {email} です。{amount}の返金がまだです。",
        "{last}です。注文{order}がまた遅れました。",
        "カード {card} で支払います。{name}",
        "{amount}を {iban} に振り込んでください。",
        "{last}様の対応はとても丁寧でした。{years}から利用しています。",
        "連絡先は {email} または {phone} です。{time}以降にお願いします。",
        "{first}より:チケット{ticket}({date} {time})がまだ未解決です。",
        "{name}です。満足度は{pct}です。",
        "{phone}までご連絡ください。{last}",
    ],
    "us": [
        "Call me back at {phone}, I've been waiting since {date}.",
        "My email is {email} and the {amount} credit is missing.",
        "{first} here, order {order} was late again, like {pct} of them.",
        "Bill card {card} instead. Thanks, {name}",
        "Wire the {amount} to {iban}, ref {ticket}.",
        "{last}'s account still has the old address since {years}.",
        "Text {phone} or write to {email} after {time}.",
        "Why do you need my SSN {nid} for a survey?",
        "Ticket {ticket} from {date} at {time} is still open.",
        "I'm {name}, customer since {years}, {pct} happy.",
    ],
}

TRANSLIT = {"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"}


def strip_accents(s):
    import unicodedata
    return "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")


def email_for(name, lang):
    if lang == "ja":
        local = rng.choice(["taro.yamada", "hanako_s", "ichiro77", "misaki.t"])
        return f"{local}@example.co.jp"
    first, *rest = name.replace("-", " ").split()
    last = rest[-1] if rest else "x"
    local = rng.choice([
        f"{first}.{last}", f"{first[0]}{last}", f"{first}{rng.randint(1, 99)}", f"{last}+cx",
    ])
    if rng.random() < 0.7:
        local = strip_accents(local)
    local = local.lower().replace("'", "")
    domain = rng.choice(["example.com", "mail.example.org", "beispiel.de", "exemple.fr",
                         "correo.example.es", "posta.example.it", "voorbeeld.nl", "exemplo.com.br"])
    if rng.random() < 0.08:
        return f"{local}(at){domain.replace('.', '(dot)')}"
    return f"{local}@{domain}"


def digits(n):
    return "".join(str(rng.randint(0, 9)) for _ in range(n))


PHONES = {
    "GB": [lambda: f"+44 20 {digits(4)} {digits(4)}", lambda: f"07{digits(3)} {digits(6)}",
           lambda: f"020 {digits(4)} {digits(4)}"],
    "DE": [lambda: f"+49 171 {digits(7)}", lambda: f"0171 {digits(7)}", lambda: f"030/{digits(7)}",
           lambda: f"+49 (0)30 {digits(3)} {digits(4)}", lambda: f"0049 89 {digits(8)}"],
    "FR": [lambda: f"+33 6 {digits(2)} {digits(2)} {digits(2)} {digits(2)}",
           lambda: f"06 {digits(2)} {digits(2)} {digits(2)} {digits(2)}",
           lambda: f"01.{digits(2)}.{digits(2)}.{digits(2)}.{digits(2)}"],
    "ES": [lambda: f"+34 6{digits(2)} {digits(3)} {digits(3)}", lambda: f"6{digits(2)} {digits(2)} {digits(2)} {digits(2)}"],
    "IT": [lambda: f"+39 06 {digits(4)} {digits(4)}", lambda: f"3{digits(2)} {digits(3)} {digits(4)}"],
    "NL": [lambda: f"+31 6 {digits(8)}", lambda: f"06-{digits(8)}", lambda: f"020 {digits(3)} {digits(4)}"],
    "BR": [lambda: f"+55 11 9{digits(4)}-{digits(4)}", lambda: f"(11) 9{digits(4)}-{digits(4)}"],
    "JP": [lambda: f"090-{digits(4)}-{digits(4)}", lambda: f"+81 90-{digits(4)}-{digits(4)}",
           lambda: f"03-{digits(4)}-{digits(4)}"],
    "US": [lambda: f"+1 (415) 555-{digits(4)}", lambda: f"415-555-{digits(4)}",
           lambda: f"(212) 555 {digits(4)}", lambda: f"+1 212.555.{digits(4)}"],
}

IBAN_LEN = {"DE": 22, "FR": 27, "ES": 24, "IT": 27, "NL": 18, "GB": 22, "BR": 29, "BE": 16, "PT": 25}


def iban_check(country, bban):
    s = bban + country + "00"
    n = int("".join(str(int(c, 36)) for c in s))
    return f"{98 - n % 97:02d}"


def iban(country):
    if country not in IBAN_LEN:
        country = rng.choice(["DE", "FR", "NL", "GB"])
    n = IBAN_LEN[country] - 4
    if country in ("NL", "GB"):
        bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4)) + digits(n - 4)
    elif country == "IT":
        bban = rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + digits(n - 1)
    else:
        bban = digits(n)
    compact = country + iban_check(country, bban) + bban
    if rng.random() < 0.6:
        return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))
    return compact


def luhn_complete(prefix, length):
    body = prefix + digits(length - len(prefix) - 1)
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return body + str((10 - total % 10) % 10)


def card():
    kind = rng.random()
    if kind < 0.15:
        n = luhn_complete(rng.choice(["34", "37"]), 15)
        return f"{n[:4]} {n[4:10]} {n[10:]}"
    n = luhn_complete(rng.choice(["4", "51", "53", "55"]), 16)
    sep = rng.choice([" ", "-", ""])
    return sep.join(n[i:i + 4] for i in range(0, 16, 4))


def nid(country):
    if country == "GB":
        return f"{rng.choice(['AB', 'CE', 'JK', 'TW'])} {digits(2)} {digits(2)} {digits(2)} {rng.choice('ABCD')}"
    if country == "ES":
        n = rng.randint(10_000_000, 99_999_999)
        return f"{n}{'TRWAGMYFPDXBNJZSQVHLCKE'[n % 23]}"
    if country == "US":
        return f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
    if country == "BR":
        d = [rng.randint(0, 9) for _ in range(9)]
        for n in (9, 10):
            s = sum(d[i] * (n + 1 - i) for i in range(n))
            r = s * 10 % 11
            d.append(0 if r == 10 else r)
        t = "".join(map(str, d))
        return f"{t[:3]}.{t[3:6]}.{t[6:9]}-{t[9:]}"
    if country == "FR":
        body = f"{rng.choice('12')}{rng.randint(40, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 95):02d}{digits(3)}{digits(3)}"
        key = 97 - int(body) % 97
        return f"{body[0]} {body[1:3]} {body[3:5]} {body[5:7]} {body[7:10]} {body[10:13]} {key:02d}"
    if country == "NL":
        while True:
            d = [rng.randint(0, 9) for _ in range(9)]
            s = sum(d[i] * (9 - i) for i in range(8)) - d[8]
            if s % 11 == 0 and s != 0:
                return "".join(map(str, d))
    if country == "IT":
        L = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        return ("".join(rng.choice(L) for _ in range(6)) + digits(2) + rng.choice("ABCDEHLMPRST")
                + f"{rng.randint(1, 71):02d}" + rng.choice(L) + digits(3) + rng.choice(L))
    return None


def date():
    return rng.choice([
        f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.2026",
        f"{rng.randint(1, 12)}/{rng.randint(1, 28)}/2026",
    ])


def lookalikes():
    return {
        "date": date(),
        "time": f"{rng.randint(8, 20)}:{rng.choice(['00', '15', '30', '45'])}",
        "amount": rng.choice([f"{rng.randint(10, 999)},{rng.randint(0, 99):02d} €",
                              f"${rng.randint(1, 9)},{rng.randint(100, 999)}.{rng.randint(0, 99):02d}",
                              f"{rng.randint(10, 99)}.{rng.randint(0, 99):02d} EUR",
                              f"{rng.randint(1, 9)}.{rng.randint(100, 999)},00 EUR"]),
        "order": rng.choice([f"#{digits(8)}", f"{rng.randint(1000, 99999)}", f"A-{digits(5)}"]),
        "years": rng.choice([f"{rng.randint(2005, 2015)}-{rng.randint(2016, 2025)}", f"{rng.randint(2000, 2024)}"]),
        "pct": f"{rng.randint(10, 99)}%",
        "ticket": rng.choice([f"TK-2026-{digits(4)}", f"#{digits(6)}", f"CS{digits(5)}"]),
    }


def build(lang, template, name, country):
    first, *rest = name.split()
    last = rest[-1] if rest else first
    values = lookalikes()
    planted = {}
    if "{email}" in template:
        planted["email"] = ("EMAIL", email_for(name, lang))
    if "{phone}" in template:
        planted["phone"] = ("PHONE", rng.choice(PHONES[country])())
    if "{iban}" in template:
        planted["iban"] = ("IBAN", iban(country))
    if "{card}" in template:
        planted["card"] = ("CARD", card())
    if "{nid}" in template:
        v = nid(country)
        planted["nid"] = ("NATIONAL_ID", v) if v else ("PHONE", rng.choice(PHONES[country])())
    if "{name}" in template:
        planted["name"] = ("NAME", name)
    if "{first}" in template:
        planted["first"] = ("NAME", first)
    if "{last}" in template:
        variant = last
        if lang == "de" and any(c in last for c in TRANSLIT) and rng.random() < 0.4:
            variant = "".join(TRANSLIT.get(c, c) for c in last)  # Mueller for Müller
        elif lang in ("fr", "es", "pt") and rng.random() < 0.3:
            variant = strip_accents(last)  # Lefevre for Lefèvre
        planted["last"] = ("NAME", variant)
    # Assemble, recording byte offsets of each planted value.
    out, spans, i = b"", [], 0
    while i < len(template):
        if template[i] == "{":
            j = template.index("}", i)
            slot = template[i + 1:j]
            if slot in planted:
                kind, value = planted[slot]
                start = len(out)
                out += value.encode()
                spans.append({"kind": kind, "start": start, "end": len(out), "value": value})
            else:
                out += values[slot].encode()
            i = j + 1
        else:
            out += template[i].encode()
            i += 1
    return {"lang": lang, "country": country, "name": name, "text": out.decode(), "pii": spans}


def main():
    lines = []
    for lang, (country, names) in LANGS.items():
        for n in range(60):
            template = TEMPLATES[lang][n % len(TEMPLATES[lang])]
            if lang == "de" and "{nid}" in template:
                template = template.replace("{nid}", "{phone}")
            name = names[rng.randrange(len(names))]
            lines.append(build(lang, template, name, country))
    for k, line in enumerate(lines):
        line["id"] = k
        print(json.dumps(line, ensure_ascii=False))


if __name__ == "__main__":  # make_redaction_hard_cases.py imports the helpers
    main()
