"""Reward-interaction IPS (RIPS) for slates."""

from __future__ import annotations

from offline_eval.ips import IPS


class RIPS(IPS):
    """RIPS (McInerney et al., 2020): slot k weighted by the ratio of the prefix of items up to k.

    Scout's :class:`~offline_eval.ips.IPS` already uses exactly these prefix weights, because Scout logs the
    conditional propensities of sequential slates; ``rips`` is the same estimator under its slate-literature name,
    so reports line up with other toolkits. Unbiased when slot k's reward depends only on the items in slots 0..k.
    """

    name = "rips"
