"""Exact nearest-neighbour search by brute force (a torch matmul): the dense oracle and test stand-in.

Same interface and distance conventions as :class:`~llmds_torch.retrieval.hnsw.HNSW`:
``"l2"`` squared Euclidean, ``"ip"`` the negative inner product, ``"cosine"`` ``1 - cos``; smaller is
closer, results best first, ties to the earlier-added vector.
"""

from __future__ import annotations

import numpy as np
import torch

from llmds_torch.errors import ConfigError

from .errors import DimensionMismatch, EmptyIndex, InvalidSearchParameter, NonFiniteVectors
from .ids import check_known_ids, check_new_ids, default_ids

METRICS = ("l2", "ip", "cosine")


class FlatIndex:
    """Brute-force vector index.

    Parameters
    ----------
    dim : int
    metric : "l2" | "ip" | "cosine"
    device : torch device for the stored vectors (default "cpu")
    """

    def __init__(self, dim: int, metric: str = "l2", device: str | torch.device = "cpu"):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ConfigError(f"dim must be an int >= 1; got {dim!r}")
        if metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}; got {metric!r}")
        self.dim, self.metric, self.device = dim, metric, torch.device(device)
        self._vectors = torch.empty(0, dim, dtype=torch.float32, device=self.device)  # [n, dim]
        self._ids = torch.empty(0, dtype=torch.int64)                                  # [n]
        self._next_id = 0

    def __len__(self) -> int:
        return int(self._ids.numel())

    def _as_matrix(self, x, what: str) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32).to(self.device)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DimensionMismatch(f"{what} must be [n, {self.dim}]; got {list(x.shape)}")
        if not torch.isfinite(x).all():
            raise NonFiniteVectors(f"{what} hold NaN or infinity")
        if self.metric == "cosine":
            norms = x.norm(dim=1, keepdim=True)
            if (norms == 0).any():
                raise NonFiniteVectors(f"{what} include a zero vector, which has no cosine")
            x = x / norms
        return x

    def add(self, vectors, ids=None) -> torch.Tensor:
        """Add ``[n, dim]`` vectors; ids default to consecutive from one past the largest so far.

        Raises ``InvalidIds`` or ``DuplicateIds`` (see :mod:`llmds_torch.retrieval.ids`) before any change.
        """
        x = self._as_matrix(vectors, "vectors")
        if ids is None:
            new_ids = torch.from_numpy(default_ids(self._next_id, x.shape[0]))
        else:
            new_ids = torch.from_numpy(check_new_ids(ids, x.shape[0], self._ids, "vectors"))
        self._vectors = torch.cat([self._vectors, x])
        self._ids = torch.cat([self._ids, new_ids])
        if new_ids.numel():
            self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        return new_ids

    def delete(self, ids) -> None:
        """Remove the vectors of ``ids``; ``InvalidIds`` / ``DuplicateIds`` / ``UnknownIds`` change nothing."""
        ids = torch.from_numpy(check_known_ids(ids, self._ids))
        keep = ~torch.isin(self._ids, ids)
        self._vectors, self._ids = self._vectors[keep.to(self.device)], self._ids[keep]

    def search(self, queries, k: int, ef=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``k`` nearest.

        Returns
        -------
        ids : int64 ``[nq, k]``, best first
        distances : float32 ``[nq, k]``, ascending
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidSearchParameter(f"k must be a positive int; got {k!r}")
        q = self._as_matrix(queries, "queries")
        if len(self) == 0:
            raise EmptyIndex("the index holds no vectors")
        if k > len(self):
            raise InvalidSearchParameter(f"k = {k} is larger than the {len(self)} vectors in the index")
        if self.metric == "l2":
            # dist: [nq, n]
            dist = (q * q).sum(1, keepdim=True) - 2 * q @ self._vectors.T + (self._vectors ** 2).sum(1)[None]
        elif self.metric == "ip":
            dist = -(q @ self._vectors.T)
        else:
            dist = 1.0 - q @ self._vectors.T
        # A stable sort keeps ties in insertion order.
        order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        return self._ids[order.cpu()], torch.gather(dist, 1, order).cpu()
