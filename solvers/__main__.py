"""`python -m solvers`: the registry as a Markdown table."""
from solvers.registry import SOLVERS


def registry_table() -> str:
    rows = ["| name | order | strong order (eta > 0) | NFE per step | ode/sde | adaptive | eta | reference | peers |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in SOLVERS.items():
        nfe = "adaptive" if s.nfe_per_step is None else f"{s.nfe_per_step} {s.nfe_note}".strip()
        rows.append(f"| `{name}` | {_ode_order(s)} | {_strong_order(s)} | {nfe} | {s.stochastic} "
                    f"| {'yes' if s.adaptive else 'no'} | {s.eta} | {s.reference} | {s.peers} |")
    return "\n".join(rows)


def _ode_order(solver) -> str:
    """The ODE order with default options (an SDE-only solver's nominal order: it has no eta 0 to run at); "none"
    where there is none (a CFG++ sampler, which has no ODE limit)."""
    order = solver.order if solver.stochastic == "sde" else solver.order_for(0.0)
    return "none" if order is None else str(order)


def _strong_order(solver) -> str:
    """The order on a fixed Brownian path at eta = 1 with default options ("-" for ODE solvers)."""
    if solver.stochastic == "ode":
        return "-"
    order = solver.order_for(solver.fixed_eta or 1.0)
    return "none" if order is None else str(order)


if __name__ == "__main__":
    print(registry_table())
