"""The ``nmt`` subcommands: one module each, holding the command's arguments beside its handler.

Every module has ``NAME``, ``HELP``, ``EXAMPLES``, ``add_arguments(parser)`` and ``run(args)``;
:mod:`nmt.cli` builds the top-level parser from :data:`COMMANDS` and dispatches. Handlers import
the library lazily, so ``nmt --help`` does not load torch.
"""
from nmt.commands import (
    average,
    bench,
    cache,
    config,
    data,
    evaluate,
    export,
    info,
    plot,
    serve,
    shortlist,
    sweep,
    train,
    translate,
)

#: in the order ``nmt --help`` lists them
COMMANDS = (train, translate, export, average, evaluate, plot, bench, shortlist, sweep, serve, config, data,
            cache, info)
