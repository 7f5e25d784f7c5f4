"""ShopBench-format multiple-choice rows built from the synthetic listings and reviews: four domain
tasks whose answers the domain corpus teaches (which size a product comes in, which value follows a
label, a value in the listing's language, a review's rating from its headline).

Each row's input ends with the listing fragment the answer continues, so scoring the options by
log-likelihood asks the model what it learned from the listings; the options are also listed in
ShopBench's "0. ..." form and `output_field` is the index of the right one.
"""
from __future__ import annotations

import random

from elama.data.demo_corpus import LANGUAGES, PRODUCTS, WORDS, iter_ecommerce_records

TRACKS = {"attribute_size": "shopping_knowledge_reasoning",
          "attribute_material": "understanding_shopping_concepts",
          "colour_language": "multi_lingual_abilities",
          "review_rating": "user_behavior_alignment"}


def shopbench_row(task: str, question: str, options: list[str], answer: int, fragment: str) -> dict:
    listed = "\n".join(f"{i}. {o}" for i, o in enumerate(options))
    return {"input_field": f"{question}\n{listed}\n{fragment}", "output_field": answer,
            "task_name": task, "task_type": "multiple-choice", "metric": "accuracy",
            "is_multiple_choice": True, "track": TRACKS[task], "options": options}


def _shuffled(rng: random.Random, right: str, wrong: list[str]) -> tuple[list[str], int]:
    options = [right, *wrong]
    rng.shuffle(options)
    return options, options.index(right)


def _size_row(rng, rec, w, slots) -> dict:
    sizes = next(s for names, s in PRODUCTS if slots["product"] in names)
    others = sorted({s for _, ss in PRODUCTS for s in ss} - set(sizes))
    options, answer = _shuffled(rng, slots["size"], rng.sample(others, 3))
    fragment = f"{slots['brand']} {slots['product']} {slots['adj']} {slots['color']}"
    return shopbench_row("attribute_size", "Which size completes this listing title?", options,
                         answer, fragment)


def _material_row(rng, rec, w, slots) -> dict:
    wrong = [rng.choice(w["conditions"]), slots["size"], rng.choice(w["adjectives"])]
    options, answer = _shuffled(rng, slots["material"], wrong)
    labels = w["labels"]
    fragment = (f"{labels[0]}: {slots['brand']}; {labels[1]}: {slots['color']}; {labels[2]}:")
    return shopbench_row("attribute_material", "Which value fits the listing's material aspect?",
                         options, answer, fragment)


def _colour_row(rng, rec, w, slots) -> dict:
    lang = rec["lang"]
    index = w["colors"].index(slots["color"])
    # The same colour in the other languages, where it is spelled differently (not "beige").
    wrong = sorted({WORDS[o]["colors"][index] for o in LANGUAGES if o != lang} - {slots["color"]})
    if len(wrong) < 3:
        return None
    options, answer = _shuffled(rng, slots["color"], rng.sample(wrong, 3))
    fragment = f"{w['labels'][0]}: {slots['brand']}; {w['labels'][1]}:"
    return shopbench_row("colour_language", f"Which colour word fits a listing in '{lang}'?",
                         options, answer, fragment)


def _rating_row(rng, rec, w, slots) -> dict:
    stars = int(rec["aspects"].split(":", 1)[1].split("/", 1)[0])
    options = [f"{s}/5" for s in range(1, 6)]
    return shopbench_row("review_rating", "Which rating goes with this review's headline?",
                         options, stars - 1, f"{rec['title']}\n\n{w['rating']}:")


def build_tasks(n_per_task: int, seed: int) -> list[dict]:
    """`n_per_task` rows of each task from listings and reviews of `seed` (use a seed the
    training corpus does not use, so the questions are held out)."""
    rng = random.Random(seed)
    rows: dict[str, list[dict]] = {t: [] for t in TRACKS}
    makers = {"attribute_size": _size_row, "attribute_material": _material_row,
              "colour_language": _colour_row}
    for rec in iter_ecommerce_records(40 * n_per_task, seed, "listing"):
        w, slots = WORDS[rec["lang"]], _listing_slots(rec)
        for task, make in makers.items():
            if len(rows[task]) < n_per_task and (row := make(rng, rec, w, slots)) is not None:
                rows[task].append(row)
    for rec in iter_ecommerce_records(40 * n_per_task, seed + 1, "review"):
        if len(rows["review_rating"]) < n_per_task:
            rows["review_rating"].append(_rating_row(rng, rec, WORDS[rec["lang"]], {}))
    short = {t: len(r) for t, r in rows.items() if len(r) < n_per_task}
    if short:
        raise RuntimeError(f"could not build {n_per_task} rows for {short}")
    return [row for task in TRACKS for row in rows[task]]


def _listing_slots(rec: dict) -> dict:
    """The generator's slots back from a listing (title: brand product adj colour size)."""
    w = WORDS[rec["lang"]]
    values = dict(part.split(": ", 1) for part in rec["aspects"].split("; ")[:5])
    labels = w["labels"]
    lang_i = LANGUAGES.index(rec["lang"])
    product = next(names[lang_i] for names, _ in PRODUCTS if f" {names[lang_i]} " in rec["title"])
    adj = next(a for a in w["adjectives"] if f"{product} {a} " in rec["title"])
    return dict(brand=values[labels[0]], color=values[labels[1]], material=values[labels[2]],
                size=values[labels[3]], product=product, adj=adj)
