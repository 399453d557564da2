"""Every figure of a trained run: ``make_figures``, and the figure maker
of each latent kind (``FIGURE_MAKERS``, by the kind's class: figures sit
above the models and look the maker up by the kind).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vaelab.data import Dataset, load_data
from vaelab.errors import VaelabError
from vaelab.figures.discrete import categorical_figures, mixture_figures
from vaelab.figures.drawing import plot_training_curves
from vaelab.figures.plots import (
    MANIFOLD_CHOICES,
    FigureContext,
    continuous_figures,
    describe,
    pick,
    real_digits_figure,
)
from vaelab.models.kinds import kind_for
from vaelab.models.latents import CategoricalKind, LatentKind, MixtureKind
from vaelab.training.runfolder import check_writable, load_model, read_metrics

# Each latent kind's figures beside the real digits and the curves. A
# kind without an entry gets its nearest base class's.
FIGURE_MAKERS: dict[type[LatentKind], Callable[[FigureContext], list[Path]]] = {
    LatentKind: continuous_figures,
    CategoricalKind: categorical_figures,
    MixtureKind: mixture_figures,
}


def figure_maker(kind: type[LatentKind]
                 ) -> Callable[[FigureContext], list[Path]]:
    """The figure maker of a latent kind (or of its nearest base)."""
    return next(FIGURE_MAKERS[k] for k in kind.__mro__
                if k in FIGURE_MAKERS)


def make_figures(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    dataset: Dataset | None = None,
    *,
    title: str | None = None,
    device: str = "cpu",
    noise: bool = True,
    manifold: str = "both",
    seed: int = 0,
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Every figure of a trained run, as PNGs in ``out_dir`` (default: the
    run folder) under the names in ``FIGURES``; returns their paths.

    ``dataset``: the run's data, preprocessed as in training (loaded from
    the run's config, or ``data_dir``, when None). ``noise``: also
    samples_noise.png; ``manifold``: "range", "quantiles" or "both".
    ``device``: checked by the callers, not used: figures are drawn from
    the model on the CPU whatever the run trained on (docs/design.md,
    "Devices"); the model is small and the CPU holds every array drawn.
    """

    if manifold not in MANIFOLD_CHOICES:
        raise VaelabError(
            f"manifold must be one of {', '.join(MANIFOLD_CHOICES)}, got "
            f"{manifold!r}"
        )
    if (not isinstance(seed, int) or isinstance(seed, bool)
            or not 0 <= seed < 2**63):
        raise VaelabError(f"seed must be an integer in [0, 2^63), got "
                          f"{seed!r}")
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    check_writable(out_dir)  # before minutes of drawing, not after
    del device  # see the docstring
    model, config = load_model(run_dir, "cpu")
    kind = kind_for(config)
    if dataset is None:
        dataset = load_data(config, data_dir)
    # A user's title is text, not mathtext: "$" pairs would be parsed as
    # TeX (and "\frac" inside them fail); "\$" draws a plain "$".
    title = title.replace("$", r"\$") if title else describe(config)
    ctx = FigureContext(
        model=model, config=config, dataset=dataset,
        out_dir=out_dir,
        title=title, metrics=read_metrics(run_dir), noise=noise,
        manifold=manifold, seed=seed, log=log,
        pick=pick(len(dataset.test), 100, seed),
    )
    paths = [real_digits_figure(dataset, ctx.path("real_digits"),
                                title, seed)]
    paths += figure_maker(kind)(ctx)
    if ctx.metrics:
        paths.append(plot_training_curves(
            ctx.metrics, ctx.path("training_curves"), title,
            hard=kind.shaded_epochs(config),
        ))
    return paths
