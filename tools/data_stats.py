"""elama-data-stats: tokens per corpus and language from tokenized datasets' manifests, and for a
blend and a token budget, the epochs each corpus would be repeated.

  elama-data-stats data/ecommerce data/general
  elama-data-stats --blend 0.5 data/ecommerce 0.5 data/general --token-budget 1T --plot tokens.png
Weights are relative: when they do not sum to 1 they are normalised, and a note says so.
"""
from __future__ import annotations

import argparse
import json
import sys

from elama.data.stats import (blend_rows, corpus_rows, format_blend_table, format_corpus_table,
                              normalization_note, parse_blend, parse_token_count,
                              plot_language_bars)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefixes", nargs="*", help="dataset prefixes (<prefix>.manifest.json)")
    p.add_argument("--blend", nargs="+", metavar="WEIGHT_OR_PREFIX",
                   help="weight prefix pairs: 0.5 data/ecommerce 0.5 data/general")
    p.add_argument("--token-budget", default="1T", help="training tokens, e.g. 1T, 250B (default: 1T)")
    p.add_argument("--plot", metavar="PNG",
                   help="write a bar chart of tokens per source and language (with --blend: the "
                        "tokens the budget draws from each)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.prefixes and not args.blend:
        build_parser().error("give dataset prefixes and/or --blend")
    try:
        budget = parse_token_count(args.token_budget)
        blend = parse_blend(args.blend) if args.blend else []
        prefixes = list(dict.fromkeys(args.prefixes + [p for _, p in blend]))
        corpora = corpus_rows(prefixes)
        mix = blend_rows(blend, budget) if blend else []
    except ValueError as e:  # ManifestError included: it names the file
        print(f"elama-data-stats: error: {e}", file=sys.stderr)
        return 2
    note = normalization_note(mix) if mix else None
    if note:
        print(f"elama-data-stats: note: {note}", file=sys.stderr)
    if args.plot:
        try:
            plot_language_bars(mix or corpora, args.plot, budget=bool(mix))
        except OSError as e:
            print(f"elama-data-stats: error: --plot {args.plot}: {e.strerror}", file=sys.stderr)
            return 2
        print(f"elama-data-stats: wrote {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps({"corpora": corpora, "blend": mix, "token_budget": budget}, indent=2))
        return 0
    print(format_corpus_table(corpora))
    if mix:
        print()
        print(format_blend_table(mix, budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())
