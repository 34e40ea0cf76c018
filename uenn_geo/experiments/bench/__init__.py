r"""Speed benchmark: our graph force field against PyG's SchNet and the exact Lennard-Jones forces.

``uenn-geo bench`` measures, in one run on one machine, the cost of one force evaluation on
periodic liquid-argon boxes (Rahman 1964: 1.374 g/cm\ :sup:`3`, an fcc lattice at that density
with small random displacements, :func:`~uenn_geo.data.structures.argon_fcc`) for every model
of :data:`BENCH_MODELS` (:mod:`~uenn_geo.experiments.bench.runners`):

* ``uenn``: :class:`~uenn_geo.models.UENNForceField` (default constructor, ``cutoff`` set),
  which predicts forces directly;
* ``uenn_compiled``: the same, its network
  (:meth:`~uenn_geo.models.UENNForceField.compute_forces`) under :func:`torch.compile`;
* ``schnet``: PyG's ``SchNet`` with its default sizes as a force field
  (:class:`~uenn_geo.models.schnet.SchNetForceField`, :math:`\mathbf{F} = -\partial E /
  \partial \mathbf{r}`), every neighbour within the cutoff;
* ``schnet32``: the same SchNet with at most 32 neighbours per atom (the nearest), which is
  what ``SchNet(cutoff=...)`` does out of the box (``max_num_neighbors=32``);
* ``lj``: the analytic shifted-force Lennard-Jones forces of
  :func:`~uenn_geo.data.lj.lennard_jones_pairs`, the floor for any pair model;
* ``uenn_cons``: the force field with ``conservative=True`` (forces from the energy);
* ``schnet_acc``: SchNet in the configuration of the accuracy comparisons (64 channels,
  3 interactions, full list, autograd forces);
* ``uenn_calc``, ``uenn_cons_calc``, ``mace``: the ASE calculator as MD drives it (both
  modes) and a small MACE where ``mace-torch`` is installed
  (:mod:`~uenn_geo.experiments.bench.paths`).

Besides the argon boxes, ``systems`` adds an EMT copper box and ethanol, single and a batch of
32 (:mod:`~uenn_geo.experiments.bench.systems`); a model that cannot run on a system is
recorded as skipped with the reason.

All models use the same cutoff and the same full neighbour list
(:func:`~uenn_geo.edges.build_edges`: vesin, on the CPU). For each model the benchmark reports
atoms per second :math:`N / t` from the median :math:`t` of ``repeats`` timed calls, both for
the model alone (neighbour list given) and for the whole evaluation (neighbour list built in
the call, as in MD without a skin), by wall clock and by process CPU time (all threads; with
one thread it is barely affected by other processes sharing the CPU). Repeats are interleaved
across models (round robin), so that a change of machine load hits every model alike and the
ratios measured in one run stay meaningful on a shared machine; before its timed calls in each
round a model makes ``warmup`` untimed calls, so that it is timed warm, as in MD, not right
after another model has churned caches and heap.

**Peak memory** (:mod:`~uenn_geo.experiments.bench.measure`) is the extra memory one whole
evaluation (neighbour list included) needs on top of what was resident before it. Sizes run
from small to large, and a configuration whose memory, extrapolated linearly in the number of
edges from the previous size, would exceed ``memory_fraction`` of the available memory is
skipped (and recorded as skipped). Measured figures: ``docs/bench.md``.

Units: Angstrom, eV, eV/Angstrom; times in seconds, memory in MiB.
"""

from uenn_geo.data.structures import argon_fcc
from uenn_geo.experiments.bench.report import format_table
from uenn_geo.experiments.bench.run import QUICK_SIZES, BenchConfig, run_bench
from uenn_geo.experiments.bench.runners import BENCH_MODELS, BenchSystem

__all__ = [
    "BENCH_MODELS",
    "BenchConfig",
    "BenchSystem",
    "QUICK_SIZES",
    "argon_fcc",
    "format_table",
    "run_bench",
]
