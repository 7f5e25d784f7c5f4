"""e-Llama's findings as checks computed from the measured numbers: each returns a Finding with the
statement, its numbers and whether it holds. Pure functions of a {model name: scores} mapping
(scores as elama.findings.evaluate.read_scores returns them), so a test can feed synthetic numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    key: str
    """Short name: replay, lr, merge, merge_endpoints."""
    claim: str
    """What e-Llama found, in one line."""
    holds: bool
    statement: str
    """The measured numbers, in one line."""
    numbers: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.key}: {'HOLDS' if self.holds else 'DOES NOT HOLD'} - {self.statement}"


def ppl(scores: dict, corpus: str) -> float:
    return scores["perplexity"][corpus]["ppl"]


def pct_change(new: float, old: float) -> float:
    return 100.0 * (new - old) / old


def domain_gain_nats(base: dict, model: dict) -> float:
    """How much the domain held-out loss fell (nats per token; ln of the perplexity ratio)."""
    return math.log(ppl(base, "domain") / ppl(model, "domain"))


def general_loss_nats(base: dict, model: dict) -> float:
    """How much the general held-out loss rose (nats per token): forgetting."""
    return math.log(ppl(model, "general") / ppl(base, "general"))


def check_replay(models: dict, recipe: str = "recipe", no_replay: str = "no_replay") -> Finding:
    """Replay keeps general skill: the recipe gains on the domain while its general perplexity
    rises less than without replay."""
    base, with_r, without = models["base"], models[recipe], models[no_replay]
    n = {"recipe_general_pct": pct_change(ppl(with_r, "general"), ppl(base, "general")),
         "no_replay_general_pct": pct_change(ppl(without, "general"), ppl(base, "general")),
         "recipe_domain_pct": pct_change(ppl(with_r, "domain"), ppl(base, "domain")),
         "no_replay_domain_pct": pct_change(ppl(without, "domain"), ppl(base, "domain"))}
    holds = n["recipe_domain_pct"] < 0 and n["recipe_general_pct"] < n["no_replay_general_pct"]
    return Finding(
        "replay", "general replay lets the model adapt to the domain without losing general skill",
        holds, f"general perplexity {n['recipe_general_pct']:+.1f}% vs base with 50% replay "
        f"(no replay: {n['no_replay_general_pct']:+.1f}%); domain perplexity "
        f"{n['recipe_domain_pct']:+.1f}% (no replay: {n['no_replay_domain_pct']:+.1f}%)", n)


def check_lr(models: dict, lr_variants: dict[str, float], best_expected: float = 0.10) -> Finding:
    """The peak LR balances adaptation against forgetting: the variant at `best_expected` of the
    base's LR has the best domain gain minus general loss (both in nats per token).
    lr_variants: {model name: peak LR as a fraction of the base's}."""
    base = models["base"]
    net = {name: domain_gain_nats(base, models[name]) - general_loss_nats(base, models[name])
           for name in lr_variants}
    best = max(net, key=net.get)
    parts = [f"{100 * lr_variants[m]:g}%: domain "
             f"{100 * (math.exp(-domain_gain_nats(base, models[m])) - 1):+.1f}% general "
             f"{100 * (math.exp(general_loss_nats(base, models[m])) - 1):+.1f}% net "
             f"{net[m]:+.3f}" for m in sorted(lr_variants, key=lr_variants.get)]
    holds = math.isclose(lr_variants[best], best_expected)
    return Finding(
        "lr", f"a peak LR of {100 * best_expected:g}% of the base's balances domain gain and "
        "forgetting best", holds,
        f"best net of domain gain and general loss at {100 * lr_variants[best]:g}% of the base LR "
        f"({'; '.join(parts)}; net = ln domain ppl drop - ln general ppl rise)",
        {"net_nats": net, "best": best})


def is_monotone(values: list[float], increasing: bool, rel_tol: float = 0.0) -> bool:
    """Non-strictly monotone, allowing steps against the direction up to rel_tol of the value."""
    sign = 1 if increasing else -1
    return all(sign * (b - a) >= -rel_tol * abs(a) for a, b in zip(values, values[1:]))


def check_merge(sweep: list[tuple[float, dict]]) -> Finding:
    """Merging moves smoothly from base to adapted model: domain perplexity falls monotonically
    with alpha (the share of the adapted weights). sweep: [(alpha, scores)] in any order."""
    sweep = sorted(sweep, key=lambda p: p[0])
    alphas = [a for a, _ in sweep]
    domain = [ppl(s, "domain") for _, s in sweep]
    general = [ppl(s, "general") for _, s in sweep]
    shop = [s["shopbench"]["score"] for _, s in sweep]
    holds = is_monotone(domain, increasing=False)
    return Finding(
        "merge", "merging base and adapted weights moves smoothly between the two", holds,
        "domain perplexity " + ("monotone" if holds else "NOT monotone") + " in alpha: "
        + ", ".join(f"{a:g}: {d:.1f}" for a, d in zip(alphas, domain))
        + f"; general perplexity {'monotone' if is_monotone(general, True) else 'not monotone'} "
        f"({general[0]:.1f} -> {general[-1]:.1f}); ShopBench accuracy "
        f"{'monotone' if is_monotone(shop, True) else 'not monotone'} "
        f"({shop[0]:.3f} -> {shop[-1]:.3f})",
        {"alphas": alphas, "domain_ppl": domain, "general_ppl": general, "shopbench": shop})


def check_merge_endpoints(weight_diffs: dict[str, float], tol: float = 0.0) -> Finding:
    """The sweep's alpha 0 and 1 are the base and the adapted model again, weight for weight
    (weight_diffs: {"alpha0_vs_base": max |difference|, "alpha1_vs_recipe": ...})."""
    worst = max(weight_diffs.values())
    return Finding("merge_endpoints", "alpha 0 and 1 reproduce the base and the adapted model",
                   len(weight_diffs) == 2 and worst <= tol,
                   "largest weight difference at the endpoints "
                   + ", ".join(f"{k} {v:.3g}" for k, v in sorted(weight_diffs.items()))
                   + f" (tolerance {tol:g}; their scores are the base's and the recipe's)",
                   dict(weight_diffs))


def sweep_points(models: dict, alphas, adapted: str = "recipe") -> list[tuple[float, dict]]:
    """(alpha, scores) along the merge: alpha 0 is the base, 1 the adapted model, the others
    merge_<alpha>."""
    ends = {0.0: models["base"], 1.0: models[adapted]}
    return [(a, ends[a] if a in ends else models[f"merge_{a:g}"]) for a in sorted(alphas)]


def check_settled(valid_losses: list[float], rel_tol: float = 0.02) -> Finding:
    """The base is pretrained to a settled loss: its held-out general loss (the trainer's periodic
    validation; the per-step training loss of 4 sequences is too noisy) changed by at most
    rel_tol between the last two validations."""
    if len(valid_losses) < 2:
        return Finding("base_settled", "the base is pretrained to a settled loss", False,
                       f"{len(valid_losses)} validation(s) of the base: need two to tell", {})
    change = valid_losses[-1] / valid_losses[-2] - 1
    return Finding("base_settled", "the base is pretrained to a settled loss",
                   abs(change) <= rel_tol,
                   f"held-out general loss {valid_losses[0]:.3f} -> {valid_losses[-1]:.3f} nats; "
                   f"{100 * change:+.1f}% between the last two validations (settled: within "
                   f"{100 * rel_tol:g}%)", {"change": change, "losses": list(valid_losses)})


def compute_findings(models: dict, lr_variants: dict[str, float], alphas, base_losses: list[float],
                     weight_diffs: dict[str, float]) -> list[Finding]:
    return [check_settled(base_losses), check_replay(models), check_lr(models, lr_variants),
            check_merge(sweep_points(models, alphas)), check_merge_endpoints(weight_diffs)]
