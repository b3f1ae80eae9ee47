"""RL domain names and the `rl.domains` weight string (kept free of heavy imports: the run spec
validates it)."""

from __future__ import annotations

# domain -> its task families (agents/envs/rl_tasks.py builds each)
FAMILIES = {"reasoning": ("text", "image"), "knowledge": ("text",), "perception": ("digit", "count", "locate", "ocr"),
            "instruction": ("text",), "tool": ("image",)}
DOMAINS = tuple(FAMILIES)


def parse_domains(spec: str) -> dict[str, float]:
    """`"reasoning:.3,perception:.4"` -> normalised weights (zero weights dropped). An entry is a
    domain (all its families in turn) or one family, `perception.digit`. An unknown name, a bad
    number or no positive weight is an error."""
    weights = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, w = part.partition(":")
        domain, _, family = name.partition(".")
        if domain not in FAMILIES or (family and family not in FAMILIES[domain]):
            known = list(DOMAINS) + [f"{d}.{f}" for d, fs in FAMILIES.items() for f in fs]
            raise ValueError(f"unknown RL domain {name!r}; known: {known}")
        try:
            weights[name] = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"domain weight of {name!r} is not a number: {w!r}") from None
        if weights[name] < 0:
            raise ValueError(f"domain weight of {name!r} is negative")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"domains {spec!r}: need at least one positive weight")
    return {k: v / total for k, v in weights.items() if v > 0}
