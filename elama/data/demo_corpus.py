"""The demo corpus, made at demo time (never committed): "ecommerce" = synthetic product listings
and reviews in en/de/fr/es/it from a seeded generator; "general" = real English text on every
machine, the docstrings of Python's standard library (parsed with ast, never imported).
"""
from __future__ import annotations

import ast
import gzip
import json
import os
import random
import sysconfig
from typing import Iterator

LANGUAGES = ("en", "de", "fr", "es", "it")
LANGUAGE_WEIGHTS = (0.6, 0.1, 0.1, 0.1, 0.1)  # e-Llama's mix was ~10% non-English; ours is richer
DEMO_TEXT_KEYS = {"ecommerce": ("title", "aspects", "description"), "general": ("text",)}

# product: (en, de, fr, es, it); sizes per product kind
PRODUCTS = [
    (("running shoes", "Laufschuhe", "chaussures de course", "zapatillas de running",
      "scarpe da corsa"), ["38", "40", "42", "44", "46"]),
    (("rain jacket", "Regenjacke", "veste de pluie", "chaqueta impermeable",
      "giacca antipioggia"), ["S", "M", "L", "XL"]),
    (("hiking backpack", "Wanderrucksack", "sac à dos de randonnée", "mochila de senderismo",
      "zaino da trekking"), ["20 L", "30 L", "45 L"]),
    (("espresso machine", "Espressomaschine", "machine à expresso", "cafetera espresso",
      "macchina per espresso"), ["1 L", "1.5 L", "2 L"]),
    (("wireless headphones", "kabellose Kopfhörer", "casque sans fil", "auriculares inalámbricos",
      "cuffie wireless"), ["one size"]),
    (("phone case", "Handyhülle", "coque de téléphone", "funda para móvil",
      "cover per telefono"), ["6.1 in", "6.7 in"]),
    (("wristwatch", "Armbanduhr", "montre-bracelet", "reloj de pulsera", "orologio da polso"),
     ["38 mm", "42 mm"]),
    (("desk lamp", "Schreibtischlampe", "lampe de bureau", "lámpara de escritorio",
      "lampada da scrivania"), ["30 cm", "45 cm"]),
    (("summer dress", "Sommerkleid", "robe d'été", "vestido de verano", "abito estivo"),
     ["XS", "S", "M", "L"]),
    (("cordless drill", "Akku-Bohrschrauber", "perceuse sans fil", "taladro inalámbrico",
      "trapano avvitatore"), ["12 V", "18 V"]),
]
BRANDS = ["Nordkap", "Velora", "Brixton & Co", "Solano", "Kairo", "Altavia", "Fennek", "Lumio",
          "Quadra", "Orsetto", "Tramonto", "Helvik"]
WORDS = {
    "en": dict(colors=["black", "white", "navy blue", "olive green", "red", "grey", "beige"],
               materials=["leather", "cotton", "recycled polyester", "stainless steel", "aluminium",
                          "wool"],
               adjectives=["lightweight", "durable", "waterproof", "compact", "premium", "classic"],
               labels=["Brand", "Colour", "Material", "Size", "Condition"],
               conditions=["New", "Used - like new", "Refurbished"],
               describe=["This {adj} {product} from {brand} is made of {material}.",
                         "Perfect for everyday use, travel and the outdoors.",
                         "Colour: {color}. Size: {size}. Ships within 24 hours.",
                         "Free returns within 30 days. Original packaging included.",
                         "Easy to clean; we recommend a damp cloth and mild soap."],
               good=["Great {product}, exactly as described.", "Fits perfectly and feels {adj}.",
                     "Fast delivery, well packed. Would buy again!", "Excellent value for money."],
               bad=["The {color} is darker than in the photos.", "Stopped working after two weeks.",
                    "Size runs small, order one size up.", "Arrived late and the box was damaged."],
               headline=["Love it", "Good but not perfect", "Disappointed", "Five stars!"],
               rating="Rating", verified="Verified purchase"),
    "de": dict(colors=["schwarz", "weiß", "marineblau", "olivgrün", "rot", "grau", "beige"],
               materials=["Leder", "Baumwolle", "recyceltes Polyester", "Edelstahl", "Aluminium",
                          "Wolle"],
               adjectives=["leicht", "robust", "wasserdicht", "kompakt", "hochwertig", "klassisch"],
               labels=["Marke", "Farbe", "Material", "Größe", "Zustand"],
               conditions=["Neu", "Gebraucht - wie neu", "Generalüberholt"],
               describe=["{brand} {product}: {adj}, aus {material} gefertigt.",
                         "Ideal für den Alltag, auf Reisen und draußen.",
                         "Farbe: {color}. Größe: {size}. Versand innerhalb von 24 Stunden.",
                         "Kostenlose Rücksendung innerhalb von 30 Tagen.",
                         "Pflegeleicht: einfach mit einem feuchten Tuch abwischen."],
               good=["Tolle Qualität, genau wie beschrieben.", "Passt perfekt und wirkt {adj}.",
                     "Schnelle Lieferung, gut verpackt. Gerne wieder!", "Preis-Leistung top."],
               bad=["Die Farbe {color} ist dunkler als auf den Fotos.",
                    "Nach zwei Wochen kaputt gegangen.", "Fällt klein aus, eine Größe größer "
                    "bestellen.", "Kam verspätet an, der Karton war beschädigt."],
               headline=["Sehr zufrieden", "Gut, aber nicht perfekt", "Enttäuscht",
                         "Fünf Sterne!"],
               rating="Bewertung", verified="Verifizierter Kauf"),
    "fr": dict(colors=["noir", "blanc", "bleu marine", "vert olive", "rouge", "gris", "beige"],
               materials=["cuir", "coton", "polyester recyclé", "acier inoxydable", "aluminium",
                          "laine"],
               adjectives=["léger", "résistant", "imperméable", "compact", "haut de gamme",
                           "classique"],
               labels=["Marque", "Couleur", "Matière", "Taille", "État"],
               conditions=["Neuf", "Occasion - comme neuf", "Reconditionné"],
               describe=["Ce produit {brand} ({product}) est {adj} et fabriqué en {material}.",
                         "Idéal au quotidien, en voyage et en plein air.",
                         "Couleur : {color}. Taille : {size}. Expédié sous 24 heures.",
                         "Retours gratuits sous 30 jours. Emballage d'origine inclus.",
                         "Facile à entretenir avec un chiffon humide."],
               good=["Très bonne qualité, conforme à la description.", "Taille parfaitement.",
                     "Livraison rapide, bien emballé. Je recommande !", "Excellent rapport "
                     "qualité-prix."],
               bad=["La couleur {color} est plus foncée que sur les photos.",
                    "Ne fonctionne plus après deux semaines.", "Taille petit, prenez une taille "
                    "au-dessus.", "Arrivé en retard, carton abîmé."],
               headline=["J'adore", "Bien mais pas parfait", "Déçu", "Cinq étoiles !"],
               rating="Note", verified="Achat vérifié"),
    "es": dict(colors=["negro", "blanco", "azul marino", "verde oliva", "rojo", "gris", "beige"],
               materials=["cuero", "algodón", "poliéster reciclado", "acero inoxidable",
                          "aluminio", "lana"],
               adjectives=["ligero", "resistente", "impermeable", "compacto", "de alta calidad",
                           "clásico"],
               labels=["Marca", "Color", "Material", "Talla", "Estado"],
               conditions=["Nuevo", "Usado - como nuevo", "Reacondicionado"],
               describe=["Este artículo de {brand} ({product}) es {adj} y está hecho de "
                         "{material}.", "Perfecto para el día a día, los viajes y el aire libre.",
                         "Color: {color}. Talla: {size}. Envío en 24 horas.",
                         "Devolución gratuita en 30 días.",
                         "Fácil de limpiar con un paño húmedo."],
               good=["Muy buena calidad, tal como se describe.", "Queda perfecto.",
                     "Entrega rápida y bien embalado. ¡Repetiría!", "Muy buena relación "
                     "calidad-precio."],
               bad=["El color {color} es más oscuro que en las fotos.",
                    "Dejó de funcionar a las dos semanas.", "Talla pequeña, pide una más.",
                    "Llegó tarde y la caja estaba dañada."],
               headline=["Me encanta", "Bien, pero no perfecto", "Decepcionado", "¡Cinco "
                         "estrellas!"],
               rating="Valoración", verified="Compra verificada"),
    "it": dict(colors=["nero", "bianco", "blu navy", "verde oliva", "rosso", "grigio", "beige"],
               materials=["pelle", "cotone", "poliestere riciclato", "acciaio inox", "alluminio",
                          "lana"],
               adjectives=["leggero", "resistente", "impermeabile", "compatto", "di alta qualità",
                           "classico"],
               labels=["Marca", "Colore", "Materiale", "Taglia", "Condizione"],
               conditions=["Nuovo", "Usato - come nuovo", "Ricondizionato"],
               describe=["Questo articolo {brand} ({product}) è {adj} e realizzato in "
                         "{material}.", "Perfetto per l'uso quotidiano, i viaggi e l'outdoor.",
                         "Colore: {color}. Taglia: {size}. Spedizione entro 24 ore.",
                         "Reso gratuito entro 30 giorni.",
                         "Facile da pulire con un panno umido."],
               good=["Ottima qualità, come descritto.", "Veste alla perfezione.",
                     "Consegna veloce, ben imballato. Lo ricomprerei!", "Ottimo rapporto "
                     "qualità-prezzo."],
               bad=["Il colore {color} è più scuro che nelle foto.",
                    "Ha smesso di funzionare dopo due settimane.", "Veste piccolo, prendete una "
                    "taglia in più.", "Arrivato in ritardo, scatola danneggiata."],
               headline=["Lo adoro", "Buono ma non perfetto", "Deluso", "Cinque stelle!"],
               rating="Valutazione", verified="Acquisto verificato"),
}


def iter_ecommerce_records(n: int, seed: int = 0, kind: str | None = None) -> Iterator[dict]:
    """`n` records {id, kind (listing|review), lang, title, aspects, description}, seeded."""
    rng = random.Random(seed)
    for i in range(n):
        lang = rng.choices(LANGUAGES, LANGUAGE_WEIGHTS)[0]
        w = WORDS[lang]
        names, sizes = rng.choice(PRODUCTS)
        slots = dict(product=names[LANGUAGES.index(lang)], brand=rng.choice(BRANDS),
                     color=rng.choice(w["colors"]), material=rng.choice(w["materials"]),
                     adj=rng.choice(w["adjectives"]), size=rng.choice(sizes))
        this_kind = kind or rng.choice(("listing", "review"))
        make = _listing if this_kind == "listing" else _review
        yield {"id": f"{this_kind}-{seed}-{i}", "kind": this_kind, "lang": lang,
               **make(rng, w, slots)}


def _listing(rng: random.Random, w: dict, s: dict) -> dict:
    title = f"{s['brand']} {s['product']} {s['adj']} {s['color']} {s['size']}"
    values = [s["brand"], s["color"], s["material"], s["size"], rng.choice(w["conditions"])]
    aspects = "; ".join(f"{k}: {v}" for k, v in zip(w["labels"], values))
    sentences = rng.sample(w["describe"], k=rng.randint(3, len(w["describe"])))
    price = f"{rng.randint(9, 499)},{rng.choice(['00', '49', '95', '99'])} €"
    return {"title": title, "aspects": f"{aspects}; {price}",
            "description": " ".join(t.format(**s) for t in sentences)}


def _review(rng: random.Random, w: dict, s: dict) -> dict:
    stars = rng.choices([1, 2, 3, 4, 5], [1, 1, 2, 4, 6])[0]
    pool = w["good"] if stars >= 4 else w["bad"] + w["good"][:1]
    body = " ".join(t.format(**s) for t in rng.sample(pool, k=rng.randint(1, len(pool))))
    headline = w["headline"][0 if stars == 5 else 1 if stars >= 3 else 2]
    return {"title": f"{headline} ({s['brand']} {s['product']})",
            "aspects": f"{w['rating']}: {stars}/5; {w['verified']}; {s['size']}, {s['color']}",
            "description": body}


def render_ecommerce_text(record: dict, separator: str = "\n\n") -> str:
    """A record as one text, the way tokenization joins DEMO_TEXT_KEYS["ecommerce"]."""
    return separator.join(record[k] for k in DEMO_TEXT_KEYS["ecommerce"])


def iter_stdlib_docstrings(min_chars: int = 200) -> Iterator[dict]:
    """One document per standard-library module: its docstrings, in sorted path order."""
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "test", "tests",
                                                              "idle_test", "__pycache__"))
        for name in sorted(f for f in filenames if f.endswith(".py")):
            path = os.path.join(dirpath, name)
            text = _module_docstrings(path)
            if text is not None and len(text) >= min_chars:
                yield {"id": os.path.relpath(path, root), "lang": "en", "text": text}


def _module_docstrings(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):  # e.g. lib2to3's Python 2 fixtures
        return None
    parts = [ast.get_docstring(tree) or ""]
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            if doc:
                parts.append(f"{node.name}: {doc}")
    return "\n\n".join(p for p in parts if p) or None


def write_demo_corpus(out_dir: str, *, seed: int = 0, ecommerce_docs: int = 4000,
                      general_bytes: int = 2_000_000) -> dict[str, list[str]]:
    """Write the corpora under `out_dir`: {"ecommerce": [listings .jsonl.gz, reviews .jsonl.zst],
    "general": [stdlib docstrings .jsonl]}. Same arguments, same bytes."""
    import zstandard

    os.makedirs(out_dir, exist_ok=True)
    listings = os.path.join(out_dir, "ecommerce_listings.jsonl.gz")
    reviews = os.path.join(out_dir, "ecommerce_reviews.jsonl.zst")
    general = os.path.join(out_dir, "general_stdlib_docstrings.jsonl")
    with open(listings, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(_jsonl(iter_ecommerce_records(ecommerce_docs // 2, seed, "listing")))
    with open(reviews, "wb") as f:
        f.write(zstandard.ZstdCompressor(level=3).compress(
            _jsonl(iter_ecommerce_records(ecommerce_docs - ecommerce_docs // 2, seed + 1,
                                          "review"))))
    written, lines = 0, []
    for record in iter_stdlib_docstrings():
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        written += len(lines[-1])
        if written >= general_bytes:
            break
    if written < min(general_bytes, 100_000):
        raise RuntimeError(f"only {written} bytes of standard-library docstrings found under "
                           f"{sysconfig.get_paths()['stdlib']}; is the stdlib source installed?")
    with open(general, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return {"ecommerce": [listings, reviews], "general": [general]}


def _jsonl(records: Iterator[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def build_demo_datasets(out_dir: str, *, seed: int = 0, workers: int = 1,
                        progress: bool = False) -> dict[str, str]:
    """Write and tokenize the demo corpus: {corpus name: merged dataset prefix}."""
    from elama.data.tokenize import tokenize_files

    corpus = write_demo_corpus(os.path.join(out_dir, "raw"), seed=seed)
    prefixes = {}
    for name, paths in corpus.items():
        prefix = os.path.join(out_dir, "tokenized", name)
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        tokenize_files(paths, prefix, text_keys=DEMO_TEXT_KEYS[name], language_key="lang",
                       workers=workers, merge=True, progress=progress)
        prefixes[name] = prefix
    return prefixes
