"""The linear head: logistic regression on the standardised, concatenated features of the
chosen models, fitted to convergence (the probe's solver). On a few labels per class it
beats the MLP head on the same features, which early stopping on a handful of rows cannot
regularise (``studies/fewshot``). Dense features only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from autolayer.errors import ConfigError
from autolayer.heads.base import Fitting, HeadFit, register_head
from autolayer.heads.modules import NetHead, _Standardised, n_learned, seeded, to_tensor

if TYPE_CHECKING:
    import optuna


class LinearNet(nn.Module):
    """Per-model standardise -> concatenate -> one ``Linear(ΣD_i, C)``: logits ``[B, C]``.
    The tensor names (``projections.*``, ``head.*``) are what saved heads hold."""

    def __init__(self, input_dims: Sequence[int], n_outputs: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(_Standardised(dim) for dim in input_dims)
        self.head = nn.Linear(sum(input_dims), n_outputs)

    def features(self, inputs: Sequence[Tensor]) -> Tensor:
        """The standardised, concatenated features ``[B, ΣD_i]``."""
        return torch.cat([p(x) for p, x in zip(self.projections, inputs, strict=True)], dim=1)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return self.head(self.features(inputs))


@register_head("linear")
class LinearHead(NetHead):
    """Logistic regression, its L2 penalty chosen by cross-validation on the training rows
    (:func:`autolayer.probe.chosen_alpha`); nothing to tune, so one configuration."""

    dense_only = True

    @classmethod
    def check_params(cls, params: Mapping[str, Any], where: str = "head") -> dict[str, Any]:
        if params:
            unknown = ", ".join(map(repr, sorted(str(k) for k in params)))
            raise ConfigError(f"{where}: unknown field(s) {unknown}; the linear head takes none")
        return {}

    @classmethod
    def suggest(cls, trial: optuna.Trial, space: Any, chosen: Sequence[Any]) -> dict[str, Any]:
        return {}

    @classmethod
    def guided(cls, space: Any, chosen: Sequence[Any]) -> dict[str, Any]:
        return {}

    @classmethod
    def n_parameters(
        cls, input_dims: Sequence[int], n_outputs: int, params: Mapping[str, Any]
    ) -> int:
        return (sum(input_dims) + 1) * n_outputs

    @classmethod
    def n_configurations(cls, space: Any) -> int | None:
        return 1

    @classmethod
    def describe(cls, params: Mapping[str, Any], n_models: int) -> str:
        return "linear head (logistic regression)"

    def _fit(self, fitting: Fitting) -> HeadFit:
        """Fit to convergence; the one entry of the history is the validation metric (the
        training metric without ``val``)."""
        f = fitting
        with seeded(f.seed, f.device) as device:
            x, y = self._start(f.train, f.target, device)
            self._solve(x, y)
            if f.val is None:
                score = self._score(x, f.target)
            else:
                score = self._score([to_tensor(array, device) for array in f.val], f.val_target)
        self.net_.cpu().eval()
        return HeadFit(0, score, (score,), 0.0, n_learned(self.net_))

    @torch.no_grad()
    def _solve(self, x: list[Tensor], y: Tensor) -> None:
        """Logistic regression on the standardised features (sklearn's, its L2 penalty
        chosen by CV on the training rows) set as the Linear's weights."""
        from autolayer.logistic import fit_logistic
        from autolayer.probe import chosen_alpha

        net = self.net_
        features = net.features(x)
        alpha = chosen_alpha(
            features.cpu().numpy(), y.cpu().numpy(), self.metric, device=features.device
        )
        ones = torch.ones(len(features), 1, dtype=features.dtype, device=features.device)
        features = torch.cat([features, ones], dim=1)
        # tol: a probe ranking layers can stop early; a head that predicts cannot
        weights = fit_logistic(features[None], y, alpha, tol=1e-6)[0]  # [K', D+1]
        k = weights.shape[0]  # K' < C when the top classes are missing from training
        net.head.weight.zero_()
        net.head.bias.fill_(-30.0)  # a class never seen never wins
        net.head.weight[:k] = weights[:, :-1].to(net.head.weight.dtype)
        net.head.bias[:k] = weights[:, -1].to(net.head.bias.dtype)

    def _build(self) -> LinearNet:
        return LinearNet(self.input_dims_, self.n_outputs_)
