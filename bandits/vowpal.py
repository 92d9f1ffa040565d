"""Vowpal Wabbit ``cb_explore_adf`` behind the policy interface: the one module that talks to VW.

The binding is ``vowpal-wabbit-next`` (0.7): ``Workspace`` takes VW's command line, ``TextFormatParser`` parses
VW text lines, a list of parsed lines is one multi-line (ADF) example, ``predict_one`` returns
``[(action_index, probability), ...]`` and ``serialize()`` gives VW's own model bytes, which are this policy's
state (the official ``vowpalwabbit`` binding reads the same model files).

Each candidate is one action line ``|a 0:x0 1:x1 ...`` of its Scout features. Slot by slot, VW predicts a
probability mass function over the still-available candidates; Scout samples from it (as float64, renormalized),
so the logged propensity is exactly the probability used, and any logged slate's probability is recomputed by
predicting on the same available sets. Deterministic-given-the-model PMFs (epsilon, softmax, bag, squarecb,
cover) make this exact; the exposure's quota and floor apply on top as for every policy.

Learning: each served slot is one ``cb_explore_adf`` example with label ``cost = -reward`` and the logged
propensity. With the default ``mtr`` reduction only the chosen action's line enters the update, so the example
holds that line alone; ``--cover`` learns from every action and gets the slot's whole available set. Parsed
examples are dropped right after use (each holds tens of kilobytes).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import vowpal_wabbit_next as vw

from bandits.base import CandidateBatch, Candidates, Exposure, FeatureParts, Policy, PolicyStateError

EXPLORATIONS = ("epsilon", "softmax", "bag", "squarecb", "cover")


class VowpalWabbit(Policy):
    """A VW ``cb_explore_adf`` policy.

    Parameters
    ----------
    feature_dim
        Number of feature columns F.
    exploration
        One of ``epsilon``, ``softmax``, ``bag``, ``squarecb``, ``cover``.
    epsilon
        Exploration for ``epsilon``, ``bag`` and ``cover`` (VW's ``--epsilon``).
    lam
        Softmax inverse temperature (VW's ``--lambda``).
    bag
        Number of bags for ``bag``.
    cover
        Number of cover policies for ``cover``.
    gamma_scale
        SquareCB's ``--gamma_scale``.
    learning_rate
        VW's ``-l``.
    exposure
        Exposure settings (quota and floor only: VW scores are not in reward units, so ``emerging_weight`` and
        ``optimism`` are rejected).
    """

    name = "vw"

    def __init__(
        self,
        feature_dim: int,
        exploration: str = "epsilon",
        epsilon: float = 0.05,
        lam: float = 10.0,
        bag: int = 5,
        cover: int = 3,
        gamma_scale: float = 10.0,
        learning_rate: float = 0.5,
        exposure: Exposure | None = None,
    ) -> None:
        super().__init__(feature_dim, exposure)
        if exploration not in EXPLORATIONS:
            raise ValueError(f"exploration must be one of {EXPLORATIONS}, got {exploration!r}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if int(bag) != bag or bag < 1 or int(cover) != cover or cover < 1:
            raise ValueError(f"bag and cover must be positive integers, got {bag} and {cover}")
        if not (learning_rate > 0 and lam >= 0 and gamma_scale > 0):
            raise ValueError("learning_rate and gamma_scale must be positive and lam non-negative")
        if self.exposure.emerging_weight or self.exposure.optimism:
            raise ValueError("vw supports the exposure's quota and floor, not emerging_weight or optimism")
        self.exploration = exploration
        self.epsilon, self.lam, self.gamma_scale = float(epsilon), float(lam), float(gamma_scale)
        self.bag, self.cover, self.learning_rate = int(bag), int(cover), float(learning_rate)
        self._workspace = vw.Workspace(self.command())
        self._parser = vw.TextFormatParser(self._workspace)
        self._cache: tuple[np.ndarray, list[Any]] | None = None

    def command(self) -> list[str]:
        """VW's command line for these parameters."""
        args = ["--cb_explore_adf", "--quiet", "-l", str(self.learning_rate)]
        match self.exploration:
            case "epsilon":
                args += ["--epsilon", str(self.epsilon)]
            case "softmax":
                args += ["--softmax", "--lambda", str(self.lam)]
            case "bag":
                args += ["--bag", str(self.bag), "--epsilon", str(self.epsilon)]
            case "squarecb":
                args += ["--squarecb", "--gamma_scale", str(self.gamma_scale)]
            case "cover":
                args += ["--cover", str(self.cover), "--epsilon", str(self.epsilon)]
        return args

    # -- scoring -----------------------------------------------------------------------------------------------

    def scores(self, features: np.ndarray) -> np.ndarray:
        """VW's probability of each candidate for the first slot."""
        return self._pmf(features, np.ones(len(features), dtype=bool))

    def candidate_table(
        self,
        features: np.ndarray,
        item_ids: np.ndarray | None,
        creator_ids: np.ndarray | None,
        parts: FeatureParts | None = None,
    ) -> np.ndarray:
        """The features themselves: each slot asks VW for a distribution over the available ones."""
        return features

    def slot_probabilities(self, scores: np.ndarray, available: np.ndarray) -> np.ndarray:
        """VW's probability mass function over the available candidates (``scores`` holds their features)."""
        return self._pmf(scores, available)

    def rank(self, candidates: Candidates, num_items: int, rng: np.random.Generator) -> Any:
        """As :meth:`Policy.rank`; the slate's ``scores`` are VW's first-slot probabilities."""
        slate = super().rank(candidates, num_items, rng)
        self._cache = None
        return slate

    def _pmf(self, features: np.ndarray, available: np.ndarray) -> np.ndarray:
        if self._cache is None or self._cache[0] is not features:
            self._cache = (features, [self._parser.parse_line(line) for line in _lines(features)])
        cells = np.flatnonzero(available)
        examples = self._cache[1]
        prediction: Any = self._workspace.predict_one([examples[i] for i in cells])
        p = np.zeros(len(features))
        for action, prob in prediction:
            p[cells[int(action)]] = float(prob)
        return p / p.sum()

    def table(self, candidates: Candidates) -> np.ndarray:
        """The candidates' features (VW scores inside each slot's prediction)."""
        self._check(candidates)
        return candidates.features

    def slot_distributions(self, candidates: Candidates, indices: np.ndarray) -> np.ndarray:
        """As :meth:`Policy.slot_distributions`, parsing the candidates once."""
        out = super().slot_distributions(candidates, indices)
        self._cache = None
        return out

    # -- learning ----------------------------------------------------------------------------------------------

    def update(self, features: np.ndarray, rewards: np.ndarray) -> None:
        """Learn m served items as one-action examples with propensity 1 (regression on the reward)."""
        for x, r in zip(np.atleast_2d(features), np.atleast_1d(rewards), strict=True):
            self._learn([_line(x, f"0:{-float(r)}:1.0 ")])

    def update_batch(
        self, batch: CandidateBatch, served: np.ndarray, rewards: np.ndarray, propensities: np.ndarray | None = None
    ) -> None:
        """Learn each served slot off-policy, with the logged propensity (1 where none is given)."""
        served = np.asarray(served, dtype=np.int64)
        rewards = np.asarray(rewards, dtype=np.float64)
        for i in range(len(batch)):
            available = batch.valid[i].copy()
            for s in np.flatnonzero(served[i] >= 0):
                chosen = int(served[i, s])
                p = 1.0 if propensities is None else float(propensities[i, s])
                label = f"0:{-rewards[i, s]}:{max(p, 1e-6)} "
                if self.exploration == "cover":
                    cells = np.flatnonzero(available)
                    lines = [_line(batch.features[i, c], label if c == chosen else "") for c in cells]
                else:
                    lines = [_line(batch.features[i, chosen], label)]
                self._learn(lines)
                available[chosen] = False

    def _learn(self, lines: list[str]) -> None:
        self._workspace.learn_one([self._parser.parse_line(line) for line in lines])
        self._cache = None

    # -- state -------------------------------------------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        return {
            "exploration": self.exploration,
            "epsilon": self.epsilon,
            "lam": self.lam,
            "bag": self.bag,
            "cover": self.cover,
            "gamma_scale": self.gamma_scale,
            "learning_rate": self.learning_rate,
        }

    def _state(self) -> dict[str, np.ndarray]:
        return {"vw_model": np.frombuffer(self._workspace.serialize(), dtype=np.uint8)}

    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        try:
            model = np.asarray(arrays["vw_model"], dtype=np.uint8).tobytes()
        except KeyError as exc:
            raise PolicyStateError(f"vw state lacks array {exc}") from exc
        try:
            workspace = vw.Workspace(self.command(), model_data=model)
        except Exception as exc:  # VW raises its own error types for a bad model
            raise PolicyStateError(f"vw model does not load: {exc}") from exc
        self._workspace, self._parser, self._cache = workspace, vw.TextFormatParser(workspace), None


@functools.lru_cache(maxsize=16)
def _format(width: int) -> str:
    return "|a " + " ".join(f"{j}:%.6g" for j in range(width))


def _line(x: np.ndarray, label: str = "") -> str:
    return label + _format(len(x)) % tuple(x.tolist())


def _lines(features: np.ndarray) -> list[str]:
    fmt = _format(features.shape[1])
    return [fmt % tuple(row) for row in features.tolist()]
