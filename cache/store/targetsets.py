"""A named target set's stored value, from a request's ids, vectors and texts (checked first)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from gotd.cache.errors import FailedPrecondition, InvalidArgument
from gotd.cache.records import validate_id, validate_name
from gotd.cache.store.layout import TargetSetInfo
from gotd.cache.store.sketch import Sketcher, encode_target_set, sketch_matrix
from gotd.cache.store.vectors import content_hash, unit_rows

__all__ = ["target_set_value"]


def target_set_value(
    name: str,
    ids: Sequence[str],
    vectors: np.ndarray,
    *,
    model: str,
    dim: int,
    texts: Sequence[str | None] | None,
    sketcher: Sketcher | None,
) -> tuple[TargetSetInfo, bytes]:
    """The info and ``targets`` value of a target set (:meth:`gotd.cache.store.core.Store.put_target_set`).

    InvalidArgument for a bad name or id, a duplicate id or a bad shape; FailedPrecondition for vectors
    of another dimension.
    """
    validate_name(name, kind="target set")
    id_list = [validate_id(i) for i in ids]
    if not id_list:
        raise InvalidArgument(f"target set {name!r} is empty")
    if len(set(id_list)) != len(id_list):
        dup = next(i for k, i in enumerate(id_list) if i in id_list[:k])
        raise InvalidArgument(f"target set {name!r}: duplicate id {dup!r}")
    matrix = np.asarray(vectors)
    if matrix.ndim != 2 or matrix.shape[0] != len(id_list):
        raise InvalidArgument(f"target set {name!r}: vectors must have shape ({len(id_list)}, {dim})")
    if matrix.shape[1] != dim:
        raise FailedPrecondition(
            f"target set {name!r}: vectors have dimension {matrix.shape[1]}, expected {dim}"
        )
    units = unit_rows(matrix, what=f"target set {name!r}", ids=id_list)
    if texts is not None and len(texts) != len(id_list):
        raise InvalidArgument(f"target set {name!r}: {len(texts)} texts for {len(id_list)} ids")
    sketches = None
    if texts is not None and sketcher is not None:
        sketches = sketch_matrix(sketcher, texts)
    info = TargetSetInfo(
        name=name,
        count=len(id_list),
        model=model,
        dim=dim,
        content_hash=content_hash(model, units),
        created=time.time(),
    )
    return info, encode_target_set(info, id_list, units, sketches)
