"""A request's solver and cost options resolved over the server's settings (bad values: INVALID_ARGUMENT)."""

from __future__ import annotations

from gotd.cache.errors import InvalidArgument
from gotd.server.selection.costs import Cost, CostConfig
from gotd.server.selection.modes import Mode, SelectionConfig
from gotd.server.service.config import Settings
from gotd.server.service.requests import SolverParams

__all__ = ["cost_config", "max_staleness", "solver_config"]


def solver_config(settings: Settings, params: SolverParams) -> SelectionConfig:
    """The solver configuration of a request: its options over the server defaults.

    Epsilon: the request's absolute or relative epsilon (not both), else the server's
    ``relative_eps`` when set, else its ``eps``.
    """
    s = settings
    if params.eps is not None and params.relative_eps is not None:
        raise InvalidArgument("set at most one of epsilon and relative_epsilon")
    relative = params.relative_eps if params.eps is None else None
    if params.eps is None and relative is None:
        relative = s.relative_eps
    try:
        return SelectionConfig(
            mode=params.mode or Mode(s.default_mode),
            eps=params.eps if params.eps is not None else s.eps,
            tol=params.tol if params.tol is not None else s.tol,
            max_iter=params.max_iter if params.max_iter is not None else s.max_iter,
            exact_max_pool=s.exact_max_pool,
            summary_size=params.summary_size if params.summary_size is not None else s.summary_size,
            paper_domains=params.paper_domains if params.paper_domains is not None else s.paper_domains,
            relative_eps=relative,
        )
    except ValueError as err:
        raise InvalidArgument(str(err)) from None


def max_staleness(settings: Settings, params: SolverParams, cost: Cost = Cost.EMBEDDING) -> float:
    """The request's staleness bound (share of the pool's rows), else the server's for ``cost``."""
    s = settings
    default = s.max_staleness_fused if cost is Cost.FUSED else s.max_staleness
    value = params.max_staleness if params.max_staleness is not None else default
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise InvalidArgument(f"max_staleness must be in [0, 1], got {value}")
    return value


def cost_config(settings: Settings, params: SolverParams) -> CostConfig:
    """The cost of a request: its options over the server defaults."""
    s = settings
    try:
        return CostConfig(
            cost=params.cost or Cost(s.cost),
            embedding_weight=(
                params.embedding_weight if params.embedding_weight is not None else s.embedding_weight
            ),
            metric=params.metric,
        )
    except ValueError as err:
        raise InvalidArgument(str(err)) from None
