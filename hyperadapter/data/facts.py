"""Templated personal facts that a user states in passing and is later asked about.

Each slot has a statement, a question and a pool of values. Every pool is cut into disjoint
train / validation / test parts (by a hash of the value), so a held-out user's facts are values the
generator never saw in training: recalling them has to come from the user's history.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

NAMES = """Abigail Ada Adrian Agnes Aiden Alba Alec Alma Alvin Amara Ambrose Anika Ansel Anton Aria Arlo
Astrid Atticus Aurora Basil Beatrix Benedict Bianca Blaise Bodhi Bram Brigid Bruno Cael Calla Camille
Casimir Cecily Cedric Celeste Cillian Clara Clement Cleo Colette Conrad Cosima Cyrus Dahlia Dante Darius
Delphine Desmond Dorian Edie Edmund Elio Elodie Emeric Enzo Esme Ezra Fabian Felix Fenna Fiona Florian
Freya Gideon Gemma Greta Gus Hale Hana Hector Helga Hugo Idris Ilse Imogen Inez Ingrid Ivo Jasper Juno
Kai Kasimir Keira Kenji Kit Lars Leona Levi Linnea Lorcan Lucian Lyra Mabel Magnus Malik Marisol Matteo
Maren Milo Mira Nadia Nico Nina Niamh Odette Olek Orla Oskar Otto Pavel Penelope Petra Quentin Quinn
Rafael Ramona Remy Rhea Roisin Rollo Rosalind Rufus Sabine Saoirse Selma Silas Soren Stellan Sunniva
Tamsin Tariq Thea Tobias Ulla Ursula Valentin Vera Viggo Wilhelmina Wren Xavier Yara Yusuf Zara Zeno
Zofia Anouk Bertil Cormac Dagny Elowen Faustina Gaspard Hedda Isolde Jorunn Kaspian Leopold Maelle
Noemi Ottilie Perpetua Rasmus Sigrid Tiberius Una Wendel Ysolde Zebulon""".split()

CITIES = """Lisbon Porto Seville Valencia Bilbao Lyon Marseille Nantes Bordeaux Lille Ghent Antwerp Utrecht
Groningen Bremen Leipzig Dresden Hanover Graz Linz Salzburg Basel Bern Lausanne Turin Bologna Verona Genoa
Naples Palermo Trieste Ljubljana Zagreb Split Sarajevo Belgrade Sofia Plovdiv Bucharest Cluj Debrecen
Brno Ostrava Krakow Gdansk Poznan Wroclaw Vilnius Kaunas Riga Tallinn Tartu Helsinki Turku Tampere
Uppsala Malmo Gothenburg Aarhus Odense Bergen Trondheim Stavanger Reykjavik Galway Cork Belfast Glasgow
Aberdeen Dundee Cardiff Swansea Bristol Leeds Norwich Exeter Halifax Calgary Winnipeg Quebec Victoria
Portland Tucson Boise Omaha Tulsa Memphis Savannah Richmond Albany Hartford Providence Burlington Spokane
Oaxaca Puebla Merida Cusco Arequipa Valparaiso Mendoza Cordoba Montevideo Asuncion Quito Cuenca Medellin
Cartagena Recife Fortaleza Manaus Curitiba Durban Windhoek Kampala Arusha Mombasa Accra Dakar Tunis Fez
Izmir Tbilisi Yerevan Almaty Tashkent Lahore Pune Mysore Kochi Kandy Chiang Mai Hue Busan Sapporo Sendai
Kobe Nagoya Fukuoka Taichung Cebu Davao Perth Adelaide Hobart Darwin Cairns Dunedin Nelson""".split()

FOODS = """lasagne paella ramen pho sushi tacos burritos risotto gnocchi moussaka goulash pierogi borscht
falafel hummus shakshuka couscous tagine biryani dosa samosas dumplings bibimbap bulgogi kimchi laksa
rendang satay pad-thai curry empanadas ceviche arepas feijoada pupusas poutine jambalaya gumbo chowder
cornbread brisket meatloaf pancakes waffles crepes quiche ratatouille cassoulet fondue raclette schnitzel
pretzels strudel baklava tiramisu cannoli churros flan cheesecake brownies scones crumpets haggis
kedgeree kippers souvlaki gyros spanakopita halloumi tabbouleh fattoush mansaf kofta kebabs lentil-soup
minestrone gazpacho bruschetta focaccia calzone ravioli tortellini carbonara polenta okonomiyaki
takoyaki udon soba tempura gyoza congee""".split()

JOBS = """nurse carpenter librarian plumber pharmacist architect electrician dentist veterinarian baker
florist translator pilot firefighter geologist paramedic welder accountant journalist photographer
beekeeper locksmith surveyor optician cartographer blacksmith tailor jeweller potter glassblower
bookbinder typesetter sommelier barista chef butcher fishmonger farmer forester ranger lifeguard
midwife physiotherapist radiographer audiologist dietitian chemist biologist astronomer meteorologist
oceanographer archaeologist historian economist statistician actuary auditor notary paralegal
bailiff courier postman machinist mechanic upholsterer glazier roofer mason plasterer tiler
landscaper gardener arborist zookeeper taxidermist puppeteer choreographer stagehand projectionist
animator illustrator engraver watchmaker""".split()

INSTRUMENTS = """cello violin viola harp flute oboe clarinet bassoon trumpet trombone tuba saxophone
accordion banjo mandolin ukulele harmonica bagpipes sitar bouzouki marimba xylophone timpani
harpsichord organ theremin didgeridoo kalimba dulcimer zither""".split()

PETS = """dog cat parrot rabbit hamster tortoise goldfish ferret horse canary""".split()

COLOURS = """crimson scarlet maroon coral salmon amber ochre mustard saffron olive emerald jade teal
turquoise cyan cobalt navy indigo violet lavender lilac magenta fuchsia plum burgundy beige taupe
charcoal ivory silver""".split()

SPORTS_TEAMS = """Falcons Ravens Wolves Hornets Otters Badgers Comets Rockets Pirates Vikings Titans
Hurricanes Lynx Panthers Stallions Mariners Rangers Sharks Eagles Bulldogs Foxes Owls Cobras Bison
Herons Jaguars Kestrels Lions Marlins Orcas""".split()


@dataclass(frozen=True)
class Slot:
    name: str
    pool: tuple[str, ...]
    statements: tuple[str, ...]  # "{v}" is the value
    question: str


SLOTS = (
    Slot("pet_name", tuple(NAMES), ("my {pet} is called {v}", "we named our {pet} {v}"),
         "What is the name of my {pet}?"),
    Slot("sibling", tuple(NAMES), ("my sister's name is {v}", "my sister {v} is visiting me soon"),
         "What is my sister's name?"),
    Slot("friend", tuple(NAMES), ("my best friend is {v}", "I'm meeting my best friend {v} later"),
         "Who is my best friend?"),
    Slot("city", tuple(CITIES), ("I live in {v}", "I moved to {v} last year"), "Which city do I live in?"),
    Slot("hometown", tuple(CITIES), ("I grew up in {v}", "I was born in {v}"), "Where did I grow up?"),
    Slot("food", tuple(FOODS), ("my favourite food is {v}", "I could eat {v} every day"),
         "What is my favourite food?"),
    Slot("job", tuple(JOBS), ("I work as a {v}", "I've been a {v} for ten years"), "What is my job?"),
    Slot("instrument", tuple(INSTRUMENTS), ("I play the {v}", "I'm learning to play the {v}"),
         "Which instrument do I play?"),
    Slot("colour", tuple(COLOURS), ("my favourite colour is {v}", "I painted my room {v}"),
         "What is my favourite colour?"),
    Slot("team", tuple(SPORTS_TEAMS), ("I'm a big fan of the {v}", "I support the {v}"),
         "Which team do I support?"),
)

OPENERS = ("By the way, ", "Oh, and ", "Fun fact: ", "Just so you know, ", "", "Also, ")


def split_of_value(value: str, salt: str = "facts-v1") -> str:
    """Deterministic 80/10/10 split of each pool's values."""
    bucket = int(hashlib.sha256(f"{salt}:{value}".encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


@dataclass
class Fact:
    slot: str
    value: str
    statement: str
    question: str


def sample_facts(rng: random.Random, split: str, n: int) -> list[Fact]:
    """n facts on distinct slots with values from this split's part of each pool."""
    facts = []
    for slot in rng.sample(SLOTS, n):
        pool = [v for v in slot.pool if split_of_value(v) == split] or list(slot.pool)
        value = rng.choice(pool)
        pet = rng.choice(PETS)
        sentence = rng.choice(slot.statements).format(v=value, pet=pet)
        opener = rng.choice(OPENERS)
        statement = (opener + sentence) if opener else sentence[0].upper() + sentence[1:]
        facts.append(Fact(slot.name, value, statement + ".", slot.question.format(pet=pet)))
    return facts
