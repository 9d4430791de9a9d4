"""Small deterministic corpora for tests and the default run: a made-up world.

``text_corpus_entries`` describes fictional countries, their capitals, mountains and inventors
("The capital of Zorvania is Quellport."); ``text_corpus_questions`` gives (question, answer)
pairs that only a search of that corpus can answer. ``make_image_collection`` draws coloured
shapes and patterns with captions ("Emblem of Zorvania: a red circle ...") for image search.

Deliberate simplification: the world is generated from syllables with ``random.Random(seed)``;
names are unique but not checked against real places.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

from metis.tools.base import cache_root

_SYL = ["zor", "va", "quel", "port", "bre", "lk", "tam", "ris", "ol", "den", "kash", "mir", "ul",
        "thar", "nex", "o", "pha", "ry", "sel", "gon", "bax", "ti", "lun", "dra", "vek", "es",
        "cor", "im", "nal", "fen", "yth", "ar", "mos", "qui", "hel", "zan"]
_ANIMALS = ["heron", "lynx", "otter", "ibex", "falcon", "tortoise", "salamander", "bison",
            "marten", "crane", "gecko", "stag"]
_CURRENCIES = ["crown", "mark", "florin", "talon", "drift", "sol", "pence", "ducat"]
_THINGS = ["tide clock", "glass loom", "wind ledger", "steam quill", "copper compass",
           "salt lamp", "echo drum", "rope bridge winch", "ice press", "star map"]
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220),
           "yellow": (240, 210, 20), "black": (15, 15, 15), "white": (245, 245, 245),
           "purple": (130, 40, 160), "orange": (245, 130, 20)}


@dataclass
class Country:
    name: str
    capital: str
    currency: str
    animal: str
    mountain: str
    height_m: int
    founded: int
    inventor: str
    invention: str
    invented: int


def _name(rng: random.Random, used: set[str], parts: tuple[int, int] = (2, 3)) -> str:
    while True:
        word = "".join(rng.choice(_SYL) for _ in range(rng.randint(*parts))).capitalize()
        if 5 <= len(word) <= 12 and word not in used:
            used.add(word)
            return word


def world(n_countries: int = 60, seed: int = 0) -> list[Country]:
    rng = random.Random(seed)
    used: set[str] = set()
    out = []
    for _ in range(n_countries):
        name = _name(rng, used) + rng.choice(["ia", "ania", "and", "ora", "istan"])
        out.append(Country(
            name=name, capital=_name(rng, used), currency=rng.choice(_CURRENCIES),
            animal=rng.choice(_ANIMALS), mountain=_name(rng, used),
            height_m=rng.randint(1200, 8400), founded=rng.randint(900, 1900),
            inventor=f"{_name(rng, used, (1, 2))} {_name(rng, used)}",
            invention=f"{_name(rng, used)} {rng.choice(_THINGS)}", invented=rng.randint(1500, 1990)))
    return out


def text_corpus_entries(n_countries: int = 60, seed: int = 0) -> list[dict[str, str]]:
    """About ``5 * n_countries`` short entries ``{id, title, text}``."""
    docs = []
    for i, c in enumerate(world(n_countries, seed)):
        docs += [
            {"id": f"country-{i}", "title": c.name,
             "text": f"{c.name} is a small country. The capital of {c.name} is {c.capital}. "
                     f"Its currency is the {c.name} {c.currency}."},
            {"id": f"city-{i}", "title": c.capital,
             "text": f"{c.capital} is the capital city of {c.name}, founded in {c.founded}."},
            {"id": f"animal-{i}", "title": f"Wildlife of {c.name}",
             "text": f"The national animal of {c.name} is the {c.animal}."},
            {"id": f"mountain-{i}", "title": f"Mount {c.mountain}",
             "text": f"Mount {c.mountain} is the highest mountain of {c.name}, "
                     f"{c.height_m} metres high."},
            {"id": f"inventor-{i}", "title": c.inventor,
             "text": f"{c.inventor} of {c.name} invented the {c.invention} in {c.invented}."},
        ]
    return docs


def text_corpus_questions(n_countries: int = 60, seed: int = 0,
                          with_doc_ids: bool = False) -> list[tuple[str, ...]]:
    """(question, answer) pairs (plus the supporting doc id when ``with_doc_ids``)."""
    qa = []
    for i, c in enumerate(world(n_countries, seed)):
        qa += [(f"What is the capital of {c.name}?", c.capital, f"country-{i}"),
               (f"In which year was {c.capital} founded?", str(c.founded), f"city-{i}"),
               (f"What is the national animal of {c.name}?", c.animal, f"animal-{i}"),
               (f"How high is Mount {c.mountain}, in metres?", str(c.height_m), f"mountain-{i}"),
               (f"Who invented the {c.invention}?", c.inventor, f"inventor-{i}")]
    return [q if with_doc_ids else q[:2] for q in qa]


def make_text_corpus(path: str | None = None, n_countries: int = 60, seed: int = 0) -> str:
    """Write the corpus as JSONL (once) and return its path."""
    path = path or os.path.join(cache_root(), "corpora", f"world_text_n{n_countries}_s{seed}.jsonl")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for doc in text_corpus_entries(n_countries, seed):
                fh.write(json.dumps(doc) + "\n")
        os.replace(tmp, path)
    return path


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _draw_pattern(rng: random.Random, size: int):
    from PIL import Image, ImageDraw

    names = list(COLOURS)
    fg, bg = rng.sample(names, 2)
    img = Image.new("RGB", (size, size), COLOURS[bg])
    d = ImageDraw.Draw(img)
    kind = rng.choice(["circle", "square", "triangle", "stripes", "checker", "rings", "cross"])
    s = size
    if kind in ("circle", "square", "triangle", "cross"):
        r = rng.randint(s // 6, s // 3)
        cx, cy = rng.randint(r, s - r), rng.randint(r, s - r)
        where = ("top" if cy < s / 3 else "bottom" if cy > 2 * s / 3 else "middle") + "-" + \
                ("left" if cx < s / 3 else "right" if cx > 2 * s / 3 else "centre")
        box = (cx - r, cy - r, cx + r, cy + r)
        if kind == "circle":
            d.ellipse(box, fill=COLOURS[fg])
        elif kind == "square":
            d.rectangle(box, fill=COLOURS[fg])
        elif kind == "triangle":
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[fg])
        else:
            d.rectangle((cx - r, cy - r // 4, cx + r, cy + r // 4), fill=COLOURS[fg])
            d.rectangle((cx - r // 4, cy - r, cx + r // 4, cy + r), fill=COLOURS[fg])
        desc = f"{_a(fg)} {fg} {kind} at the {where} on {_a(bg)} {bg} background"
    elif kind == "stripes":
        n = rng.randint(2, 8)
        vertical = rng.random() < 0.5
        for k in range(0, n * 2, 2):
            a, b = k * s // (2 * n), (k + 1) * s // (2 * n)
            d.rectangle((a, 0, b, s) if vertical else (0, a, s, b), fill=COLOURS[fg])
        desc = f"{n} {fg} {'vertical' if vertical else 'horizontal'} stripes on {bg}"
    elif kind == "checker":
        n = rng.randint(2, 8)
        for y in range(n):
            for x in range(n):
                if (x + y) % 2 == 0:
                    d.rectangle((x * s // n, y * s // n, (x + 1) * s // n, (y + 1) * s // n),
                                fill=COLOURS[fg])
        desc = f"{_a(fg)} {fg} and {bg} {n}x{n} checkerboard"
    else:
        n = rng.randint(2, 5)
        for k in range(n, 0, -1):
            r = k * s // (2 * n)
            d.ellipse((s // 2 - r, s // 2 - r, s // 2 + r, s // 2 + r),
                      fill=COLOURS[fg] if k % 2 else COLOURS[bg])
        desc = f"{n} concentric {fg} rings on {bg}"
    return img, desc


def make_image_collection(out_dir: str | None = None, n: int = 48, seed: int = 0,
                          size: int = 128, min_distance: int = 12) -> list[tuple[str, str]]:
    """Write ``n`` perceptually distinct pattern images + ``captions.jsonl``; return
    [(path, caption)]. Captions name a country of ``world(n, seed)``."""
    import imagehash

    out_dir = out_dir or os.path.join(cache_root(), "corpora", f"world_images_n{n}_s{seed}_{size}")
    index = os.path.join(out_dir, "captions.jsonl")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        return [(os.path.join(out_dir, r["file"]), r["caption"]) for r in rows]
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(seed)
    countries = world(n, seed)
    hashes: list[imagehash.ImageHash] = []
    rows: list[dict[str, str]] = []
    tries = 0
    while len(rows) < n and tries < 200 * n:
        tries += 1
        img, desc = _draw_pattern(rng, size)
        h = imagehash.phash(img)
        if any(h - other < min_distance for other in hashes):
            continue
        hashes.append(h)
        i = len(rows)
        fname = f"img_{i:04d}.png"
        img.save(os.path.join(out_dir, fname))
        rows.append({"file": fname, "caption": f"Emblem of {countries[i].name}: {desc}.",
                     "id": f"emblem-{i}"})
    tmp = f"{index}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, index)
    return [(os.path.join(out_dir, r["file"]), r["caption"]) for r in rows]
