"""A synthetic multi-capability e-commerce instruction set, generated at run time from a seed
(tests, tools/ablate_sft.py, bench/sft.py): five capability areas with two tasks each, as chat
training records tagged with area and task, and held-out questions as ShopBench rows (the
evaluation harness's format: input_field, output_field, task_type, metric, track).

The answers follow rules over a small product world (an item's category, its brand and colour
in the title, relevance by shared attributes), so a tiny model can learn them in minutes.
"""
from __future__ import annotations

import random

CATEGORIES = {"shoes": ["sneaker", "boot", "sandal"], "kitchen": ["pan", "kettle", "knife"],
              "electronics": ["charger", "cable", "speaker"], "toys": ["puzzle", "doll", "kite"]}
BRANDS = ["Acme", "Zento", "Lumo", "Orbi", "Kavo", "Tesa"]
COLORS = {"red": {"Spanish": "rojo", "German": "rot", "French": "rouge"},
          "blue": {"Spanish": "azul", "German": "blau", "French": "bleu"},
          "green": {"Spanish": "verde", "German": "grün", "French": "vert"},
          "black": {"Spanish": "negro", "German": "schwarz", "French": "noir"}}
ITEMS = {item: cat for cat, items in CATEGORIES.items() for item in items}
AREAS = {"concepts": ("category_mc", "color_mc"), "extraction": ("brand_ner", "color_ner"),
         "ranking": ("query_rank", "query_retrieval"), "generation": ("title_gen", "spec_gen"),
         "multilingual": ("translate_color", "category_mc_es")}
CATEGORY_ES = {"shoes": "calzado", "kitchen": "cocina", "electronics": "electrónica",
               "toys": "juguetes"}
TRACKS = {"concepts": "understanding", "extraction": "knowledge_extraction",
          "ranking": "user_behavior", "generation": "reasoning", "multilingual": "multilingual"}


def _product(rng: random.Random) -> dict:
    item = rng.choice(list(ITEMS))
    return {"item": item, "category": ITEMS[item], "brand": rng.choice(BRANDS),
            "color": rng.choice(list(COLORS))}


def _title(p: dict) -> str:
    return f"{p['brand']} {p['color']} {p['item']}"


def _options(rng: random.Random, truth: str, pool: list[str]) -> tuple[list[str], int]:
    options = rng.sample([x for x in pool if x != truth], 3) + [truth]
    rng.shuffle(options)
    return options, options.index(truth)


def _mc(question: str, options: list[str]) -> str:
    return question + "\n" + "\n".join(f"{i}. {o}" for i, o in enumerate(options)) + "\nAnswer:"


def _ranked(rng: random.Random) -> tuple[str, list[dict], list[int]]:
    """A query and 5 products with graded relevance: 2 same item and colour, 1 same item."""
    q = _product(rng)
    products = []
    for _ in range(5):
        p = _product(rng)
        products.append(p)
    rel = [2 * (p["item"] == q["item"]) + (p["color"] == q["color"]) for p in products]
    return f"{q['color']} {q['item']}", products, rel


def make_task(task: str, rng: random.Random) -> tuple[str, object, str, str]:
    """(prompt, truth, answer text, task_type / metric) of one question of a task."""
    p = _product(rng)
    if task in ("category_mc", "color_mc", "category_mc_es"):
        if task == "color_mc":
            opts, k = _options(rng, p["color"], list(COLORS))
            return _mc(f"What colour is the {_title(p)}?", opts), k, str(k), "multiple-choice/accuracy"
        if task == "category_mc_es":
            opts, k = _options(rng, CATEGORY_ES[p["category"]], list(CATEGORY_ES.values()))
            return (_mc(f"¿A qué categoría pertenece el producto {_title(p)}?", opts), k, str(k),
                    "multiple-choice/accuracy")
        opts, k = _options(rng, p["category"], list(CATEGORIES))
        return _mc(f"Which category does the {_title(p)} belong to?", opts), k, str(k), \
            "multiple-choice/accuracy"
    if task in ("brand_ner", "color_ner"):
        key = "brand" if task == "brand_ner" else "color"
        truth = [p[key]]
        return (f"Extract the {key} from this product title: {_title(p)}", truth, str(truth),
                "named_entity_recognition/micro f1")
    if task in ("query_rank", "query_retrieval"):
        query, products, rel = _ranked(rng)
        listing = "\n".join(f"{i + 1}. {_title(x)}" for i, x in enumerate(products))
        order = sorted(range(1, 6), key=lambda i: (-rel[i - 1], i))
        if task == "query_rank":
            return (f"Query: {query}\nRank the products by relevance:\n{listing}\nAnswer:",
                    [float(r) for r in rel], ", ".join(map(str, order)), "ranking/ndcg")
        top = [i for i in order if rel[i - 1] > 0][:3] or order[:1]
        return (f"Query: {query}\nWhich products match? Give their numbers:\n{listing}\nAnswer:",
                top, ", ".join(map(str, top)), "retrieval/hit rate@3")
    if task == "title_gen":
        text = _title(p)
        return (f"Write a product title for brand={p['brand']}, color={p['color']}, "
                f"item={p['item']}.", text, text, "generation/rougel")
    if task == "spec_gen":
        text = f"A {p['color']} {p['item']} from {p['brand']} for {p['category']}."
        return f"Describe the {_title(p)} in one sentence.", text, text, "generation/rougel"
    if task == "translate_color":
        lang = rng.choice(["Spanish", "German", "French"])
        word = COLORS[p["color"]][lang]
        return f"Translate the colour '{p['color']}' into {lang}.", word, word, "generation/rougel"
    raise ValueError(f"unknown synthetic task {task!r}; tasks: {AREAS}")


def area_of(task: str) -> str:
    return next(a for a, tasks in AREAS.items() if task in tasks)


def train_records(tasks: list[str], per_task: int, seed: int) -> list[dict]:
    """Chat records {messages, area, task}; ShopBench-style rows for half the tasks' examples,
    so both input formats are exercised."""
    rng, out = random.Random(seed), []
    for task in tasks:
        for i in range(per_task):
            prompt, _, answer, _ = make_task(task, rng)
            area = area_of(task)
            if i % 2:
                out.append({"input_field": prompt, "output_field": answer, "area": area, "task": task})
            else:
                out.append({"messages": [{"role": "user", "content": prompt},
                                         {"role": "assistant", "content": answer}],
                            "area": area, "task": task})
    rng.shuffle(out)
    return out


def shopbench_rows(tasks: list[str], per_task: int, seed: int) -> list[dict]:
    """Held-out questions in ShopBench's format, scored by elama.eval.shopbench."""
    rng, out = random.Random(seed + 10_007), []
    for task in tasks:
        for _ in range(per_task):
            prompt, truth, _, kind = make_task(task, rng)
            task_type, metric = kind.split("/")
            out.append({"input_field": prompt, "output_field": truth, "task_name": task,
                        "task_type": task_type, "metric": metric,
                        "is_multiple_choice": task_type == "multiple-choice",
                        "track": TRACKS[area_of(task)], "area": area_of(task)})
    return out


def all_tasks() -> list[str]:
    return [t for tasks in AREAS.values() for t in tasks]
