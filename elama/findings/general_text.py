"""Seeded general (non-shopping) prose in German, French, Spanish and Italian: the non-English part
of the findings' general corpus, whose English part is the standard library's docstrings.
Sentences come from per-language grammars about cities, nature, science and daily life.
"""
from __future__ import annotations

import random
from typing import Iterator

GENERAL_LANGUAGES = ("de", "fr", "es", "it")

# Each grammar: sentence templates over slot lists. No product, price or brand words, so the text
# is "general" next to the synthetic listings.
GRAMMARS = {
    "de": dict(
        templates=["{time} {verb_s} {subject} {object} {place}.",
                   "{subject_c} {verb_s} {object}, weil {reason}.",
                   "Viele Menschen glauben, dass {subject} {object} {verb_end}.",
                   "{place_c} {verb_s} {subject} {time_l}."],
        time=["Am Morgen", "Im Winter", "Seit vielen Jahren", "Im Mittelalter", "Heute"],
        time_l=["am Abend", "im Sommer", "jeden Tag", "seit langer Zeit"],
        subject=["die Lehrerin", "der alte Fischer", "ein junger Forscher", "die Stadtverwaltung",
                 "das Orchester", "eine Gruppe von Kindern"],
        verb_s=["beobachtet", "beschreibt", "besucht", "erklärt", "untersucht"],
        verb_end=["beobachtet", "erklärt", "verändert", "schützt"],
        object=["den Fluss", "die Geschichte der Region", "das Verhalten der Vögel",
                "die Sterne", "die Bewegung der Gletscher", "ein altes Gedicht"],
        place=["in den Bergen", "am Ufer des Sees", "in der Bibliothek", "auf dem Marktplatz"],
        reason=["das Wetter sich ändert", "die Schule bald beginnt", "der Wald wächst",
                "die Wissenschaft Fragen stellt"]),
    "fr": dict(
        templates=["{time}, {subject} {verb_s} {object} {place}.",
                   "{subject_c} {verb_s} {object}, parce que {reason}.",
                   "Beaucoup pensent que {subject} {verb_s} {object}.",
                   "{place_c}, {subject} {verb_s} {object} {time_l}."],
        time=["Le matin", "En hiver", "Depuis des siècles", "Au Moyen Âge", "Aujourd'hui"],
        time_l=["le soir", "en été", "chaque jour", "depuis longtemps"],
        subject=["l'institutrice", "le vieux pêcheur", "une jeune chercheuse", "la mairie",
                 "l'orchestre", "un groupe d'enfants"],
        verb_s=["observe", "décrit", "visite", "explique", "étudie"],
        object=["la rivière", "l'histoire de la région", "le comportement des oiseaux",
                "les étoiles", "le mouvement des glaciers", "un vieux poème"],
        place=["dans les montagnes", "au bord du lac", "à la bibliothèque",
               "sur la place du village"],
        reason=["le climat change", "l'école commence bientôt", "la forêt grandit",
                "la science pose des questions"]),
    "es": dict(
        templates=["{time}, {subject} {verb_s} {object} {place}.",
                   "{subject_c} {verb_s} {object} porque {reason}.",
                   "Muchos creen que {subject} {verb_s} {object}.",
                   "{place_c}, {subject} {verb_s} {object} {time_l}."],
        time=["Por la mañana", "En invierno", "Desde hace siglos", "En la Edad Media", "Hoy"],
        time_l=["por la tarde", "en verano", "cada día", "desde hace mucho tiempo"],
        subject=["la maestra", "el viejo pescador", "una joven investigadora", "el ayuntamiento",
                 "la orquesta", "un grupo de niños"],
        verb_s=["observa", "describe", "visita", "explica", "estudia"],
        object=["el río", "la historia de la región", "el comportamiento de las aves",
                "las estrellas", "el movimiento de los glaciares", "un poema antiguo"],
        place=["en las montañas", "a orillas del lago", "en la biblioteca",
               "en la plaza del pueblo"],
        reason=["el clima cambia", "la escuela empieza pronto", "el bosque crece",
                "la ciencia hace preguntas"]),
    "it": dict(
        templates=["{time}, {subject} {verb_s} {object} {place}.",
                   "{subject_c} {verb_s} {object} perché {reason}.",
                   "Molti pensano che {subject} {verb_s} {object}.",
                   "{place_c}, {subject} {verb_s} {object} {time_l}."],
        time=["Al mattino", "In inverno", "Da secoli", "Nel Medioevo", "Oggi"],
        time_l=["la sera", "d'estate", "ogni giorno", "da molto tempo"],
        subject=["la maestra", "il vecchio pescatore", "una giovane ricercatrice", "il comune",
                 "l'orchestra", "un gruppo di bambini"],
        verb_s=["osserva", "descrive", "visita", "spiega", "studia"],
        object=["il fiume", "la storia della regione", "il comportamento degli uccelli",
                "le stelle", "il movimento dei ghiacciai", "una vecchia poesia"],
        place=["in montagna", "sulla riva del lago", "in biblioteca", "nella piazza del paese"],
        reason=["il clima cambia", "la scuola comincia presto", "il bosco cresce",
                "la scienza fa domande"]),
}


def general_sentence(rng: random.Random, lang: str) -> str:
    g = GRAMMARS[lang]
    slots = {k: rng.choice(v) for k, v in g.items() if k != "templates"}
    slots["subject_c"] = slots["subject"][0].upper() + slots["subject"][1:]
    slots["place_c"] = slots["place"][0].upper() + slots["place"][1:]
    slots.setdefault("verb_end", slots["verb_s"])
    return rng.choice(g["templates"]).format(**slots)


def iter_general_records(n: int, seed: int = 0, languages=GENERAL_LANGUAGES) -> Iterator[dict]:
    """`n` documents {id, lang, text} of 4-10 sentences each, languages in turn; seeded."""
    rng = random.Random(seed)
    for i in range(n):
        lang = languages[i % len(languages)]
        text = " ".join(general_sentence(rng, lang) for _ in range(rng.randint(4, 10)))
        yield {"id": f"general-{lang}-{seed}-{i}", "lang": lang, "text": text}
