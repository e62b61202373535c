"""`python -m solvers`: the registry as a Markdown table."""
from solvers.registry import SOLVERS


def registry_table() -> str:
    rows = ["| name | order | NFE per step | ode/sde | adaptive | eta | reference |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in SOLVERS.items():
        nfe = "adaptive" if s.nfe_per_step is None else f"{s.nfe_per_step} {s.nfe_note}".strip()
        rows.append(f"| `{name}` | {s.effective_order()} | {nfe} | {s.stochastic} | {'yes' if s.adaptive else 'no'} "
                    f"| {s.eta} | {s.reference} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(registry_table())
