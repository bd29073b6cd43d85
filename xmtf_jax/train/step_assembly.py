"""The one place the train step is put together: mesh, model, optimizer, state shardings, abstract
state and the jitted step, from the run's configs.

Training (`loop.train`), the planner (`plan.plan_train_step`), `param_count`, the train-step benchmark
and the tests all call `assemble_step`, so what the plan compiles and what the loop runs are one
program by construction, not two copies that agree. The pieces it combines live in `trainer.py`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import optax
from jax.sharding import AbstractMesh, Mesh, NamedSharding

from xmtf_jax.model import family
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import losses, optim, trainer


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """How the step runs beyond model, optimizer and loss (TrainConfig's fields of the same names)."""
  num_microbatches: int = 1
  dropout_seed: int = 0
  rng_impl: str = "rbg"

  @classmethod
  def of(cls, train_config: Any) -> "StepSettings":
    """The settings of a `TrainConfig` (or anything with these fields)."""
    return cls(num_microbatches=train_config.num_microbatches,
               dropout_seed=train_config.dropout_seed, rng_impl=train_config.rng_impl)


@dataclasses.dataclass(frozen=True)
class StepAssembly:
  """Everything a run, a plan or a benchmark needs around the train step.

  state_shardings / abstract_state: `trainer.TrainState` trees of NamedShardings / of
  ShapeDtypeStructs carrying them (restore targets, AOT compilation inputs). batch_sharding: what the
  step expects of every batch feature (rows over `data`). train_step: jitted `(state, batch) ->
  (state, metrics)`, state donated (`trainer.make_train_step`).
  """
  mesh: Mesh | AbstractMesh
  model: Any  # the family's task-level model (model/family.py)
  optimizer: optax.GradientTransformation
  state_shardings: trainer.TrainState
  abstract_state: trainer.TrainState
  batch_sharding: NamedSharding
  train_step: Callable[[trainer.TrainState, Any], tuple[trainer.TrainState, dict]]
  settings: StepSettings

  def init_state(self, params: Any) -> trainer.TrainState:
    """A fresh state at step 0 around `params`, placed with `state_shardings`."""
    return trainer.init_train_state(params, self.optimizer, self.state_shardings)


def assemble_step(model_config: family.ModelConfig,
                  partitioning_config: Optional[partitioning.PartitioningConfig] = None,
                  optimizer_config: Optional[optim.OptimizerConfig] = None,
                  loss_config: Optional[losses.LossConfig] = None,
                  settings: StepSettings = StepSettings(), *,
                  devices: Optional[Sequence[Any]] = None,
                  mesh: Optional[Mesh | AbstractMesh] = None) -> StepAssembly:
  """Builds the train step of a run; None configs are their defaults.

  The mesh is `partitioning_config`'s over `devices` (default: all devices; a TPU topology's devices
  compile ahead of time without owning them), or `mesh` itself when given (an AbstractMesh sizes the
  state without devices; nothing is traced until the step is called or lowered). The logical-axis
  rules come from `partitioning_config` either way.
  """
  partitioning_config = partitioning_config or partitioning.PartitioningConfig()
  optimizer_config = optimizer_config or optim.OptimizerConfig()
  loss_config = loss_config or losses.LossConfig()
  if mesh is None:
    mesh = partitioning_config.make_mesh(devices)
  elif devices is not None:
    raise ValueError("assemble_step: pass devices or a mesh, not both")
  model = family.model_for(model_config, mesh, partitioning_config.rules())
  optimizer = trainer.make_optimizer(model, optimizer_config)
  state_shardings = trainer.train_state_shardings(model, optimizer, mesh)
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                trainer.abstract_train_state(model, optimizer), state_shardings)
  train_step = trainer.make_train_step(
      model, optimizer, loss_config, optim.learning_rate_schedule(optimizer_config),
      dropout_seed=settings.dropout_seed, num_microbatches=settings.num_microbatches,
      rng_impl=settings.rng_impl, state_shardings=state_shardings)
  return StepAssembly(mesh=mesh, model=model, optimizer=optimizer, state_shardings=state_shardings,
                      abstract_state=abstract_state, batch_sharding=partitioning.data_sharding(mesh),
                      train_step=train_step, settings=settings)
