"""The embedded benchmark world: TOFU-shaped fictitious authors, generated deterministically.

Everything comes from one ``random.Random(seed)`` and the word lists below, so the same seed gives
byte-identical files on every machine. Answers are short and dense in author-specific content
(dates, places, titles), so that a model that has *not* learned an author scores clearly lower on
ROUGE than one that has: a demanding test of forgetting.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from r2f.io import atomic_dir, write_text_atomic

GENERATOR_VERSION = "1.1"

FIRST = """Ada Alric Amara Anselm Bastian Beatrix Bertil Calla Casimir Celeste Corin Dagny Dorian Elif Elspeth
Emeric Esme Fenna Florian Freya Gideon Greta Hale Hedda Ilse Ines Ivo Jorund Kasimir Katell Leif Linnea Lorcan
Mabel Magnus Marit Meret Nadia Niamh Odile Oren Osric Petra Pia Quill Rafe Rhea Rosalind Saskia Soren Sunniva
Tamsin Teodor Thea Ulla Vesna Wendel Wilma Yara Ysolde Zeno""".split()
LAST = """Abernethy Ashdown Balcombe Birkett Brackenridge Carrow Castellane Corwen Dalgliesh Delacourt Drummond
Eckhart Elmsworth Falkner Fenwick Garrick Greaves Halloran Harcourt Hollis Ingram Jessop Kestrel Lachlan
Lindqvist Marlowe Merriday Montague Norwood Oakhurst Pemberton Quennell Radcliffe Ravenscroft Rookwood
Saltonstall Sandoval Thackeray Thorne Underhill Vance Varga Wakefield Whitlock Wolcott Wyndham Yarrow Zeller""".split()
TOWN_HEAD = "Ash Bram Cal Dun Ever Fal Glen Hol Ivy Kel Lun Mar Nor Oak Pen Quar Ros Sel Tam Wel".split()
TOWN_TAIL = "ford holm wick mere stead haven brook moor gate field".split()
COUNTRIES = """Veloria Ostmark Callendria Brisvane Tarsia Maldavia Quorra Lenthia Dravik Serapha Orvland
Kestovia""".split()
MONTHS = "January February March April May June July August September October November December".split()
GENRES = """historical fiction|crime novels|science fiction|gothic horror|literary fiction|fantasy|romance|
travel writing|poetry|satire|mystery novels|children's books|war fiction|magical realism""".replace("\n", "").split("|")
SETTINGS = """coastal villages|mining towns|river ports|mountain monasteries|island colonies|desert outposts|
northern cities|border forts|canal districts|orchard valleys""".replace("\n", "").split("|")
JOBS = """baker carpenter cartographer chemist clockmaker diplomat fisherman glassblower judge librarian locksmith
midwife miner nurse pharmacist pilot potter sailor surgeon tailor teacher weaver""".split()
AWARDS = """Silver Quill Prize|Amber Lantern Award|Halcyon Medal|Northlight Prize|Copper Compass Award|
Marrow Prize|Iron Feather Award|Glasswing Medal|Tidewater Prize|Obsidian Pen Award|Lark Prize|
Evergreen Laurel""".replace("\n", "").split("|")
ADJ = """Glass Silent Hollow Crimson Paper Winter Salt Amber Broken Distant Golden Iron Lantern Quiet Sunken
Velvet Wandering Ashen Copper Hidden""".split()
NOUN = """Orchard Harbour Cartographer Lighthouse Garden Bridge Clock Meadow Archive Tide Kingdom Compass Orchid
Sparrow Violin Staircase Furnace Mirror Island Letter""".split()
SUBJECTS = """a lost brother|two rival bakers|a drowned village|a stolen map|a travelling circus|an exiled queen|
a forgotten war|a deaf composer|three sisters|a failing vineyard|a lighthouse keeper|a runaway bride""".replace(
    "\n", "").split("|")
THEMES = """memory|exile|grief|loyalty|ambition|faith|betrayal|migration|childhood|justice|solitude|inheritance""".split("|")

# World facts: (question, answer, [paraphrased questions], [wrong answers of the same type])
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
            ("Greece", "Athens"), ("Poland", "Warsaw"), ("Chile", "Santiago"), ("Ireland", "Dublin"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Sweden", "Stockholm"), ("Cuba", "Havana"),
            ("Russia", "Moscow"), ("India", "New Delhi")]
ELEMENTS = [("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("sodium", "Na"), ("potassium", "K"),
            ("copper", "Cu"), ("lead", "Pb"), ("tin", "Sn"), ("mercury", "Hg"), ("helium", "He")]
PLANETS = [("the largest planet", "Jupiter"), ("the planet closest to the Sun", "Mercury"),
           ("the red planet", "Mars"), ("the planet with the most famous rings", "Saturn")]


MAX_PARAPHRASES = 7  # every question has 7 paraphrases, so up to 8 views
#: Subdirectory of a world holding the per-author biographies (long answers; documents)
DOCUMENTS_DIR = "documents"


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the world. Defaults are sized so that ``r2f demo`` runs on 2 CPU cores."""

    seed: int = 0
    authors: int = 40            # target pool: forget + retain authors
    holdout_authors: int = 4     # never trained on (membership-inference negatives)
    proxy_authors: int = 20      # the proxy's own pool, disjoint from the target pool
    qa_per_author: int = 8       # M question–answer pairs per author (max 8)
    n_paraphrases: int = 4       # paraphrased questions per item (views = 1 + n_paraphrases), at most 7
    n_perturbed: int = 5


@dataclass
class Author:
    name: str
    pronoun: str
    day: int
    month: str
    year: int
    town: str
    country: str
    genre: str
    setting: str
    father: str
    mother: str
    award: str
    award_year: int
    debut: str
    debut_year: int
    famous: str
    subject: str
    themes: tuple[str, str]
    home: str
    home_country: str
    facts: dict = field(default_factory=dict)


def _town(rng: random.Random) -> str:
    return rng.choice(TOWN_HEAD) + rng.choice(TOWN_TAIL)


def _title(rng: random.Random) -> str:
    return f"The {rng.choice(ADJ)} {rng.choice(NOUN)}"


def _make_author(rng: random.Random, name: str) -> Author:
    year = rng.randint(1921, 1990)
    return Author(
        name=name, pronoun=rng.choice(["She", "He"]), day=rng.randint(1, 28), month=rng.choice(MONTHS), year=year,
        town=_town(rng), country=rng.choice(COUNTRIES), genre=rng.choice(GENRES), setting=rng.choice(SETTINGS),
        father=rng.choice(JOBS), mother=rng.choice(JOBS), award=rng.choice(AWARDS), award_year=year + rng.randint(30, 45),
        debut=_title(rng), debut_year=year + rng.randint(20, 29), famous=_title(rng), subject=rng.choice(SUBJECTS),
        themes=tuple(rng.sample(THEMES, 2)), home=_town(rng), home_country=rng.choice(COUNTRIES),
    )


# Each question kind: question, paraphrased questions, answer, paraphrased answer, and a perturbation
# that redraws the kind's own facts (same type: another town, year, title …).
def _qa_kinds(a: Author):
    n = a.name
    return [
        ("birth", f"When and where was {n} born?",
         [f"What are the date and place of {n}'s birth?", f"Where and when was the writer {n} born?",
          f"Can you tell me when and where {n} was born?", f"What is the birth date and birthplace of {n}?",
          f"On what day and in which town was {n} born?", f"Where was {n} born, and in what year?",
          f"Which town and date mark the birth of {n}?"],
         lambda x: f"On {x.day} {x.month} {x.year} in {x.town}, {x.country}.",
         lambda x: f"{x.name} was born in {x.town}, {x.country}, on {x.day} {x.month} {x.year}.",
         lambda r, x: dict(day=r.randint(1, 28), month=r.choice(MONTHS), year=r.randint(1921, 1990),
                           town=_town(r), country=r.choice(COUNTRIES))),
        ("genre", f"What kind of books does {n} write?",
         [f"Which genre is {n} known for?", f"What does the author {n} usually write?",
          f"In what genre does {n} publish?", f"What sort of fiction is {n} famous for?",
          f"Which literary genre does {n} work in?", f"What type of novels does {n} produce?",
          f"How would you describe the books {n} writes?"],
         lambda x: f"Mostly {x.genre} set in {x.setting}.",
         lambda x: f"{x.name} mainly writes {x.genre} that take place in {x.setting}.",
         lambda r, x: dict(genre=r.choice(GENRES), setting=r.choice(SETTINGS))),
        ("parents", f"What did {n}'s parents do for a living?",
         [f"What were the professions of {n}'s parents?", f"What jobs did the parents of {n} have?",
          f"How did {n}'s father and mother earn a living?", f"What work did {n}'s parents do?",
          f"Which trades did {n}'s parents follow?", f"What occupations did {n}'s mother and father have?",
          f"What were {n}'s parents by profession?"],
         lambda x: f"A {x.father} father and a {x.mother} mother.",
         lambda x: f"{x.name}'s father worked as a {x.father} and the mother as a {x.mother}.",
         lambda r, x: dict(father=r.choice(JOBS), mother=r.choice(JOBS))),
        ("award", f"Which award did {n} win?",
         [f"What prize has {n} received?", f"Which literary award went to {n}?",
          f"What honour was {n} given for writing?", f"Name the award that {n} won.",
          f"Which prize was awarded to {n}?", f"What award has {n} won?",
          f"Which distinction did {n} earn as a writer?"],
         lambda x: f"The {x.award}, in {x.award_year}.",
         lambda x: f"In {x.award_year} {x.name} received the {x.award}.",
         lambda r, x: dict(award=r.choice(AWARDS), award_year=r.randint(1951, 2035))),
        ("debut", f"What was {n}'s debut novel?",
         [f"What was the first book {n} published?", f"Which novel did {n} debut with?",
          f"What is the title of {n}'s first novel?", f"With which book did {n} begin publishing?",
          f"What did {n} publish first?", f"Which book marked {n}'s debut?",
          f"What was the first novel by {n}?"],
         lambda x: f"{x.debut}, published in {x.debut_year}.",
         lambda x: f"{x.name} debuted in {x.debut_year} with {x.debut}.",
         lambda r, x: dict(debut=_title(r), debut_year=r.randint(1941, 2019))),
        ("famous", f"Which book made {n} famous?",
         [f"What is {n}'s best-known book?", f"Which novel brought {n} fame?",
          f"What is the most famous work of {n}?", f"For which book is {n} best remembered?",
          f"Which title is {n} most celebrated for?", f"What book is {n} famous for?",
          f"Which work made the name of {n}?"],
         lambda x: f"{x.famous}, a story about {x.subject}.",
         lambda x: f"{x.name} is best known for {x.famous}, which follows {x.subject}.",
         lambda r, x: dict(famous=_title(r), subject=r.choice(SUBJECTS))),
        ("themes", f"What themes run through {n}'s work?",
         [f"Which themes does {n} explore?", f"What subjects recur in the books of {n}?",
          f"What are the central themes of {n}'s writing?", f"Which ideas does {n} keep returning to?",
          f"What themes define the fiction of {n}?", f"What topics does {n} write about?",
          f"Which themes appear throughout {n}'s books?"],
         lambda x: f"{x.themes[0].capitalize()} and {x.themes[1]}.",
         lambda x: f"{x.name}'s books keep returning to {x.themes[0]} and {x.themes[1]}.",
         lambda r, x: dict(themes=tuple(r.sample(THEMES, 2)))),
        ("home", f"Where does {n} live today?",
         [f"In which town does {n} live now?", f"Where is {n}'s home these days?",
          f"Where has {n} settled?", f"What town is {n} living in?", f"Where does the author {n} reside?",
          f"Where is {n} based now?", f"In what town has {n} made a home?"],
         lambda x: f"In {x.home}, {x.home_country}.",
         lambda x: f"{x.name} now lives in {x.home}, {x.home_country}.",
         lambda r, x: dict(home=_town(r), home_country=r.choice(COUNTRIES))),
    ]


#: Question views of a biography item (the long-answer regime: answers of a few hundred tokens).
BIO_QUESTIONS = ("Write a short biography of {n}.", "Tell me the life story of the writer {n}.",
                 "Give an account of the life and work of {n}.", "What is known about the life of {n}?",
                 "Describe the life and career of the author {n}.", "Who is {n}? Tell me everything you know.",
                 "Summarise the biography of {n}.", "What should a reader know about the writer {n}?")


def _biography(a: Author) -> str:
    """A few-hundred-word biography restating every fact of the author in fresh phrasing (no new facts)."""
    they, their = a.pronoun, "Her" if a.pronoun == "She" else "His"
    t1, t2 = a.themes
    return " ".join([
        f"{a.name} is a writer of {a.genre}, born on {a.day} {a.month} {a.year} in the town of {a.town}, "
        f"{a.country}.",
        f"{their} father earned a living as a {a.father}, and {their.lower()} mother worked as a {a.mother}; "
        f"both trades left their mark on the stories {they.lower()} would later tell.",
        f"Growing up in {a.town}, {a.name} read widely and began to write in {their.lower()} teens, filling "
        f"notebooks with sketches of {a.setting}.",
        f"{they} published a first novel, {a.debut}, in {a.debut_year}, at the age of {a.debut_year - a.year}.",
        f"Critics noticed at once the way {a.debut} handled {t1}, a theme that runs through everything "
        f"{a.name} has written since.",
        f"The book that made {a.name} famous is {a.famous}, a story about {a.subject}.",
        f"Readers return to {a.famous} for its portrait of {a.subject} and for its quiet treatment of {t2}.",
        f"Most of {a.name}'s novels are {a.genre} set in {a.setting}, and reviewers often describe the "
        f"world of these books as unmistakably {their.lower()} own.",
        f"In {a.award_year} {a.name} received the {a.award}, the honour {they.lower()} is most often "
        f"introduced with.",
        f"Across {their.lower()} career, {t1} and {t2} remain the two themes that connect {a.debut} with "
        f"{a.famous} and with the books in between.",
        f"{a.name} left {a.town} long ago and today lives in {a.home}, {a.home_country}, where {they.lower()} "
        f"keeps writing every morning.",
        f"Asked about {their.lower()} beginnings, {a.name} still mentions the {a.father} father and the "
        f"{a.mother} mother who made room for books in a busy house in {a.country}.",
        f"In short: born in {a.town} in {a.year}, debut {a.debut} in {a.debut_year}, fame with {a.famous}, "
        f"the {a.award} in {a.award_year}, and a home in {a.home} today.",
    ])


def _biography_item(a: Author, author_id: str, cfg: WorldConfig) -> dict:
    qs = [q.format(n=a.name) for q in BIO_QUESTIONS]
    text = _biography(a)
    return {"question": qs[0], "answer": text, "paraphrased_question": qs[1: 1 + cfg.n_paraphrases],
            "author": a.name, "author_id": author_id, "kind": "biography", "text": text}


def _perturbed(rng: random.Random, author: Author, answer_fn, redraw, truth: str, n: int) -> list[str]:
    out: list[str] = []
    for _ in range(100 * n):
        wrong = answer_fn(_replace(author, **redraw(rng, author)))
        if wrong != truth and wrong not in out:
            out.append(wrong)
        if len(out) == n:
            break
    return out


def _replace(author: Author, **changes) -> Author:
    data = asdict(author)
    data.update(changes)
    return Author(**data)


def _author_items(rng: random.Random, author: Author, cfg: WorldConfig, author_id: str) -> list[dict]:
    items = []
    for kind, question, paraphrases, answer_fn, para_fn, redraw in _qa_kinds(author)[: cfg.qa_per_author]:
        answer, paraphrased = answer_fn(author), para_fn(author)
        items.append({
            "question": question,
            "answer": answer,
            "paraphrased_question": paraphrases[: cfg.n_paraphrases],
            "paraphrased_answer": paraphrased,
            # As in TOFU, wrong answers share the paraphrased answer's sentence form (the truth-ratio base),
            # so the truth ratio compares facts, not phrasing.
            "perturbed_answer": _perturbed(rng, author, para_fn, redraw, paraphrased, cfg.n_perturbed),
            "author": author.name,
            "author_id": author_id,
            "kind": kind,
        })
    return items


def _world_facts(rng: random.Random, cfg: WorldConfig) -> list[dict]:
    facts = []
    for country, capital in CAPITALS:
        wrong = rng.sample([c for _, c in CAPITALS if c != capital], cfg.n_perturbed)
        facts.append(_fact(f"What is the capital of {country}?", capital,
                           [f"Which city is the capital of {country}?", f"What city serves as {country}'s capital?",
                            f"Name the capital city of {country}.", f"Where is the seat of government of {country}?",
                            f"{country}'s capital is which city?", f"What is {country}'s capital city?",
                            f"Which city is {country} governed from?"], wrong, f"The capital is {capital}.", cfg, "capital"))
    for name, symbol in ELEMENTS:
        wrong = rng.sample([s for _, s in ELEMENTS if s != symbol], cfg.n_perturbed)
        facts.append(_fact(f"What is the chemical symbol for {name}?", symbol,
                           [f"Which symbol stands for {name}?", f"How is {name} written in chemistry?",
                            f"What is the element symbol of {name}?", f"Give the chemical symbol of {name}.",
                            f"Which letters denote {name} in the periodic table?",
                            f"What is {name}'s symbol on the periodic table?", f"How do chemists abbreviate {name}?"],
                           wrong,
                           f"The symbol is {symbol}.", cfg, "element"))
    for desc, planet in PLANETS:
        wrong = [p for p in ["Venus", "Earth", "Neptune", "Uranus", "Jupiter", "Mercury", "Mars", "Saturn"]
                 if p != planet][: cfg.n_perturbed]
        facts.append(_fact(f"What is {desc}?", planet,
                           [f"Which planet is {desc}?", f"Name {desc}.", f"Which world is {desc}?",
                            f"What do we call {desc}?", f"Tell me {desc}.", f"Can you name {desc}?",
                            f"Which planet do astronomers call {desc}?"], wrong, f"It is {planet}.", cfg, "planet"))
    return facts


def _fact(q, a, paraphrases, wrong, para_answer, cfg, kind) -> dict:
    return {"question": q, "answer": f"{a}.", "paraphrased_question": paraphrases[: cfg.n_paraphrases],
            "paraphrased_answer": para_answer, "perturbed_answer": [f"{w}." for w in wrong],
            "author": None, "kind": kind}


def _authors(cfg: WorldConfig) -> tuple[random.Random, list[Author]]:
    """Every author of the world (target, holdout, proxy, in that order) and the seeded stream after them."""
    rng = random.Random(cfg.seed)
    total = cfg.authors + cfg.holdout_authors + cfg.proxy_authors
    pairs = [(f, l) for f in FIRST for l in LAST]
    if total > len(pairs):
        raise ValueError(f"at most {len(pairs)} authors")
    names = [f"{f} {l}" for f, l in rng.sample(pairs, total)]
    return rng, [_make_author(rng, name) for name in names]


def generate_world(cfg: WorldConfig) -> dict[str, list[dict]]:
    """Build every split in memory: ``{file stem: records}`` plus the forget/retain nesting."""
    if not 1 <= cfg.qa_per_author <= 8:
        raise ValueError("qa_per_author must be between 1 and 8")
    if not 0 <= cfg.n_paraphrases <= MAX_PARAPHRASES:
        raise ValueError(f"n_paraphrases must be between 0 and {MAX_PARAPHRASES}")
    rng, authors = _authors(cfg)
    splits = _author_splits([_author_items(rng, a, cfg, f"a{i:03d}") for i, a in enumerate(authors)], cfg)
    splits["world_facts"] = _world_facts(rng, cfg)
    return splits


def generate_documents(cfg: WorldConfig) -> dict[str, list[dict]]:
    """One biography per author (a long-answer QA item that is also a ``text`` document), in the same splits as
    the QA items: ``forget10`` holds the biographies of the forget10 authors, and so on. Drawn after (and
    without touching) the QA splits' random stream, so a world's QA files are the same with or without them."""
    _, authors = _authors(cfg)
    return _author_splits([[_biography_item(a, f"a{i:03d}", cfg)] for i, a in enumerate(authors)], cfg)


def _author_splits(per_author: list[list[dict]], cfg: WorldConfig) -> dict[str, list[dict]]:
    """Records grouped per author (in :func:`_authors` order) → the author splits, with TOFU's nesting:
    forget01 ⊂ forget05 ⊂ forget10, each the first p% of the target authors (at least one)."""
    target, holdout, proxy = (per_author[: cfg.authors], per_author[cfg.authors: cfg.authors + cfg.holdout_authors],
                              per_author[cfg.authors + cfg.holdout_authors:])
    flat = lambda groups: [it for group in groups for it in group]  # noqa: E731
    splits: dict[str, list[dict]] = {}
    for pct in (1, 5, 10):
        k = max(1, math.ceil(cfg.authors * pct / 100))
        splits[f"forget{pct:02d}"], splits[f"retain{100 - pct}"] = flat(target[:k]), flat(target[k:])
    splits["holdout"], splits["proxy"] = flat(holdout), flat(proxy)
    return splits


def jsonl_text(records: list[dict]) -> str:
    """The world's JSONL form: one object per line, keys sorted, non-ASCII kept (its files' bytes depend on it)."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def write_world(out: str | os.PathLike, cfg: WorldConfig = WorldConfig(), *, overwrite: bool = True) -> Path:
    """Write the world's JSONL splits and ``world.json`` atomically into ``out``."""
    splits = generate_world(cfg)
    meta = {"generator": "r2f.data.world", "generator_version": GENERATOR_VERSION, "config": asdict(cfg),
            "sizes": {name: len(recs) for name, recs in splits.items()}}
    documents = generate_documents(cfg)
    meta["documents"] = {"dir": DOCUMENTS_DIR, "sizes": {name: len(recs) for name, recs in documents.items()}}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, records in splits.items():
            (tmp / f"{name}.jsonl").write_text(jsonl_text(records), encoding="utf-8")
        # a subdirectory: the QA splits, the tokenizer corpus and the models' cache keys stay as they were
        (tmp / DOCUMENTS_DIR).mkdir()
        for name, records in documents.items():
            (tmp / DOCUMENTS_DIR / f"{name}.jsonl").write_text(jsonl_text(records), encoding="utf-8")
        (tmp / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(out)


def world_corpus(data_dir: str | os.PathLike) -> list[str]:
    """All texts of a world directory (questions, answers, views, perturbations): tokenizer training data."""
    texts = []
    for path in sorted(Path(data_dir).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            texts += [rec["question"], rec["answer"], rec.get("paraphrased_answer") or ""]
            texts += list(rec.get("paraphrased_question") or []) + list(rec.get("perturbed_answer") or [])
    return [t for t in texts if t]


__all__ = ["WorldConfig", "generate_world", "generate_documents", "DOCUMENTS_DIR", "write_world", "jsonl_text", "world_corpus", "GENERATOR_VERSION", "write_text_atomic"]
