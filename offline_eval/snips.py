"""Self-normalized inverse propensity scoring, slot by slot."""

from __future__ import annotations

from offline_eval.base import Estimator, RewardPredictions, SlateData, Terms


class SNIPS(Estimator):
    """``V = sum_k sum_i(W_ik r_ik) / sum_i(W~_ik)``: slightly biased, lower variance than IPS.

    The denominator is the *extended* weight (carried through slots a decision did not serve, mean one), so
    slates of different lengths are weighted correctly; normalizing slot k only over the decisions that served it
    would estimate ``E[r_k | slot k served]`` instead of ``E[r_k]``.
    """

    name = "snips"

    def terms(self, data: SlateData, predictions: RewardPredictions | None = None) -> Terms:
        """Weighted rewards over extended weights."""
        return Terms(data.prefix_weights() * data.reward, data.extended_weights())
