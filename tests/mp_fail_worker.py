"""`python -m polypjax.main` with a failure injected on process 1 only, as it starts its task
(tests/test_multiprocess_pipeline.py): process 0 goes on into its first collective and waits there."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from absl import app, flags  # noqa: E402

from polypjax import main  # noqa: E402
from polypjax.experiments import train_segmentation  # noqa: E402

_run = train_segmentation.run


def run(config, workdir):
    import jax
    if jax.process_index() == 1:
        raise RuntimeError("injected failure on process 1")
    return _run(config, workdir)


if __name__ == "__main__":
    train_segmentation.run = run
    flags.mark_flag_as_required("config")
    app.run(main.main, flags_parser=main.parse_flags)
