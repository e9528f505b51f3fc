"""The method protocol and the registry: what a method is, and the one list of methods.

A method is a small class with one hook, run by the engine (``r2f.methods.engine``):

- :class:`LossMethod` — ``loss(model, forget, retain, ctx) -> scalar``; the engine back-propagates it
  and takes an AdamW step;
- :class:`UpdateMethod` — ``update(model, forget, retain, ctx) -> dict``; the method changes the
  weights itself (R2F) and returns what it wants logged.

``@register`` puts a class into :data:`METHODS` under its ``name``; nothing else lists methods. What a method
needs or offers is declared on its class (:class:`Method`'s capability attributes: ``needs_retain``,
``uses_decoder``, ``optimizer``, ``supports_fsdp``); the engine, the API, the CLI and the demo read those, never a
method's name. A method reads its options through ``self.config``, its typed, frozen ``Config`` (not as loose
attributes, which a per-run value of the same name could shadow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from r2f.data.batching import QABatch
from r2f.distributed import ONE_PROCESS, DataParallel
from r2f.errors import R2FInputError
from r2f.methods.config import MethodConfig
from r2f.typed import check_choice

if TYPE_CHECKING:  # the engine imports this module; a method's hooks only receive the engine
    from r2f.methods.engine import Engine


@dataclass
class StepContext:
    """What a method's hook may read about the current step (and where it records signals)."""

    step: int                 # 0-based index of this step
    total_steps: int
    lr: float                 # learning rate (loss methods) or base step size (update methods) of this step
    seed: int
    engine: "Engine"
    signals: dict[str, float] = field(default_factory=dict)
    #: the step's batches are this rank's slices of the global batch when ``dp.active``: losses divide by its
    #: global counts (r2f.methods.losses) and per-item signals are averaged over every rank's items
    dp: DataParallel = ONE_PROCESS

    def record(self, **values: Any) -> None:
        for k, v in values.items():
            self.signals[k] = self.dp.mean(v) if torch.is_tensor(v) else float(v)


class Method:
    """Base of every unlearning method. Subclass :class:`LossMethod` or :class:`UpdateMethod`."""

    name: ClassVar[str] = ""
    #: The method's typed options (r2f.methods.config): types, defaults and help in one frozen dataclass;
    #: ``defaults`` is read from it, and ``__init__`` validates the options against it. None: ``defaults`` alone.
    config_class: ClassVar[type[MethodConfig] | None] = None
    #: Method options and their defaults; ``unlearn(**options)`` may override any of them.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Default learning rate (loss methods) or base relative step size (update methods).
    default_lr: ClassVar[float] = 1e-4

    # -- capabilities: what the engine, the API, the CLI and the demo ask a method (never its name) --------------
    #: Whether the method needs retain data (an error is raised when it is missing).
    needs_retain: ClassVar[bool] = False
    #: Whether the method decodes gradients with a decoder (its ``decoder`` option; ``--decoder``): the API loads the
    #: decoder before the model (an unknown one is exit 2) and the manifest records it; ``--decoder`` is refused for
    #: other methods.
    uses_decoder: ClassVar[bool] = False
    #: The optimizer the engine runs for the method: ``"adamw"`` (AdamW over :meth:`parameters` with a linear
    #: warm-up/decay schedule, weight decay on matrices and gradient clipping; recorded in the manifest), or None
    #: when the method changes the weights itself.
    optimizer: ClassVar[str | None] = None
    #: Whether the method runs on an FSDP-sharded target (``--fsdp``); False: refused with exit 2 (e.g. a method
    #: that deep-copies the model, which FSDP forbids).
    supports_fsdp: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__ and cls.config_class is not None:
            cls.defaults = cls.config_class.defaults()

    def __init__(self, **options: Any):
        given = {k: v for k, v in options.items() if v is not None}
        #: the validated, frozen options, which the method's rule reads (an unknown option, a value outside a Literal
        #: or of the wrong type: R2FInputError naming it); None for a method declared with ``defaults`` alone
        self.config: MethodConfig | None = None
        if self.config_class is not None:
            self.config = self.config_class.build(self.name, {**self.defaults, **given})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            listed = ", ".join(f"{k} ({v!r})" for k, v in self.defaults.items()) or "none"
            raise R2FInputError(f"unknown option(s) {', '.join(unknown)} for method '{self.name}'; valid options "
                                f"(default): {listed}", source="--method")
        #: the options as given over the defaults: what the manifest records, and where the API hands over the
        #: decoder it loaded (``options["decoder"]``); typed reads go through :attr:`config`
        self.options = {**self.defaults, **given}

    @property
    def views(self) -> int:
        return int(self.options.get("views", 1))

    def setup(self, engine: "Engine") -> torch.nn.Module:
        """Prepare (reference values, adapters …) before the first step; return the model to train."""
        return engine.model

    def parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Method state to checkpoint beyond model and optimizer: (tensors, JSON-able values)."""
        return {}, {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        pass

    def should_stop(self, ctx: StepContext, log: list[dict]) -> str | None:
        """A reason string to stop before the budget, or None."""
        return None

    def describe(self) -> dict[str, Any]:
        """Resolved settings worth recording in the manifest (after ``setup``)."""
        return {}

    def finalize(self, model: torch.nn.Module) -> torch.nn.Module:
        """Turn the trained model into the plain model to save (e.g. merge an adapter)."""
        return model


class LossMethod(Method):
    optimizer = "adamw"

    def loss(self, model, forget: QABatch, retain: QABatch | None, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError


class UpdateMethod(Method):
    def update(self, model, forget: QABatch, retain: QABatch | None, ctx: StepContext) -> dict[str, Any]:
        raise NotImplementedError


#: The optimizers the engine runs (:attr:`Method.optimizer`).
OPTIMIZERS = (None, "adamw")
#: name -> class of every method: the only list of methods (filled by ``@register`` in each method's module).
METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.optimizer not in OPTIMIZERS:
        raise ValueError(f"method {cls.name!r}: optimizer {cls.optimizer!r} is not one the engine runs ({OPTIMIZERS})")
    METHODS[cls.name] = cls
    return cls


#: The capability attributes, in the order ``describe_method`` lists them.
CAPABILITIES = ("needs_retain", "uses_decoder", "optimizer", "supports_fsdp")


def describe_method(cls: type[Method]) -> dict[str, Any]:
    """What ``r2f methods`` prints of a registered method: its capabilities, default learning rate and options
    (name, type, choices, default, help; from its ``config_class``, else its ``defaults`` without types)."""
    if cls.config_class is not None:
        options = cls.config_class.describe()
    else:
        options = [{"name": k, "type": None, "choices": None, "default": v, "help": ""} for k, v in cls.defaults.items()]
    return {"name": cls.name, "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
            **{c: getattr(cls, c) for c in CAPABILITIES}, "default_lr": cls.default_lr, "options": options}


def methods_that(capability: str) -> list[str]:
    """The registered names whose class has ``capability`` true (e.g. ``methods_that("uses_decoder")``), for
    messages that list them."""
    return [name for name, cls in METHODS.items() if getattr(cls, capability)]


def check_method(name: str, source: str = "--method") -> None:
    """R2FInputError naming ``source`` unless ``name`` is a registered method; the message lists them all."""
    check_choice("method", name, sorted(METHODS), source=source)


def get_method(name: str, **options: Any) -> Method:
    check_method(name)
    return METHODS[name](**options)


__all__ = ["CAPABILITIES", "METHODS", "OPTIMIZERS", "describe_method", "LossMethod", "Method", "StepContext", "UpdateMethod", "get_method", "methods_that",
           "register"]
