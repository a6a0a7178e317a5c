"""Activation functions: one registry of modules, plus the layer helpers the encoder/decoder use.

Every activation is an :class:`Activation` (an ``nn.Module``) with ``forward(x, mask=None)``:

* it works on any shape ``(..., C)`` (features last) in float32, float64 and bfloat16, and returns
  the input's dtype (learned parameters are cast to it);
* ``mask`` is ignored by every activation except :class:`APReLU` (which pools over the sequence);
* the output has the input's shape, except :class:`Maxout`: ``(..., k*C) -> (..., C)``.

In an autoregressive decoder, ``forward_causal(x)`` (teacher forcing, ``x (batch, T, C)``) and
``forward_step(x, pool)`` (one step, carrying a running ``pool`` in the decoder state) compute the
same numbers; for every activation except APReLU they are ``forward(x)``.

The math is written out with elementary tensor ops (``torch.exp``, ``torch.erf``, ``torch.tanh``,
``torch.sigmoid``, ``torch.where`` ...); the ``torch.nn.functional`` built-ins serve as test oracles.
Defaults follow PyTorch where it has the function (leaky slope 0.01, exact-erf GELU, softplus
beta=1 and threshold=20).

Registry::

    get_activation("gelu")                          # module with the default options
    get_activation("maxout", pieces=3)
    get_activation("aprelu", channels=256)          # per-channel parameters need channels=
    spec = available_activations()["selu"]          # .description .paper .self_normalizing ...

For plotting a curve of scalar inputs ``x`` of shape ``(N, 1)``, ``spec.example()`` builds the module
with default options and ``channels=1`` where channels are needed (for APReLU that makes its
LayerNorm over a single feature constant, so the slope does not depend on x: a PReLU at its init).
"""
from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt import kernels
from nmt.errors import ConfigError

__all__ = [
    "Activation", "Identity", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "PReLU", "ELU", "SELU", "GELU",
    "Swish", "Mish", "Softplus", "Maxout", "AReLU", "APReLU",
    "ActivationSpec", "available_activations", "get_activation",
    "ActivatedLinear", "Dropout", "make_dropout", "activation_parameters",
]


class Activation(nn.Module):
    """Base class: ``forward(x, mask=None)``; ``mask`` is ignored unless a subclass says otherwise.

    Every activation but :class:`APReLU` is position-wise, so the decoder forms below are ``forward``.
    """

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward_causal(self, x: Tensor) -> Tensor:
        """Teacher forcing in an autoregressive decoder: ``x (batch, T, C)``, step t sees steps <= t."""
        return self(x)

    def forward_step(self, x: Tensor, pool: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """One decoder step ``x (batch, C)`` given ``pool``, what the earlier steps left (None before
        the first step): returns ``(y, pool)`` for the next step. T calls equal ``forward_causal``."""
        return self(x), pool


def _relu(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, 0.0)


def _negative_part(x: Tensor) -> Tensor:
    """min(x, 0)."""
    return torch.where(x < 0, x, 0.0)


def _softplus(x: Tensor, beta: float, threshold: float) -> Tensor:
    """(1/beta) log(1 + exp(beta x)), and x where beta x > threshold (as in PyTorch).

    The exponent is clamped at the threshold so that the branch not taken stays finite (an ``inf``
    there would turn the gradient into NaN through ``torch.where``).
    """
    z = torch.clamp(beta * x, max=threshold)
    return torch.where(beta * x > threshold, x, torch.log1p(torch.exp(z)) / beta)


class Identity(Activation):
    """f(x) = x."""

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return x


class Sigmoid(Activation):
    """Logistic sigmoid: f(x) = 1 / (1 + exp(-x))."""

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return torch.sigmoid(x)


class Tanh(Activation):
    """Hyperbolic tangent: f(x) = (exp(x) - exp(-x)) / (exp(x) + exp(-x))."""

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return torch.tanh(x)


class ReLU(Activation):
    """Rectified linear unit: f(x) = max(x, 0) (Nair & Hinton 2010)."""

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return _relu(x)


class LeakyReLU(Activation):
    """f(x) = x for x > 0, slope * x otherwise; slope 0.01 by default (Maas et al. 2013)."""

    def __init__(self, slope: float = 0.01):
        super().__init__()
        self.slope = float(slope)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return torch.where(x > 0, x, self.slope * x)

    def extra_repr(self) -> str:
        return f"slope={self.slope}"


class PReLU(Activation):
    """Parametric ReLU (He et al. 2015): f(x_c) = x_c for x_c > 0, a_c * x_c otherwise.

    The slopes a are learned, initialised to ``init`` (0.25). ``channels=None`` (or 1): one slope
    shared by all features; ``channels=C``: one slope per feature of the *last* dimension, x is
    ``(..., C)`` (note: ``torch.nn.PReLU`` puts channels on dim 1 instead).
    """

    def __init__(self, channels: Optional[int] = None, init: float = 0.25):
        super().__init__()
        n = 1 if channels is None else _positive_int("channels", channels)
        self.slope = nn.Parameter(torch.full((n,), float(init)))

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return torch.where(x > 0, x, self.slope.to(x.dtype) * x)

    def extra_repr(self) -> str:
        return f"channels={self.slope.numel()}"


class ELU(Activation):
    """Exponential linear unit (Clevert et al. 2016): f(x) = x for x > 0, alpha (exp(x) - 1) otherwise."""

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return torch.where(x > 0, x, self.alpha * torch.expm1(torch.clamp(x, max=0.0)))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class SELU(Activation):
    """Scaled ELU (Klambauer et al. 2017): f(x) = lambda x for x > 0, lambda alpha (exp(x) - 1) otherwise.

    lambda ~ 1.0507009873554805 and alpha ~ 1.6732632423543772 are the published fixed-point
    constants: with LeCun-normal weights (std 1/sqrt(fan_in)) and alpha-dropout, activations keep
    zero mean and unit variance (see :class:`ActivatedLinear`, :func:`make_dropout`).
    """

    LAMBDA = 1.0507009873554804934193349852946
    ALPHA = 1.6732632423543772848170429916717

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        neg = self.ALPHA * torch.expm1(torch.clamp(x, max=0.0))
        return self.LAMBDA * torch.where(x > 0, x, neg)


class GELU(Activation):
    """Gaussian error linear unit (Hendrycks & Gimpel 2016): f(x) = x Phi(x).

    ``approximate="none"``: exact, Phi(x) = (1 + erf(x / sqrt 2)) / 2.
    ``approximate="tanh"``: f(x) = x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2.
    """

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if self.approximate == "tanh":
            inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
            return 0.5 * x * (1.0 + torch.tanh(inner))
        return 0.5 * x * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Swish(Activation):
    """Swish (Ramachandran et al. 2017): f(x) = x sigmoid(beta x).

    ``beta`` fixed (default 1: SiLU, Elfwing et al. 2018) or, with ``learnable=True``, a learned
    scalar initialised to ``beta``.
    """

    def __init__(self, beta: float = 1.0, learnable: bool = False):
        super().__init__()
        self.learnable = bool(learnable)
        if self.learnable:
            self.beta = nn.Parameter(torch.tensor(float(beta)))
        else:
            self.beta = float(beta)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        beta = self.beta.to(x.dtype) if self.learnable else self.beta
        return x * torch.sigmoid(beta * x)

    def extra_repr(self) -> str:
        beta = self.beta.item() if self.learnable else self.beta
        return f"beta={beta:g}, learnable={self.learnable}"


class Mish(Activation):
    """Mish (Misra 2019): f(x) = x tanh(softplus(x)), softplus with beta=1, threshold=20."""

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return x * torch.tanh(_softplus(x, 1.0, 20.0))


class Softplus(Activation):
    """Softplus (Dugas et al. 2001): f(x) = (1/beta) log(1 + exp(beta x)).

    Linear, f(x) = x, where beta x > threshold (numerical stability; as ``torch.nn.Softplus``).
    """

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta, self.threshold = float(beta), float(threshold)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return _softplus(x, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, threshold={self.threshold:g}"


class Maxout(Activation):
    """Maxout (Goodfellow et al. 2013): h_c = max_{j=1..k} z_{c,j}; ``(..., k*C) -> (..., C)``.

    Layout: channel c's k pieces are *contiguous*, ``z[..., c*k : (c+1)*k]`` (i.e. the input viewed
    as ``(..., C, k)``). The layer before must be k times wider (:class:`ActivatedLinear` does that).
    """

    def __init__(self, pieces: int = 2):
        super().__init__()
        self.pieces = _positive_int("pieces", pieces)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        k = self.pieces
        width = x.shape[-1] if x.dim() else 0
        if width == 0 or width % k:
            raise ValueError(f"maxout with pieces={k} needs an input width that is a multiple of {k} "
                             f"(k*C), got last dimension {width} (shape {tuple(x.shape)})")
        return x.reshape(*x.shape[:-1], width // k, k).amax(dim=-1)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


class AReLU(Activation):
    """Attention-based ReLU (Chen, Li & Xu 2020, "AReLU: Attention-based Rectified Linear Unit").

    f(x) = (1 + sigmoid(beta)) x      for x > 0
    f(x) = clamp(alpha, 0.01, 0.99) x for x <= 0

    with two learned scalars, alpha (init 0.90) and beta (init 2.0), shared by all features.
    """

    def __init__(self, alpha: float = 0.90, beta: float = 2.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.beta = nn.Parameter(torch.tensor(float(beta)))

    def negative_slope(self) -> Tensor:
        return torch.clamp(self.alpha, 0.01, 0.99)

    def positive_slope(self) -> Tensor:
        return 1.0 + torch.sigmoid(self.beta)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        pos, neg = self._slopes(x.dtype)
        return torch.where(x > 0, pos * x, neg * x)

    def _slopes(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Both slopes in ``dtype``. Without autograd they are kept while the parameters do not
        change (search applies the activation at every step; an update in place bumps a
        parameter's version; inference tensors count none, so theirs are not kept)."""
        alpha, beta = self.alpha, self.beta
        if torch.is_grad_enabled() or alpha.is_inference() or beta.is_inference():
            return self.positive_slope().to(dtype), self.negative_slope().to(dtype)
        stamp = (alpha._version, beta._version, alpha.data_ptr(), beta.data_ptr(), dtype)
        cached = self.__dict__.get("_kept_slopes")
        if cached is None or cached[0] != stamp:
            # plain tensors, usable outside inference mode too, with no autograd history
            with torch.inference_mode(False), torch.no_grad():
                cached = (stamp, (self.positive_slope().to(dtype), self.negative_slope().to(dtype)))
            self.__dict__["_kept_slopes"] = cached
        return cached[1]


class APReLU(Activation):
    """Adaptively parametric ReLU (Zhao et al. 2020, "Deep residual networks with adaptively
    parametric rectifier linear units for fault diagnosis", IEEE Trans. Ind. Electron.).

    A PReLU whose negative slopes are computed per sample by a squeeze-and-excitation subnetwork.
    The paper applies it to a feature map ``(positions, C)`` and pools over the positions; here a
    sample is a sequence ``x_1 .. x_L`` of C-vectors::

        s     = [mean_l relu(x_l); mean_l min(x_l, 0)]                 (2C)  squeeze: pooled parts
        alpha = sigmoid(FC_2(relu(LayerNorm(FC_1(s)))))                (C),  in (0, 1)
        f(x_l) = relu(x_l) + alpha * min(x_l, 0)                       every position, same alpha

    Which positions a sequence has (the mean is over these only):

    * ``forward(x, mask)``: x is ``(..., L, C)``, mask broadcastable to ``x.shape[:-1]``, bool, True
      on real positions: the masked mean over L (an encoder over its source; padding never
      influences anything). ``mask=None``: every vector ``x[..., :]`` is a sequence of one (a layer
      applied once per sentence, such as the decoder's initial-state bridge).
    * ``forward_causal(x)``: x is ``(batch, T, C)``, the steps of an autoregressive decoder; step t
      pools over steps 1..t (a cumulative mean), so it never sees a later step. Steps after a
      sequence's end (right padding) cannot influence its real steps.
    * ``forward_step(x, pool)``: x is ``(batch, C)``, one decoder step; ``pool`` ``(batch, 2C + 1)``
      carries the running sums ``[Σ relu(x); Σ min(x, 0); steps]`` of the earlier steps (None before
      the first). Steps 1..T one at a time equal ``forward_causal`` over T steps.

    The output has the input's shape. The pooled sums run in the dtype of the subnetwork's LayerNorm.

    Normalisation: the paper's subnetwork normalises with batch normalisation (its code also before
    the sigmoid). Here it is LayerNorm over the C features after FC_1, and none before the sigmoid:
    with batch statistics a sentence's output would depend on the other sentences in the batch
    (and on train/eval mode); LayerNorm only uses the sample's own features. (A normalisation in
    inference mode after FC_2 is a per-channel affine map, which FC_2 already is.)
    """

    def __init__(self, channels: int):
        super().__init__()
        c = self.channels = _positive_int("channels", channels)
        self.fc1 = nn.Linear(2 * c, c)
        self.norm = nn.LayerNorm(c)
        self.fc2 = nn.Linear(c, c)

    def _parts(self, x: Tensor) -> Tensor:
        """``[relu(x); min(x, 0)]`` in the subnetwork's dtype, ``(..., 2C)``.

        That is the LayerNorm's: inference may turn the Linear layers into bfloat16 ones
        (``nmt translate --precision bf16``), and the sums over steps stay exact.
        """
        dtype = self.norm.weight.dtype
        return torch.cat([_relu(x).to(dtype), _negative_part(x).to(dtype)], dim=-1)

    def excite(self, pooled: Tensor) -> Tensor:
        """The slopes from the pooled statistic: ``(..., 2C) -> (..., C)``, in (0, 1)."""
        return torch.sigmoid(self.fc2(_relu(self.norm(self.fc1(pooled)))))

    def pooled(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """The squeeze statistic s: ``(..., 2C)`` without mask, ``(..., 1, 2C)`` with (over L)."""
        parts = self._parts(x)
        if mask is None:
            return parts
        try:
            shape = torch.broadcast_shapes(mask.shape, x.shape[:-1])
        except RuntimeError:
            shape = None
        if x.dim() < 2 or shape != x.shape[:-1]:
            raise ValueError(f"APReLU mask must broadcast to {tuple(x.shape[:-1])} (..., L) for x of shape "
                             f"{tuple(x.shape)} (..., L, C); got {tuple(mask.shape)}")
        m = mask.to(torch.bool).unsqueeze(-1)
        count = m.sum(dim=-2, keepdim=True).clamp(min=1).to(parts.dtype)
        return torch.where(m, parts, 0.0).sum(dim=-2, keepdim=True) / count

    def slopes(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """The per-sample negative slopes alpha: ``(..., C)`` without mask, ``(..., 1, C)`` with."""
        return self.excite(self.pooled(x, mask)).to(x.dtype)

    def _check(self, x: Tensor) -> None:
        if x.dim() == 0 or x.shape[-1] != self.channels:
            raise ValueError(f"APReLU(channels={self.channels}) needs input (..., {self.channels}), "
                             f"got shape {tuple(x.shape)}")

    def _rectify(self, x: Tensor, alpha: Tensor) -> Tensor:
        return _relu(x) + alpha.to(x.dtype) * _negative_part(x)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        self._check(x)
        return self._rectify(x, self.slopes(x, mask))

    def forward_causal(self, x: Tensor) -> Tensor:
        self._check(x)
        if x.dim() != 3:
            raise ValueError(f"APReLU.forward_causal needs x of shape (batch, T, C), got {tuple(x.shape)}")
        sums = self._parts(x).cumsum(dim=1)                                   # (batch, T, 2C)
        steps = torch.arange(1, x.size(1) + 1, device=x.device, dtype=sums.dtype)
        return self._rectify(x, self.excite(sums / steps[:, None]))

    def forward_step(self, x: Tensor, pool: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        parts = self._parts(x)                                                # (batch, 2C)
        if pool is None:
            pool = parts.new_zeros(*parts.shape[:-1], parts.size(-1) + 1)
        pool = pool + torch.cat([parts, parts.new_ones(*parts.shape[:-1], 1)], dim=-1)
        sums, steps = pool.split([parts.size(-1), 1], dim=-1)
        return self._rectify(x, self.excite(sums / steps)), pool

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def _positive_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------
# Registry


def _one(**_: Any) -> int:
    return 1


@dataclass(frozen=True)
class ActivationSpec:
    """A registry entry.

    ``factory(**options)`` builds the module. ``needs_channels``: ``channels=`` is required.
    ``per_channel``: takes ``channels=`` for per-feature parameters (layers pass their width).
    ``width_factor(**options)``: how many times wider the pre-activation must be than the output
    (maxout: ``pieces``; others 1). ``self_normalizing``: wants LeCun-normal init and alpha-dropout.
    """

    name: str
    factory: Callable[..., Activation]
    description: str
    paper: str
    needs_channels: bool = False
    per_channel: bool = False
    self_normalizing: bool = False
    width_factor: Callable[..., int] = field(default=_one, repr=False)

    @property
    def options(self) -> list[str]:
        """The keyword options the factory accepts."""
        params = inspect.signature(self.factory).parameters.values()
        return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def example(self, **options: Any) -> Activation:
        """The module with default options, ``channels=1`` where channels are needed (for plots)."""
        if self.needs_channels:
            options.setdefault("channels", 1)
        return get_activation(self.name, **options)


def _maxout_width(pieces: int = 2, **_: Any) -> int:
    try:
        return _positive_int("maxout pieces", pieces)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _silu() -> Swish:
    return Swish(beta=1.0)


def _gelu_tanh() -> GELU:
    return GELU(approximate="tanh")


_REGISTRY: dict[str, ActivationSpec] = {s.name: s for s in [
    ActivationSpec("identity", Identity, "f(x) = x (no non-linearity)", "-"),
    ActivationSpec("sigmoid", Sigmoid, "logistic sigmoid 1 / (1 + exp(-x))",
                   "Rumelhart, Hinton & Williams 1986, Learning representations by back-propagating errors"),
    ActivationSpec("tanh", Tanh, "hyperbolic tangent",
                   "LeCun, Bottou, Orr & Mueller 1998, Efficient BackProp"),
    ActivationSpec("relu", ReLU, "max(x, 0)",
                   "Nair & Hinton 2010, Rectified Linear Units Improve Restricted Boltzmann Machines"),
    ActivationSpec("leaky_relu", LeakyReLU, "x for x > 0, slope*x otherwise (slope 0.01)",
                   "Maas, Hannun & Ng 2013, Rectifier Nonlinearities Improve Neural Network Acoustic Models"),
    ActivationSpec("prelu", PReLU, "leaky ReLU with learned slopes, shared or per channel (init 0.25)",
                   "He, Zhang, Ren & Sun 2015, Delving Deep into Rectifiers: Surpassing Human-Level "
                   "Performance on ImageNet Classification", per_channel=True),
    ActivationSpec("elu", ELU, "x for x > 0, alpha*(exp(x) - 1) otherwise (alpha 1)",
                   "Clevert, Unterthiner & Hochreiter 2016, Fast and Accurate Deep Network Learning "
                   "by Exponential Linear Units (ELUs)"),
    ActivationSpec("selu", SELU, "lambda*elu(x, alpha) with the self-normalising constants",
                   "Klambauer, Unterthiner, Mayr & Hochreiter 2017, Self-Normalizing Neural Networks",
                   self_normalizing=True),
    ActivationSpec("gelu", GELU, "x*Phi(x), exact erf form (approximate='tanh' for the tanh form)",
                   "Hendrycks & Gimpel 2016, Gaussian Error Linear Units (GELUs)"),
    ActivationSpec("gelu_tanh", _gelu_tanh, "x*Phi(x), tanh approximation",
                   "Hendrycks & Gimpel 2016, Gaussian Error Linear Units (GELUs)"),
    ActivationSpec("swish", Swish, "x*sigmoid(beta*x), beta fixed or learnable",
                   "Ramachandran, Zoph & Le 2017, Searching for Activation Functions"),
    ActivationSpec("silu", _silu, "x*sigmoid(x) (swish with beta = 1)",
                   "Elfwing, Uchibe & Doya 2018, Sigmoid-Weighted Linear Units for Neural Network "
                   "Function Approximation in Reinforcement Learning"),
    ActivationSpec("mish", Mish, "x*tanh(softplus(x))",
                   "Misra 2019, Mish: A Self Regularized Non-Monotonic Activation Function"),
    ActivationSpec("softplus", Softplus, "log(1 + exp(beta*x))/beta, linear above the threshold",
                   "Dugas, Bengio, Belisle, Nadeau & Garcia 2001, Incorporating Second-Order "
                   "Functional Knowledge for Better Option Pricing"),
    ActivationSpec("maxout", Maxout, "max over k linear pieces per output: (..., k*C) -> (..., C)",
                   "Goodfellow, Warde-Farley, Mirza, Courville & Bengio 2013, Maxout Networks",
                   width_factor=_maxout_width),
    ActivationSpec("arelu", AReLU, "(1 + sigmoid(beta))*x for x > 0, clamp(alpha, 0.01, 0.99)*x otherwise",
                   "Chen, Li & Xu 2020, AReLU: Attention-based Rectified Linear Unit"),
    ActivationSpec("aprelu", APReLU, "relu(x) + alpha*min(x, 0), per-sample slopes alpha from an SE subnetwork",
                   "Zhao, Zhong, Fu, Tang, Dong & Pecht 2020, Deep Residual Networks with Adaptively "
                   "Parametric Rectifier Linear Units for Fault Diagnosis (IEEE Trans. Ind. Electron., "
                   "doi:10.1109/TIE.2020.2972458)", needs_channels=True, per_channel=True),
]}


def available_activations() -> dict[str, ActivationSpec]:
    """Registry name -> :class:`ActivationSpec`, in a fixed order."""
    return dict(_REGISTRY)


def _spec(name: str) -> ActivationSpec:
    if name not in _REGISTRY:
        names = list(_REGISTRY)
        hint = difflib.get_close_matches(str(name), names, n=1)
        extra = f"did you mean {hint[0]!r}? " if hint else ""
        raise ConfigError(f"unknown activation {name!r}; {extra}available: {', '.join(names)}")
    return _REGISTRY[name]


def get_activation(name: str, **options: Any) -> Activation:
    """Build the activation ``name`` with keyword ``options`` (see ``available_activations()``).

    Raises :class:`~nmt.errors.ConfigError` for an unknown name (with a suggestion), a missing
    ``channels=`` where it is needed, an unknown option or an invalid option value.
    """
    spec = _spec(name)
    if spec.needs_channels and options.get("channels") is None:
        raise ConfigError(f"activation {name!r} has per-channel parameters: pass channels=<feature size>, "
                          f"e.g. get_activation({name!r}, channels=256)")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise ConfigError(f"activation {name!r}: unknown option(s) {', '.join(unknown)}; its options: {accepted}")
    try:
        return spec.factory(**options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"activation {name!r}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Layer helpers


class ActivatedLinear(nn.Module):
    """act(W x + b): ``(..., in_features) -> (..., out_features)``.

    The Linear is ``out_features * width_factor`` wide (maxout: k pieces per output), per-channel
    activations get ``channels=out_features`` (unless given in the options), and for SELU the weight
    is LeCun-normal (std 1/sqrt(in_features)) with a zero bias. ``forward(x, mask)`` passes ``mask``
    to the activation (only APReLU uses it); ``forward_causal`` and ``forward_step`` are the
    activation's decoder forms (see :class:`Activation`).
    """

    def __init__(self, in_features: int, out_features: int, activation: str, bias: bool = True,
                 **activation_options: Any):
        super().__init__()
        spec = _spec(activation)
        if spec.per_channel:
            activation_options.setdefault("channels", out_features)
        self.activation_name = activation
        activation_module = get_activation(activation, **activation_options)
        width = spec.width_factor(**activation_options)
        self.linear = nn.Linear(in_features, out_features * width, bias=bias)
        self.activation = activation_module
        if spec.self_normalizing:
            nn.init.normal_(self.linear.weight, mean=0.0, std=1.0 / math.sqrt(in_features))
            if bias:
                nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, linear: Callable = F.linear) -> Tensor:
        """``linear``: how ``W x + b`` is multiplied (``F.linear``'s signature; search's fast path:
        :func:`nmt.kernels.batch_invariant.linear`)."""
        return self.activation(linear(x, self.linear.weight, self.linear.bias), mask=mask)

    def forward_causal(self, x: Tensor, linear: Callable = F.linear) -> Tensor:
        """``linear``: as in :meth:`forward` (bf16 CPU training: :func:`nmt.kernels.padded_linear`)."""
        pre = self.linear(x) if linear is F.linear else linear(x, self.linear.weight, self.linear.bias)
        return self.activation.forward_causal(pre)

    def forward_step(self, x: Tensor, pool: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        return self.activation.forward_step(self.linear(x), pool)


class Dropout(nn.Dropout):
    """Inverted dropout (Srivastava et al. 2014): zero each element with probability ``p`` in
    training and scale the rest by ``1 / (1 - p)``; the identity in eval mode.

    ``nn.Dropout`` (``F.dropout``); with ``kernels="auto"`` CPU training draws the mask with
    :func:`nmt.kernels.dropout` (four 16-bit uniforms per 64-bit draw: cheaper, same distribution
    up to p quantised to 1/65536).
    """

    def __init__(self, p: float = 0.5, kernels: str = "auto"):
        super().__init__(p)
        self.fast = kernels == "auto"

    def forward(self, x: Tensor) -> Tensor:
        if self.fast and kernels.dropout_applies(x, self.training, self.p):
            return kernels.dropout(x, self.p)
        return super().forward(x)


def make_dropout(activation: str, p: float, kernels: str = "auto") -> nn.Module:
    """``nn.AlphaDropout(p)`` for self-normalising activations (SELU), else :class:`Dropout`."""
    return nn.AlphaDropout(p) if _spec(activation).self_normalizing else Dropout(p, kernels)


def activation_parameters(module: nn.Module) -> dict[str, dict[str, Any]]:
    """Learned activation parameters inside ``module``, by submodule path (``""`` is ``module``).

    AReLU: ``alpha``, ``beta`` and the effective ``negative_slope`` / ``positive_slope``;
    PReLU: ``slope`` (a list); learnable Swish: ``beta``. Floats, ready for plotting.
    """
    out: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for path, m in module.named_modules():
            if isinstance(m, AReLU):
                out[path] = {"kind": "arelu", "alpha": m.alpha.item(), "beta": m.beta.item(),
                             "negative_slope": m.negative_slope().item(),
                             "positive_slope": m.positive_slope().item()}
            elif isinstance(m, PReLU):
                out[path] = {"kind": "prelu", "slope": m.slope.tolist()}
            elif isinstance(m, Swish) and m.learnable:
                out[path] = {"kind": "swish", "beta": m.beta.item()}
    return out
